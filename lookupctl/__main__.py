"""`python -m controller.cli` == `lookupctl`."""

import sys

from controller.cli import main

sys.exit(main())
