"""Multi-task teacher -> smaller multi-task student (shared trunk + heads).

One patch-CNN teacher with a shared trunk and a head per task is trained on
all MultiFashion labels; a smaller MLP student with a head per task learns
from its cached logits (1000 labels plus the unlabelled transfer set).

Paper: Hinton et al. 2015 (KD); multi-task setting as in Liu et al. 2019 (MT-DNN-KD).
Reproduce:
  python -m mtkd.main --config=configs/kd_multi_teacher.py --workdir=workdirs/kd_multi_teacher
Smoke run (CI):
  python -m mtkd.main --config=configs/kd_multi_teacher.py:smoke --workdir=/tmp/kd_multi_teacher
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False)
  c = defaults.base_config()
  c.teacher.kind = "multi"
  c.teacher.model = dict(name="patch_cnn", channels=(32, 64), dense=256)

  if args["smoke"]:
    defaults.smoke(c, data='digits')
  return c
