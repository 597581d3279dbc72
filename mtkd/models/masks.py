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


def transplant(params: dict, source: dict, parts: str, where: str) -> dict:
  """Copies the source model's trunk (`parts='trunk'`), or every same-named
  submodule (`'model'`), into `params["model"]`; the rest stays freshly
  initialised. Shapes must match: a silent partial copy would train a
  different model than the config says."""
  model = dict(params["model"])
  names = ["trunk"] if parts == "trunk" else [
      k for k in model if k in source]
  for name in names:
    got = jax.tree.map(np.shape, source.get(name))
    want = jax.tree.map(np.shape, model[name])
    if got != want:
      raise UserError(f"{where}: cannot initialise {name!r} from the source "
                      f"model: its shapes {got} differ from {want}. Use the "
                      "same trunk settings (and input shape) for both.")
    model[name] = source[name]
  return dict(params, model=model)
