"""Shared-representation KD: distil into the shared trunk only.

One adaptor maps the student's shared representation onto the teachers'
fused representations; the task heads learn from labels alone (no logit
KD), so the teachers reach the tasks only through the trunk.

Paper: Li & Bilen 2020 (representation matching for MTL); FitNets (Romero et al. 2015).
Reproduce:
  python -m mtkd.main --config=configs/kd_shared_rep.py --workdir=workdirs/kd_shared_rep
Smoke run (CI):
  python -m mtkd.main --config=configs/kd_shared_rep.py:smoke --workdir=/tmp/kd_shared_rep
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False)
  c = defaults.base_config()
  c.teacher.kind = "multi"
  c.student.stages = {"student": dict(objective="shared_rep")}

  if args["smoke"]:
    defaults.smoke(c, data='digits')
  return c
