"""Using a trained student outside mtkd: export to safetensors and Orbax,
load, predict: the predictions reproduce results.json."""

import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import quickstart
from mtkd import export
from mtkd.data import datasets
from mtkd.errors import UserError
from mtkd.methods import tasks


def test_export_load_predict_reproduces_the_results(tmp_path, run_mtkd):
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.teacher.model = c.student.model = dict(name="cifar_resnet", depth=8,
                                           widths=(4, 4, 8, 8))
  c.teacher.steps = c.student.steps = 10
  w = tmp_path / "w"
  results = run_mtkd(c, w)
  out = export.save(str(w), "student", str(tmp_path / "exported"))
  assert sorted(os.listdir(out)) == ["model.json", "model.safetensors",
                                     "orbax"]
  meta = json.load(open(os.path.join(out, "model.json")))
  assert meta["tasks"] == {"digit": 10, "parity": 2}
  test = datasets.build(c.data).test
  for predict in (export.load(out), export.load(str(w), "student"),
                  export.load(str(w), "teachers/digit")):
    logits = predict(test.x)
    assert set(logits) >= {"digit"}
  logits = export.load(out)(test.x)
  for spec in (tasks.TaskSpec("digit", 10), tasks.TaskSpec("parity", 2)):
    got = tasks.evaluate(spec, logits[spec.name], test.labels[spec.name])
    assert got["accuracy"] == pytest.approx(
        results[spec.name]["student"]["accuracy"])
  restored = ocp.StandardCheckpointer().restore(os.path.join(out, "orbax"))
  assert set(restored) == {"params", "batch_stats"}
  with pytest.raises(UserError, match="not an exported model"):
    export.load(str(tmp_path))
  with pytest.raises(UserError, match="No checkpoint of 'nope'"):
    export.save(str(w), "nope", str(tmp_path / "x"))
  np.testing.assert_array_equal(  # Loading twice gives the same function.
      export.load(out)(test.x[:3])["digit"], logits["digit"][:3])
