"""Quickstart: MultiFashion, two per-task teachers -> one two-head student.

MultiFashion overlays two different Fashion-MNIST items on a 36x36 canvas
(item A at the top left, item B offset by 8 pixels, pixel-wise max); task
`left` is A's class and task `right` is B's. Each task gets its own CNN
teacher trained on all 60k labelled pairs. The student, a 169k-parameter
MLP, sees labels for only 1000 pairs; the other 59k pairs are an unlabelled
transfer set on which it learns from the cached teacher logits alone. The
labels-only baseline is the same MLP, seed and step budget, trained on the
1000 labelled pairs.

Reproduce (needs Debian's dataset-fashion-mnist, or --config.data.dir):
  python -m mtkd.main --config=configs/quickstart.py --workdir=workdirs/quickstart
Smoke run (well under a minute on 2 CPU cores):
  python -m mtkd.main --config=configs/quickstart.py:smoke --workdir=/tmp/qs
Bring your own data:
  python -m mtkd.main --config=configs/quickstart.py --workdir=W \
      --config.data.name=npz --config.data.path=my_data.npz
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False)
  c = defaults.base_config()  # The quickstart's settings are the defaults.
  if args["smoke"]:
    defaults.smoke(c, data=c.data.name)
  return c
