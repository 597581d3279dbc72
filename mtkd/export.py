"""Using a trained model outside mtkd: export it, load it, predict.

  from mtkd import export
  export.save("workdirs/quickstart", "student", "exported/student")
  predict = export.load("exported/student")         # or ("workdir", stage)
  logits = predict(images)                          # {task: [N, C] numpy}

`save` writes, into one folder: `model.safetensors` (every array of the
exported model's variables, named by its path, e.g.
`params/trunk/Dense_0/kernel`), `model.json` (the trunk's config, each
task's output size, where it came from and the variables' fingerprint) and
`orbax/` (the same variables as an Orbax checkpoint, for JAX users). The
stage is the final checkpoint of a student stage, the baseline, the source
or a teacher (`teachers/<name>`). `load` takes such a folder, or a workdir
and a stage directly, and returns an inference function (running
statistics, no dropout); inputs are treated as mtkd's pipeline treats them
(uint8 images scaled to [0, 1]).
"""

import json
import os
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from safetensors.numpy import load_file, save_file

from mtkd import models
from mtkd.data.datasets import to_float
from mtkd.errors import UserError
from mtkd.store import checkpoint, layout

MODEL_FILE, META_FILE = "model.safetensors", "model.json"


def variables_of(workdir: str, stage: str) -> tuple[dict, dict, dict]:
  """(exported variables, trunk config, {task: kind}) of a stage's final
  checkpoint."""
  directory = layout.checkpoints(os.path.join(workdir, stage))
  ckpt = checkpoint.Checkpointer(directory)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise UserError(f"No checkpoint of {stage!r} in {workdir} "
                      f"({directory}). Fix the workdir or stage name.")
    state, meta = ckpt.restore(step, None)
  finally:
    ckpt.close()
  variables = models.export({"params": state["params"],
                             **state.get("extra", {}).get("model_state", {})})
  saved = meta.get("config", {})
  cfg = saved.get("model") or saved.get("student", {}).get("model") or (
      saved.get("source", {}).get("model"))
  if not cfg:
    raise UserError(f"{directory} does not record its model's config; it "
                    "was not written by an mtkd stage.")
  return jax.device_get(variables), cfg, meta.get("kinds", {})


def _flat(variables: dict) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]}


def _nested(flat: dict[str, np.ndarray]) -> dict:
  out: dict = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def save(workdir: str, stage: str, out: str) -> str:
  """Exports a stage's final model into the folder `out` (see above)."""
  variables, cfg, kinds = variables_of(workdir, stage)
  heads = {k[len("head_"):]: int(v["kernel"].shape[-1])
           for k, v in variables["params"].items() if k.startswith("head_")}
  os.makedirs(out, exist_ok=True)
  save_file(_flat(variables), os.path.join(out, MODEL_FILE))
  meta = {"model": cfg, "tasks": heads, "kinds": kinds,
          "workdir": os.path.abspath(workdir),
          "stage": stage, "fingerprint": models.fingerprint(variables)}
  with open(os.path.join(out, META_FILE), "w") as f:
    json.dump(meta, f, indent=1)
  saver = ocp.StandardCheckpointer()
  saver.save(os.path.join(os.path.abspath(out), "orbax"), variables,
             force=True)
  saver.wait_until_finished()
  saver.close()
  return out


def load(path: str, stage: str | None = None) -> Callable:
  """`predict(inputs) -> {task: logits}` of an exported folder, or of a
  workdir's stage when `stage` is given."""
  if stage is not None:
    variables, cfg, kinds = variables_of(path, stage)
    heads = {k[len("head_"):]: int(v["kernel"].shape[-1])
             for k, v in variables["params"].items() if k.startswith("head_")}
  else:
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
      raise UserError(f"{path} is not an exported model (no {META_FILE}); "
                      "pass a workdir and a stage, or export.save first.")
    with open(meta_path) as f:
      meta = json.load(f)
    cfg, heads, kinds = meta["model"], meta["tasks"], meta.get("kinds", {})
    variables = _nested(load_file(os.path.join(path, MODEL_FILE)))
  model = models.build(cfg, heads, kinds)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))

  def predict(inputs) -> dict[str, np.ndarray]:
    return jax.device_get(apply(variables, to_float(np.asarray(inputs))))
  return predict
