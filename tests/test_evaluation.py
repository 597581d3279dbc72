"""Evaluation during training: the held-out validation split, metrics on
cadence, keep-best by them, `:best` rows, and bit-exact resume with
evaluation on."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from configs import quickstart
from mtkd import models
from mtkd.data import builtin, datasets, streams
from mtkd.errors import UserError
from mtkd.methods import tasks
from mtkd.store import layout
from mtkd.store.layout import Layout
from mtkd.train import placement
from mtkd.train.loop import fit


def test_validation_split_is_held_out_of_train():
  ds = builtin.digits(None)
  held = datasets.hold_out(ds, 300, seed=3)
  assert len(held.val) == 300 and len(held.train) == len(ds.train) - 300
  assert not set(held.val.ids) & set(held.train.ids)
  assert np.all(np.diff(held.train.ids) > 0)  # The rest keep their order.
  again = datasets.hold_out(ds, 300, seed=3)
  np.testing.assert_array_equal(again.val.ids, held.val.ids)
  assert not np.array_equal(datasets.hold_out(ds, 300, 4).val.ids,
                            held.val.ids)
  with pytest.raises(UserError, match="val_size=1400 must lie in"):
    datasets.hold_out(ds, 1400, 0)


def _config(**eval_cfg):
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.teacher.model = dict(name="mlp", hidden=(16,))
  c.teacher.steps = c.student.steps = 12
  c.data.val_size = 200
  c.eval.update(dict(every=4, **eval_cfg))
  return c


def _evals(path):
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r for r in rows if "eval/score" in r}


def test_best_rows_come_from_the_best_evaluated_checkpoint(tmp_path,
                                                           run_mtkd):
  results = run_mtkd(_config(), tmp_path)
  summary = json.load(open(Layout(str(tmp_path)).summary))
  assert summary["best"]["chosen_on"] == "val"
  for name in ("baseline", "student"):
    evals = _evals(layout.metrics(Layout(str(tmp_path)).stage(name)))
    assert sorted(evals) == [0, 4, 8, 12]  # Step 0, every 4, the end.
    scores = {s: r["eval/score"] for s, r in evals.items()}
    best = max(scores, key=lambda s: (scores[s], -s))  # Earliest of ties.
    assert summary["best"]["steps"][name] == best
    for task in results:
      assert f"{name}:best" in results[task]
      if best == 12:
        assert results[task][f"{name}:best"] == results[task][name]
  assert "teacher:best" in results["digit"]


def test_choosing_on_test_says_so(tmp_path, run_mtkd, capsys):
  c = _config(split="test")
  c.data.val_size = 0
  run_mtkd(c, tmp_path)
  assert json.load(open(Layout(str(tmp_path)).summary))["best"][
      "chosen_on"] == "test"
  assert "TEST split (config.eval.split='test')" in capsys.readouterr().out
  c = _config(split="val")
  c.data.val_size = 0
  with pytest.raises(UserError, match="needs a validation split"):
    run_mtkd(c, tmp_path / "w2")


class _Interrupt(Exception):
  pass


def test_resume_is_bit_exact_with_evaluation_on(tmp_path, toy_split, toy_job,
                                                toy_tasks, one_device_mesh):
  split = toy_split()
  val = toy_split(24)
  stream = streams.train_stream(split, split.labels, 8, seed=0)

  def evaluate(state):
    m = models.build({"name": "mlp", "hidden": (8,)}, {"a": 3, "b": 2})
    out = m.apply(jax.device_get(models.export(state.variables)), val.x)
    return {s.name: tasks.evaluate(s, np.asarray(out[s.name]),
                                   val.labels[s.name]) for s in toy_tasks}

  def job(name, source):
    return dataclasses.replace(toy_job(tmp_path, source, name),
                               evaluate=evaluate, eval_every=2)

  place = placement.Jit(one_device_mesh)
  straight = fit(job("straight", stream), place)
  crashed = {"done": False}

  def crash(batch):
    if not crashed["done"] and np.array_equal(batch["ids"],
                                              stream[7]["ids"]):
      crashed["done"] = True
      raise _Interrupt
    return batch
  with pytest.raises(_Interrupt):
    fit(job("resumed", stream.map(crash)), place)
  resumed = fit(job("resumed", stream), place)
  for a, b in zip(jax.tree.leaves(jax.device_get(straight)),
                  jax.tree.leaves(jax.device_get(resumed)), strict=True):
    np.testing.assert_array_equal(a, b)
  logs = [_evals(layout.metrics(str(tmp_path / n)))
          for n in ("straight", "resumed")]
  assert sorted(logs[0]) == [0, 2, 4, 6, 8, 10] and logs[0] == logs[1]
