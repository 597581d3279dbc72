#!/usr/bin/env bash
# Downloads into .wheels/ (ignored by git) the wheels mtkd needs that the
# lent GPU machine lacks. That machine has Python 3.12, a CUDA build of JAX
# 0.11, flax, optax, orbax-checkpoint, absl-py, numpy, scikit-learn, etils,
# cloudpickle, protobuf and PyYAML, but no network and none of: ml-collections,
# grain (+ array-record, portpicker), tensorboardX. Needs PyPI; idempotent.
# There: pip install --no-index --find-links .wheels ml-collections grain \
#        array-record portpicker tensorboardX
set -euo pipefail
cd "$(dirname "$0")/.."
pip=pip3
[ -x .venv/bin/pip ] && pip=.venv/bin/pip
mkdir -p .wheels
"$pip" download -q --only-binary=:all: --no-deps --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .wheels \
  ml-collections==1.1.0 grain==0.2.18 array-record==0.8.6 portpicker \
  tensorboardX==2.6.5 2>&1 | grep -v "^WARNING: Location" || true
ls .wheels
