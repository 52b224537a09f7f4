#!/usr/bin/env bash
# Prepare the three carried folders for one device call of bench/gpu_streams.py (run here, from the
# repo root; needs pip and a package index): .bundle (offline ray[serve] for Python 3.12, x86-64),
# .whl (the openai client and what it needs that neither the bundle nor the device image holds) and
# .before (an export of the "before" commit, code only). All three are ignored through .git/info/exclude.
#
#   bench/gpu_streams_prep.sh [BEFORE_COMMIT=f640ec9]
set -euo pipefail
before=${1:-f640ec9}
cd "$(git rev-parse --show-toplevel)"
for d in /.bundle/ /.whl/ /.before/; do
  grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude
done
[ -x .bundle/install.sh ] || ../shared/tools/offline-ray-bundle.sh .bundle
# openai 3.x needs httpx2 (-> httpcore2, truststore), jiter, sniffio, pydantic (in .bundle), anyio,
# typing-extensions, idna, h11 (on the device image). One version of each: nothing here is in .bundle.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  openai==3.63.0 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 jiter==0.19.0 sniffio==1.3.1 2>&1 \
  | grep -v 'is ignored' || true
for w in .whl/*.whl; do
  name=$(basename "$w" | cut -d- -f1)
  if ls .bundle/wheels/ | grep -qi "^${name}-"; then echo "$name is in .bundle and .whl: keep one" >&2; exit 1; fi
done
# Code only (docs, tests and sample results are not needed to serve): the carry stays small.
rm -rf .before && mkdir .before && git archive "$before" | tar -x -C .before
rm -rf .before/docs .before/tests .before/sample_results
git rev-parse "$before" > .before/TREE_COMMIT
du -sb .bundle .whl .before
echo "tracked + untracked-not-ignored: $(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1)"
