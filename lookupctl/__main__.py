"""`python -m lookupctl` == `lookupctl`."""

import sys

from lookupctl import main

sys.exit(main())
