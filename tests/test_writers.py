"""Metric writers: metrics.jsonl always, TensorBoard and Weights & Biases
(offline) by config; W&B is faked here (it is not installed in CI)."""

import importlib.util
import json
import sys
import types

import pytest

from configs import quickstart
from mtkd.errors import UserError
from mtkd.store import layout
from mtkd.train.metric_writers import MetricWriter


@pytest.fixture
def fake_wandb(monkeypatch):
  calls = []

  class Run:
    def log(self, scalars, step):
      calls.append(("log", step, scalars))

    def finish(self):
      calls.append(("finish",))

  module = types.ModuleType("wandb")
  module.init = lambda **kwargs: calls.append(("init", kwargs)) or Run()
  monkeypatch.setitem(sys.modules, "wandb", module)
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
      module.__spec__ or True) if name == "wandb" else real(name, *a))
  return calls


def test_wandb_writer_logs_offline(tmp_path, fake_wandb):
  w = MetricWriter(str(tmp_path), ("wandb",), "student",
                   {"project": "p", "mode": "offline", "group": "g"})
  w.write(3, {"train/loss": 1})
  w.close()
  (_, init), log, finish = fake_wandb
  assert init["mode"] == "offline" and init["dir"] == str(tmp_path)
  assert init["name"] == "student" and init["project"] == "p"
  assert log == ("log", 3, {"train/loss": 1.0}) and finish == ("finish",)
  lines = (tmp_path / layout.METRICS).read_text().splitlines()
  assert json.loads(lines[0]) == {"step": 3, "train/loss": 1.0}


def test_every_stage_gets_a_run_in_the_workdirs_group(tmp_path, run_mtkd,
                                                       fake_wandb):
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.teacher.model = dict(name="mlp", hidden=(8,))
  c.teacher.steps = c.student.steps = 4
  c.log_every = 2
  c.writers = ("tensorboard", "wandb")
  run_mtkd(c, tmp_path / "run_a")
  runs = [kw for call, *rest in fake_wandb if call == "init"
          for kw in rest]
  assert [r["name"] for r in runs] == ["teacher/digit", "teacher/parity",
                                       "baseline", "student"]
  assert {r["group"] for r in runs} == {"run_a"}
  assert sum(call == "finish" for call, *_ in fake_wandb) == 4


def test_missing_wandb_is_refused_before_training(tmp_path, run_mtkd,
                                                  monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
      None if name == "wandb" else real(name, *a)))
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.writers = ("wandb",)
  with pytest.raises(UserError, match="pip install wandb"):
    run_mtkd(c, tmp_path)
  c.writers = ("nope",)
  with pytest.raises(UserError, match="Unknown metric writer"):
    run_mtkd(c, tmp_path)
