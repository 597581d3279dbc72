"""Teachers started from saved weights (`config.teacher.checkpoint`): another
mtkd workdir, Flax variables (.msgpack, Orbax), used as they are or
fine-tuned, and the errors for weights that do not fit."""

import json

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import quickstart
from mtkd import models
from mtkd.errors import UserError
from mtkd.models import pretrained
from mtkd.store import layout
from mtkd.store.layout import Layout


def _config():
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.teacher.model = dict(name="mlp", hidden=(16,))
  c.teacher.steps = c.student.steps = 8
  c.baseline = False
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_mtkd):
  w = tmp_path_factory.mktemp("source_run")
  return str(w), run_mtkd(_config(), w)


def test_teachers_from_another_workdir_used_as_they_are(trained, tmp_path,
                                                        run_mtkd):
  w, results = trained
  c = _config()
  c.teacher.checkpoint, c.teacher.steps = w, 0
  got = run_mtkd(c, tmp_path)
  for task in results:  # The same weights: the same teacher row.
    assert got[task]["teacher"] == results[task]["teacher"]
  assert not Layout(str(tmp_path)).teachers()  # Nothing was trained.


def _member_variables(w, member):
  return pretrained._from_workdir(w, member)


def test_fine_tuning_starts_from_a_msgpack_file(trained, tmp_path, run_mtkd):
  w, results = trained
  for member in ("digit", "parity"):
    with open(tmp_path / f"{member}.msgpack", "wb") as f:
      f.write(flax.serialization.msgpack_serialize(
          jax.device_get(_member_variables(w, member))))
  c = _config()
  c.teacher.checkpoint = str(tmp_path / "{member}.msgpack")
  c.teacher.steps = 2
  run_mtkd(c, tmp_path / "run")
  ckpt = layout.checkpoints(Layout(str(tmp_path / "run")).teacher("digit"))
  meta = json.load(open(f"{ckpt}/2/meta/metadata"))
  assert meta["config"]["teacher"]["checkpoint"].endswith("{member}.msgpack")
  assert meta["config"]["init_from"] == models.fingerprint(
      _member_variables(w, "digit"))


def test_orbax_params_and_mismatches(trained, tmp_path):
  w, _ = trained
  model = models.build({"name": "mlp", "hidden": (16,)}, {"digit": 10})
  variables = _member_variables(w, "digit")
  saver = ocp.StandardCheckpointer()
  saver.save(str(tmp_path / "orbax"), variables["params"])
  saver.wait_until_finished()
  saver.close()
  got = pretrained.load(str(tmp_path / "orbax"), model, (8, 8, 1), "digit")
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(variables),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  wider = models.build({"name": "mlp", "hidden": (32,)}, {"digit": 10})
  with pytest.raises(UserError, match=r"\['head_digit'\]\['kernel'\] has "
                     r"shape \(16, 10\), this model \(32, 10\)"):
    pretrained.load(str(tmp_path / "orbax"), wider, (8, 8, 1), "digit")
  other = models.build({"name": "mlp", "hidden": (16,)}, {"label": 10})
  with pytest.raises(UserError, match="lacks"):
    pretrained.load(str(tmp_path / "orbax"), other, (8, 8, 1), "digit")
  with pytest.raises(UserError, match="neither an mtkd workdir"):
    pretrained.load(str(tmp_path / "nothing"), model, (8, 8, 1), "digit")
  (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
  with pytest.raises(UserError, match="safetensors"):
    pretrained.load(str(tmp_path / "bad.safetensors"), model, (8, 8, 1),
                    "digit")


def test_bad_pretrained_configs(trained, tmp_path, run_mtkd):
  w, _ = trained
  c = _config()
  c.teacher.checkpoint, c.teacher.init = w, "source"
  with pytest.raises(UserError, match="choose one"):
    run_mtkd(c, tmp_path / "a")
  c = _config()
  c.teacher.steps = 0
  with pytest.raises(UserError, match="0 only for a teacher loaded"):
    run_mtkd(c, tmp_path / "b")
  c = _config()
  c.teacher.kind, c.teacher.checkpoint, c.teacher.steps = "multi", w, 0
  with pytest.raises(UserError, match="fills one classifier"):
    run_mtkd(c, tmp_path / "c")
