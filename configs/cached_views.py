"""Consistent teaching from a cache: K replayed augmented views per example.

The caching stage renders K randomly shifted views of every training
example (the student's own augmentation, a pure function of
(view_seed, id, view)) and caches the teachers' logits on each; the student
replays one cached view per draw, so its soft targets are the teachers'
outputs on exactly its input (configs/online_teacher.py without the teacher
in the step). arg `views=K` (default 8); `mixup`: each view mixes the
example's view with a partner's (function matching from a cache). Views
rendered on the host instead (or as well): set
config.student.host_augment (e.g. pad_crop, resized_crop, randaugment).

Paper: Beyer et al. 2022, 'Knowledge distillation: A good teacher is
patient and consistent' (fixed views). Measured against the fixed cache and
the online teacher: experiments/README.md, "Replayed augmented views".
Reproduce:
  python -m mtkd.main --config=configs/cached_views.py --workdir=workdirs/cached_views
  python -m mtkd.main --config=configs/cached_views.py:views=8,mixup \
      --workdir=workdirs/cached_views_mixup
Smoke run (CI):
  python -m mtkd.main --config=configs/cached_views.py:smoke --workdir=/tmp/cached_views
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, views=8, mixup=False)
  c = defaults.base_config()
  c.student.augment = dict(max_shift=2, noise=0.0)
  c.student.stages = {"student": dict(objective="distill",
                                      teacher_mode="cached")}
  c.cache.views = int(args["views"])
  c.cache.mixup = bool(args["mixup"])
  if c.cache.mixup:  # A mixed view has no single label: soft targets only.
    c.distill.alpha = 1.0

  if args["smoke"]:
    defaults.smoke(c, data='digits')
    c.student.augment.max_shift = 1
  return c
