"""Cascaded KD: distil, then fine-tune multi-task on labels.

Stage `distill` trains the student on cached logits (with the transfer
set); stage `finetune` starts from its parameters and fine-tunes all tasks
on the labelled examples. Each stage checkpoints and resumes on its own;
both are evaluated. The baseline gets the same total step budget.

Paper: Cascaded distill-then-fine-tune, as in TinyBERT (Jiao et al. 2020) and DistilBERT-style pipelines.
Reproduce:
  python -m mtkd.main --config=configs/kd_cascade.py --workdir=workdirs/kd_cascade
Smoke run (CI):
  python -m mtkd.main --config=configs/kd_cascade.py:smoke --workdir=/tmp/kd_cascade
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False)
  c = defaults.base_config()
  c.student.stages = {
      "distill": dict(objective="distill", steps=1200),
      "finetune": dict(objective="supervised", steps=300, init="distill",
                       init_parts="model", data="labelled"),
  }

  if args["smoke"]:
    defaults.smoke(c, data='digits')
    c.student.stages.distill.steps = 30
    c.student.stages.finetune.steps = 10
  return c
