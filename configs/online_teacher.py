"""Online teacher mode with consistent augmented views.

The teachers run inside the student's step on the same randomly shifted
inputs the student sees (consistent teaching) instead of being read from
the cache. arg `cached`: the same augmentation with the cached (fixed,
un-augmented) teacher logits, for comparison.

Paper: Beyer et al. 2022, 'Knowledge distillation: A good teacher is patient and consistent'.
Reproduce:
  python -m mtkd.main --config=configs/online_teacher.py --workdir=workdirs/online_teacher
Smoke run (CI):
  python -m mtkd.main --config=configs/online_teacher.py:smoke --workdir=/tmp/online_teacher
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, cached=False)
  c = defaults.base_config()
  c.student.augment = dict(max_shift=2, noise=0.0)
  c.student.stages = {"student": dict(
      objective="distill",
      teacher_mode="cached" if args["cached"] else "online")}

  if args["smoke"]:
    defaults.smoke(c, data='digits')
    c.student.augment.max_shift = 1
  return c
