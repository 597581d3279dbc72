"""Decoupled KD (TCKD + NCKD) as the KD loss.

DKD replaces the KL term: T^2 (alpha TCKD + beta NCKD), alpha=1, beta=8,
T=4, ramped up over the first 20% of steps; unlabelled rows use the
teacher's argmax as the target class.

Paper: Zhao et al. 2022, 'Decoupled Knowledge Distillation'.
Reproduce:
  python -m mtkd.main --config=configs/dkd.py --workdir=workdirs/dkd
Smoke run (CI):
  python -m mtkd.main --config=configs/dkd.py:smoke --workdir=/tmp/dkd
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False)
  c = defaults.base_config()
  c.student.stages = {"student": dict(objective="dkd")}
  c.distill.temperature = 4.0
  c.dkd.alpha, c.dkd.beta, c.dkd.warmup_steps = 1.0, 8.0, 300

  if args["smoke"]:
    defaults.smoke(c, data='digits')
    c.dkd.warmup_steps = 10
  return c
