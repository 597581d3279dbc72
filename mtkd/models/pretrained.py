"""Starting a model from saved weights (`config.teacher.checkpoint`).

`load(path, model, input_shape, member, head_task)` returns the exported
variables (`{"params": ..., "batch_stats": ...}`) of `model`, read from:

- another mtkd workdir (a folder holding `teachers/`): the final checkpoint
  of the teacher of the same name (`member`);
- a Flax variables or params tree: an Orbax checkpoint folder or a
  `.msgpack` file (`flax.serialization.to_bytes`), either the variables
  `{"params": ..., "batch_stats": ...}` or the params alone;
- a PyTorch `state_dict` (`.pt`, `.pth`, `.bin`, needs torch) or a
  `.safetensors` file, in torchvision / timm / RepDistiller naming, through
  `mtkd.models.convert` (its classifier fills `head_<head_task>`).

`{member}` in `path` is replaced by the teacher's name, so per-task
teachers can each have their own file. Every array is checked against the
shapes `model` has for this data (a mismatch names the first differing
entry); nothing on these paths unpickles arbitrary objects.
"""

import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mtkd.errors import UserError
from mtkd.models import convert
from mtkd.models.base import MultiHead, export
from mtkd.store import checkpoint, layout

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def load(path: str, model: MultiHead, input_shape, member: str,
         head_task: str | None = None) -> dict:
  """The exported variables of `model` from `path` (module docstring)."""
  path = os.path.expanduser(path.replace("{member}", member))
  like = _shapes(model, input_shape)
  if os.path.isdir(os.path.join(path, "teachers")):
    variables = _from_workdir(path, member)
  elif path.lower().endswith(TORCH_SUFFIXES):
    return convert.from_torch(convert.load_state_dict(path), model,
                              head_task, input_shape)
  elif path.lower().endswith(".msgpack"):
    with open(_existing(path), "rb") as f:
      variables = flax.serialization.msgpack_restore(f.read())
  elif os.path.isdir(path):
    variables = ocp.StandardCheckpointer().restore(os.path.abspath(path))
  else:
    raise UserError(
        f"config.teacher.checkpoint {path!r} is neither an mtkd workdir "
        "(with teachers/), an Orbax folder, a .msgpack file nor a PyTorch "
        f"/ safetensors file ({', '.join(TORCH_SUFFIXES)}). Fix the path.")
  variables = dict(variables)
  if "params" not in variables:  # A params tree alone.
    variables = {"params": variables}
  return _checked(variables, like, path)


def _existing(path: str) -> str:
  if not os.path.isfile(path):
    raise UserError(f"config.teacher.checkpoint {path!r} does not exist; "
                    "fix the path.")
  return path


def _from_workdir(workdir: str, member: str) -> dict:
  ckpt = checkpoint.Checkpointer(layout.checkpoints(
      layout.Layout(workdir).teacher(member)))
  try:
    step = ckpt.latest_step()
    if step is None:
      raise UserError(f"{workdir} has no checkpoint of teacher {member!r}; "
                      "train it there first, or point "
                      "config.teacher.checkpoint elsewhere.")
    state, _ = ckpt.restore(step, None)
  finally:
    ckpt.close()
  return export({"params": state["params"],
                 **state.get("extra", {}).get("model_state", {})})


def _shapes(model: MultiHead, input_shape) -> dict:
  return jax.eval_shape(lambda x: dict(model.init(jax.random.key(0), x)),
                        jnp.zeros((1, *input_shape)))


def _checked(variables: dict, like: dict, where: str) -> dict:
  """`variables` as float32 numpy, after checking they have `like`'s
  structure and shapes."""
  got = jax.tree_util.tree_flatten_with_path(variables)[0]
  want = jax.tree_util.tree_flatten_with_path(like)[0]
  got_map = {jax.tree_util.keystr(p): v for p, v in got}
  for path, shape in want:
    key = jax.tree_util.keystr(path)
    if key not in got_map:
      raise UserError(f"{where} lacks {key} (shape {shape.shape}) of this "
                      "model; its architecture or tasks differ. Fix "
                      "config.teacher.model / checkpoint.")
    if tuple(np.shape(got_map[key])) != tuple(shape.shape):
      raise UserError(f"{where}: {key} has shape {np.shape(got_map[key])}, "
                      f"this model {tuple(shape.shape)}. Fix "
                      "config.teacher.model to the checkpoint's.")
  extra = sorted(set(got_map) - {jax.tree_util.keystr(p) for p, _ in want})
  if extra:
    raise UserError(f"{where} holds {extra[:3]} that this model lacks; its "
                    "architecture or tasks differ.")
  return jax.tree.map(lambda x: np.asarray(x, np.float32), variables)
