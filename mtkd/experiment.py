"""The end-to-end pipeline: (source) -> teachers -> caches -> students.

`run(config, workdir)` reads top to bottom: data and devices -> checks ->
source -> each teacher and its caches -> baseline and student stages ->
evaluation. The stages themselves live in `mtkd.stages`; each is skipped
when its output in the workdir is complete and was produced by the same
settings, and resumes from its last checkpoint (or cache shard) when
interrupted.
"""

import time

from mtkd import models
from mtkd.data import datasets
from mtkd.stages import base, plan, report
from mtkd.stages.base import Run, execute, timed
from mtkd.stages.caching import CacheStage
from mtkd.stages.source import SourceStage
from mtkd.stages.student import StudentData, StudentStage
from mtkd.stages.teacher import TeacherStage
from mtkd.stages.teachers import Teachers, feature_sources, members
from mtkd.store import runinfo
from mtkd.store.layout import Layout
from mtkd.train import placement, sharding


def run(config, workdir: str, allow_config_change: bool = False,
        devices=None) -> dict:
  """Runs (or resumes) the whole pipeline; returns and writes results.json.
  `devices`: the devices `config.mesh` spans (default: all)."""
  t_start = time.perf_counter()
  mesh = sharding.make_mesh(config.mesh, devices)
  ds = datasets.build(config.data)
  r = Run(config, Layout.of(config, workdir), mesh,
          placement.make(config.parallel, mesh), ds,
          plan.check_config(config, ds, mesh), allow_config_change)
  base.check_workdir(workdir)
  runinfo.write(workdir, config)
  print(base.describe(r), flush=True)
  timings = {}

  source = None
  if config.source.steps > 0:
    source = timed(timings, "source", SourceStage(config), r)
  t = train_teachers(r, source, timings)

  model = models.build(config.student.model, ds.num_classes, ds.kinds)
  data = StudentData.of(config, r)
  exported = {}
  for name, stage_plan in plan.stage_plan(config).items():
    init = stage_plan["init"]
    init_from = source if init == "source" else exported.get(init)
    stage = StudentStage(r, name, stage_plan, model, t, data, init_from)
    exported.update(timed(timings, name, stage, r))

  results = report.evaluate(r, model, exported, t)
  summary = report.summarize(r, results, list(exported))
  timings["total"] = time.perf_counter() - t_start
  report.write(r, results, summary, timings)
  return results


def train_teachers(r: Run, source, timings: dict) -> Teachers:
  """Trains (or restores) every teacher and builds (or opens) its caches.
  A feature layer is cached when a student stage's objective reads one."""
  c = r.config
  from_source = source if c.teacher.get("init") == "source" else None
  layer = plan.feature_layer(c)
  feature_members = set(feature_sources(members(c, r.ds.tasks)).values())
  t = Teachers([], {}, {}, {"train": {}, "test": {}}, layer)
  t0 = time.perf_counter()
  for m in members(c, r.ds.tasks):
    t1 = time.perf_counter()
    stage = TeacherStage(m, from_source)
    t.members.append(m)
    t.nets[m.name] = stage.model(r)
    trained = execute(stage, r)
    t.params[m.name] = trained["last"]
    if f"{stage.name}:best" in trained:
      t.best[m.name] = trained[f"{stage.name}:best"]
    caches = execute(CacheStage(m, t.nets[m.name], t.params[m.name],
                                layer if m.name in feature_members else "",
                                stage.writes(r)), r)
    for split, opened in caches.items():
      t.caches[split][m.name] = opened
    print(f"teacher/{m.name}: ready in {time.perf_counter() - t1:.1f}s.",
          flush=True)
  timings["teachers"] = time.perf_counter() - t0
  return t
