"""Every method config runs end to end in its smoke form (the CI smoke runs).

Runs share teachers through `config.teacher.workdir`, keyed by the settings
that define the teachers, so each teacher set trains once per session. Each
run must finish, write results for every task and model, and produce finite
metrics; method-specific invariants are checked where a smoke run can show
them (a frozen trunk does not move, a cascade's second stage starts from the
first, online and cached teachers give the same teacher).
"""

import importlib.util
import json
import math
import os

import jax
import numpy as np
import pytest

from mtkd import configs_util
from mtkd.stages import plan
from mtkd.store import layout
from mtkd.store.checkpoint import Checkpointer
from mtkd.store.fingerprint import tree_fingerprint
from mtkd.store.layout import Layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The baseline is the same in every run; two runs keep it (Delta_m checks).
WITH_BASELINE = {"kd_cascade", "kd_task_level"}
RUNS = [
    ("kd_multi_teacher", None), ("kd_cross_task", None),
    ("kd_task_level", None), ("kd_feature", None), ("kd_feature", "fusion"),
    ("kd_shared_rep", None), ("kd_cascade", None), ("transfer", "frozen"),
    ("transfer", "kd"), ("dml", None), ("dml", "aux_only"), ("bam", None),
    ("dkd", None), ("js", None), ("online_teacher", None),
    ("weighting", "method=uncertainty"), ("weighting", "method=dwa"),
    ("weighting", "method=gradnorm"), ("weighting", "method=pcgrad"),
    ("cifar_kd", "method=dkd"), ("cifar_kd", "method=fitnets"),
]


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(",".join(filter(None, ["smoke", arg])))


@pytest.fixture(scope="module")
def teacher_root(tmp_path_factory):
  return tmp_path_factory.mktemp("teachers")


def run(name, arg, teacher_root, tmp_path, run_mtkd):
  c = load_config(name, arg)
  if c.teacher.model.name == "patch_cnn":  # Smaller and faster to compile.
    c.teacher.model = dict(name="mlp", hidden=(64,))
    if c.source.model.name == "patch_cnn":
      c.source.model = dict(c.teacher.model)
  key = configs_util.fingerprint({"data": c.data, "teacher": c.teacher,
                                  "source": c.source, "seed": c.seed})
  c.teacher.workdir = str(teacher_root / key)
  c.baseline = name in WITH_BASELINE
  c.student.steps = 16
  c.teacher.steps = 24
  c.log_every, c.checkpoint_every = 8, 1000  # Saves: the final one only.
  c.weighting.dwa.period = 4  # Two periods complete by step 8 of 16.
  for s in c.student.stages.values():
    if s.get("steps", -1) > 0:
      s.steps = 8
  w = str(tmp_path / "w")
  return c, w, run_mtkd(c, w)


@pytest.mark.parametrize("name, arg", RUNS,
                         ids=[f"{n}:{a}" if a else n for n, a in RUNS])
def test_method_smoke_run(name, arg, teacher_root, tmp_path, run_mtkd):
  c, w, results = run(name, arg, teacher_root, tmp_path, run_mtkd)
  stages = list(plan.student_stages(c))
  if c.eval.every:  # Each model's best checkpoint is evaluated too.
    stages += [f"{n}:best" for n in stages] + (
        ["baseline:best"] if c.baseline else [])
  for task, rows in results.items():
    assert set(rows) == {"teacher", *stages} | (
        {"baseline"} if c.baseline else set()) | (
            {"teacher:best"} if c.eval.every else set()), task
    for model, metrics in rows.items():
      for k, v in metrics.items():
        assert math.isfinite(v), (task, model, k)
  summary = json.load(open(Layout(w).summary))
  assert set(summary["delta_m_vs_teacher"]) == set(stages) | (
      {"baseline"} if c.baseline else set())
  if c.baseline:
    assert set(summary["delta_m_vs_baseline"]) == set(stages)

  if name == "transfer" and arg == "frozen":
    # The frozen trunk equals the source trunk; the heads moved.
    src = _final(os.path.join(w, "source"))[0]["params"]["model"]
    got = _final(os.path.join(w, "student"))[0]["params"]["model"]
    for a, b in zip(jax.tree.leaves(src["trunk"]),
                    jax.tree.leaves(got["trunk"]), strict=True):
      np.testing.assert_array_equal(a, b)
    assert not np.array_equal(src["head_digit"]["kernel"][:, :3],
                              got["head_digit"]["kernel"][:, :3])
  if name == "online_teacher":
    # The step ran the teachers: they are in the student's state, exactly
    # the trained teachers' parameters.
    state = _final(os.path.join(w, "student"))[0]
    online = state["extra"]["teachers"]
    teachers = Layout(w, c.teacher.workdir)
    assert sorted(online) == [os.path.basename(t)
                              for t in teachers.teachers()]
    for m, params in online.items():
      teacher = _final(teachers.teacher(m))[0]
      assert tree_fingerprint(params["params"]) == tree_fingerprint(
          teacher["params"]["model"])
  if arg == "method=dwa":
    # DWA's weights leave 1 once two periods are complete (step 8).
    logs = [json.loads(line) for line in open(layout.metrics(
        Layout(w).stage("student")))]
    weights = [{k: v for k, v in x.items() if k.startswith("train/weight/")}
               for x in logs]
    assert weights[0] and all(v == 1.0 for v in weights[0].values())
    assert any(abs(v - 1.0) > 1e-4 for v in weights[-1].values()), weights
  if name == "kd_cascade":
    # Stage 2 records (and so started from) stage 1's final model.
    distilled = _final(os.path.join(w, "distill"))[0]["params"]["model"]
    meta = _final(os.path.join(w, "finetune"))[1]
    assert meta["config"]["init_from"] == tree_fingerprint(distilled)


def _final(stage_dir):
  """(state as saved, meta) of a stage's latest checkpoint."""
  ckpt = Checkpointer(layout.checkpoints(stage_dir))
  try:
    return ckpt.restore(ckpt.latest_step())
  finally:
    ckpt.close()
