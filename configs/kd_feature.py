"""Feature-level cross-task KD: per-task adaptors on intermediate features.

Each per-task teacher's representation (its trunk output) is cached with
its logits; the student's representation passes through one learnable
linear adaptor per teacher and is matched to it with the L2-normalised
squared distance, plus logit KD. `fusion` arg: one adaptor onto the
concatenated (fused) teacher features instead.

Paper: Li & Bilen 2020, 'Knowledge distillation for multi-task learning'; Romero et al. 2015 (FitNets hint, feature.loss='hint').
Reproduce:
  python -m mtkd.main --config=configs/kd_feature.py --workdir=workdirs/kd_feature
Smoke run (CI):
  python -m mtkd.main --config=configs/kd_feature.py:smoke --workdir=/tmp/kd_feature
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, fusion=False)
  c = defaults.base_config()
  c.student.stages = {"student": dict(objective="feature")}
  c.feature.layer = "representation"
  c.feature.teacher_layer = "representation"
  c.feature.weight = 1.0
  if args["fusion"]:
    c.feature.fusion = "concat"

  if args["smoke"]:
    defaults.smoke(c, data='digits')
  return c
