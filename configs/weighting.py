"""Multi-task loss weighting methods on the distilled student.

arg `method`: equal | fixed | uncertainty (Kendall et al. 2018, LibMTL's
form) | dwa (Liu et al. 2019) | gradnorm (Chen et al. 2018, paper variant)
| pcgrad (Yu et al. 2020). Weights act on each task's whole loss (KD + CE).

Paper: Kendall et al. 2018; Liu et al. 2019; Chen et al. 2018; Yu et al. 2020.
Reproduce:
  python -m mtkd.main --config=configs/weighting.py --workdir=workdirs/weighting
Smoke run (CI):
  python -m mtkd.main --config=configs/weighting.py:smoke --workdir=/tmp/weighting
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, method="uncertainty", period=469)
  c = defaults.base_config()
  c.weighting.name = args["method"]
  # dwa: steps per "epoch" (default: 60k at batch 128). DWA keeps equal
  # weights until two periods are complete, so a run needs > 2 periods.
  c.weighting.dwa.period = args["period"]

  if args["smoke"]:
    defaults.smoke(c, data='digits')
    c.weighting.dwa.period = 10
  return c
