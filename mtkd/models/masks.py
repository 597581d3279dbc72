"""Parameter masks and trunk transplants over a stage's `params` tree.

A stage's params are `{"model": {"trunk": ..., "head_<task>": ...},
"adaptor_<t>": ..., "peer_<i>": ...}` (`mtkd.models.base.Net`). The masks
select what PCGrad projects and what `freeze='trunk'` holds fixed (the
exported model's trunk), and GradNorm's W (the trunk's last layer).
"""

import jax
import numpy as np

from mtkd.errors import UserError


def trunk_mask(params) -> dict:
  """True for the exported model's shared trunk; False for heads, adaptors
  and peers."""
  def fill(tree, value):
    return jax.tree.map(lambda _: value, tree)
  return {k: ({m: fill(sub, m == "trunk") for m, sub in v.items()}
              if k == "model" else fill(v, False))
          for k, v in params.items()}


def last_trunk_layer_mask(params) -> dict:
  """True for the last layer of the trunk only (GradNorm's W)."""
  layers = sorted(params["model"]["trunk"],
                  key=lambda n: (len(n), n))  # Dense_10 after Dense_9.
  last = layers[-1]
  mask = jax.tree.map(lambda _: False, params)
  mask["model"]["trunk"][last] = jax.tree.map(
      lambda _: True, params["model"]["trunk"][last])
  return mask


def transplant(variables: dict, source: dict, parts: str, where: str) -> dict:
  """Copies an exported model's trunk (`parts='trunk'`), or every
  same-named submodule (`'model'`), into the `model` entry of each
  collection of a stage's `variables` (`{"params": {"model": ...},
  "batch_stats": {"model": ...}}`), so BatchNorm statistics move with the
  trunk; the rest stays freshly initialised. Shapes must match: a silent
  partial copy would train a different model than the config says."""
  out = dict(variables)
  for collection, tree in variables.items():
    if "model" not in tree:
      continue
    model, src = dict(tree["model"]), source.get(collection, {})
    names = ["trunk"] if parts == "trunk" else [k for k in model if k in src]
    for name in names:
      got = jax.tree.map(np.shape, src.get(name))
      want = jax.tree.map(np.shape, model.get(name))
      if got != want:
        raise UserError(
            f"{where}: cannot initialise {name!r} ({collection}) from the "
            f"source model: its shapes {got} differ from {want}. Use the "
            "same trunk settings (and input shape) for both.")
      if name in src:
        model[name] = src[name]
    out[collection] = dict(tree, model=model)
  return out
