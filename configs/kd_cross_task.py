"""Cross-task KD: per-task single-task teachers, different architectures,
ensembles of 2 per task averaged in probability space.

Task `left` gets patch-CNN teachers and task `right` MLP teachers (two seeds
each); the student's KD target for a task is the mean of its teachers'
tempered softmax outputs.

Paper: Clark et al. 2019 (BAM!, single-task teachers); Liu et al. 2019 (MT-DNN-KD, ensembles).
Reproduce:
  python -m mtkd.main --config=configs/kd_cross_task.py --workdir=workdirs/kd_cross_task
Smoke run (CI):
  python -m mtkd.main --config=configs/kd_cross_task.py:smoke --workdir=/tmp/kd_cross_task
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False)
  c = defaults.base_config()
  c.teacher.kind = "single"
  c.teacher.ensemble = 2
  c.teacher.models = {"right": dict(name="mlp", hidden=(512, 256))}

  if args["smoke"]:
    defaults.smoke(c, data='digits')
    c.teacher.models = {"parity": dict(name="mlp", hidden=(32,))}
  return c
