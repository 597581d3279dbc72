"""Task-level KD with mixed task kinds and per-task T, alpha and weight.

digits_mixed: `digit` (softmax KD at T=4), `attributes` (3 binary labels,
sigmoid KD per label at T=2) and `ink` (regression: MSE to the teacher's
output), each with its own alpha and weight.

Paper: Hinton et al. 2015 (softmax KD); sigmoid/regression KD as per-output matching.
Reproduce:
  python -m mtkd.main --config=configs/kd_task_level.py --workdir=workdirs/kd_task_level
Smoke run (CI):
  python -m mtkd.main --config=configs/kd_task_level.py:smoke --workdir=/tmp/kd_task_level
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False)
  c = defaults.base_config()
  c.data.name = "digits_mixed"
  c.data.num_labeled = 200
  c.teacher.model = dict(name="mlp", hidden=(256, 256))
  c.teacher.steps = 1000
  c.teacher.batch_size = 64
  c.student.model = dict(name="mlp", hidden=(32,))
  c.student.steps = 1000
  c.student.batch_size = 64
  c.eval_batch_size = 397
  c.tasks = {
      "digit": dict(temperature=4.0, alpha=0.7, weight=1.0),
      "attributes": dict(temperature=2.0, alpha=0.5, weight=0.5),
      "ink": dict(alpha=0.5, weight=0.5),
  }

  if args["smoke"]:
    defaults.smoke(c, data='digits_mixed')
    c.eval_batch_size = 256
  return c
