"""Models: registered trunks, per-task heads, parameter masks, transplants.

`base` holds the contract every trunk keeps (`(features, blocks)`, heads
named `head_<task>`), the `TRUNKS` registry and `build`. Each family lives
in its own module and registers its trunks on import; this `__init__`
imports them all, so `models.build(cfg, ...)` knows every name.

May import: the top-level base modules (`errors`, `registry`) and
`mtkd.store` (fingerprints).
"""

from mtkd.models import (  # noqa: F401  (registers)
  cnn,
  imagenet_resnet,
  lm,
  mlp,
  mobilenet,
  resnet,
  text,
  transformer,
  vgg,
  vit,
)
from mtkd.models.base import (
  TRUNKS,
  MultiHead,
  Net,
  build,
  export,
  feature_shape,
  fingerprint,
  flatten,
  with_axis_name,
)

__all__ = ["TRUNKS", "MultiHead", "Net", "build", "export", "feature_shape",
           "fingerprint", "flatten", "with_axis_name"]
