"""Every method config on MultiFashion under one student budget.

arg `method` picks the strategy: its own config file (configs/<file>.py
with its arg) plus one shared budget: the quickstart's data, label budget
(1000 labels + 59k transfer pairs) and teachers (2 epochs), and a student
of 500 steps per run (the quickstart uses 1500; 2-core CPU budget). The
baseline (labels only, same total steps) is trained in every run. Teachers are shared
between runs of a seed with --config.teacher.workdir (the driver does it).

Methods: kd (quickstart) | kd_multi_teacher | kd_cross_task | kd_feature |
kd_shared_rep | kd_cascade (400 distil + 100 fine-tune steps) | dml |
dml_labelled (dml on the labelled rows only, no transfer set) | bam |
bam_fixed | dkd (warm-up 100 steps, 20%) | online_teacher | online_cached
| uncertainty | dwa | dwa_p50 | gradnorm | pcgrad (configs/weighting.py; dwa's
one-epoch period of 469 steps leaves it at equal weights for a 500-step run,
dwa_p50 re-weights every 50 steps).

Used by experiments/repro_multifashion.py (BAM, strategy comparison,
cached vs online teacher). Reproduce one run:
  python -m mtkd.main --config=configs/repro_multifashion.py:method=bam \
      --workdir=W --config.seed=0 --config.teacher.workdir=T
Smoke run (CI):
  python -m mtkd.main --config=configs/repro_multifashion.py:method=bam,smoke \
      --workdir=/tmp/mf
"""

import importlib.util
import os

import ml_collections

from mtkd.configs_util import parse_arg

STEPS = 500
# method -> (config file, its arg).
METHODS = {
    "kd": ("quickstart", ""),
    "kd_multi_teacher": ("kd_multi_teacher", ""),
    "kd_cross_task": ("kd_cross_task", ""),
    "kd_feature": ("kd_feature", ""),
    "kd_shared_rep": ("kd_shared_rep", ""),
    "kd_cascade": ("kd_cascade", ""),
    "dml": ("dml", ""),
    "dml_labelled": ("dml", ""),
    "bam": ("bam", ""),
    "bam_fixed": ("bam", "fixed"),
    "dkd": ("dkd", ""),
    "online_teacher": ("online_teacher", ""),
    "online_cached": ("online_teacher", "cached"),
    "uncertainty": ("weighting", "method=uncertainty"),
    "dwa": ("weighting", "method=dwa"),  # Period 469: inactive in 500 steps.
    "dwa_p50": ("weighting", "method=dwa,period=50"),
    "gradnorm": ("weighting", "method=gradnorm"),
    "pcgrad": ("weighting", "method=pcgrad"),
}


def method_config(method: str, smoke: bool) -> ml_collections.ConfigDict:
  """The method's own config (plain or smoke)."""
  if method not in METHODS:
    raise ValueError(f"Unknown method {method!r}; known: {sorted(METHODS)}.")
  name, arg = METHODS[method]
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_repro_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(",".join(filter(None, [arg, "smoke" * smoke])))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, method="kd")
  c = method_config(args["method"], args["smoke"])
  if args["method"] == "dml_labelled":
    # DML as in its paper: every training row labelled (the 1000 labelled
    # pairs only). With the transfer set, configs/dml.py's peers see mostly
    # unlabelled rows whose only loss is their mutual KL, and collapsed to
    # uniform predictions (measured: 11.8 % accuracy).
    c.student.stages.student.data = "labelled"
  if not args["smoke"]:
    c.student.steps = STEPS
    if args["method"] == "kd_cascade":
      c.student.stages.distill.steps = STEPS * 4 // 5
      c.student.stages.finetune.steps = STEPS // 5
    if args["method"] == "dkd":
      c.dkd.warmup_steps = STEPS // 5
  return c
