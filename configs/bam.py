"""Teacher annealing (BAM!): targets lam*label + (1-lam)*teacher, lam 0 -> 1.

Per-task single-task teachers -> one multi-task student; the target mixes
the one-hot label and the teacher's distribution (T=1), lam rising linearly
over training. arg `fixed`: a constant 0.5 mix (BAM without annealing).

Paper: Clark et al. 2019, 'BAM! Born-Again Multi-Task Networks'.
Reproduce:
  python -m mtkd.main --config=configs/bam.py --workdir=workdirs/bam
Smoke run (CI):
  python -m mtkd.main --config=configs/bam.py:smoke --workdir=/tmp/bam
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, fixed=False)
  c = defaults.base_config()
  c.student.stages = {"student": dict(objective="anneal")}
  c.anneal.schedule = "fixed" if args["fixed"] else "linear"

  if args["smoke"]:
    defaults.smoke(c, data='digits')
  return c
