"""Jensen-Shannon KD: the generalised JS divergence as the KD loss.

Per task, labelled rows: alpha * T^2 JS_beta(pbar_T || q_T) + (1 - alpha)
CE; transfer rows: T^2 JS_beta alone. JS_beta mixes teacher and student,
m = beta p + (1 - beta) q, so unlike the forward KL it is bounded and also
penalises student mass where the teacher has little (beta = 0.5: the
symmetric JS). Classification tasks only.

Paper: Agarwal et al. 2024, 'On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes' (GKD's generalised JSD).
Reproduce:
  python -m mtkd.main --config=configs/js.py --workdir=workdirs/js
Smoke run (CI):
  python -m mtkd.main --config=configs/js.py:smoke --workdir=/tmp/js
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, beta=0.5)
  c = defaults.base_config()
  c.student.stages = {"student": dict(objective="js")}
  c.js.beta = args["beta"]
  if args["smoke"]:
    defaults.smoke(c, data="digits")
  return c
