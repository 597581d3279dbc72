"""The end-to-end pipeline: teachers -> logit cache -> baseline and student.

`run(config, workdir)` executes the stages in order. Each stage is skipped
when its output in the workdir is complete and was produced by the same
settings (checkpoints and caches carry their settings and fingerprints), and
resumes from its last checkpoint when it was interrupted.

Fairness of the comparison: the baseline and the distilled student share the
architecture, optimiser, step count, batch size, seed (hence the initial
parameters) and label budget; they differ only in the objective and in the
student also reading the unlabelled transfer set through the teacher.
"""

import dataclasses
import json
import os
import time

import jax
import numpy as np

from mtkd import (
    cache,
    configs_util,
    distributed,
    evaluate,
    models,
    parallel,
    runinfo,
    sharding,
    train,
)
from mtkd.data import datasets, pipeline
from mtkd.errors import UserError
from mtkd.fingerprint import tree_fingerprint
from mtkd.loop import Stage, fit
from mtkd.objectives import OBJECTIVES, TaskSpec
from mtkd.registry import Registry

# Which teachers cover which tasks: name -> (tasks,) -> {teacher: tasks}.
TEACHER_LAYOUTS: Registry = Registry("teacher layout")
TEACHER_LAYOUTS.register("multi")(lambda tasks: {"multi": tuple(tasks)})
TEACHER_LAYOUTS.register("single")(lambda tasks: {t: (t,) for t in tasks})


def task_specs(config, ds: datasets.Dataset) -> tuple[TaskSpec, ...]:
  """Per-task weight, temperature and alpha: defaults plus `config.tasks`."""
  d = config.distill
  specs = []
  for t in ds.tasks:
    o = config.tasks.get(t, {}) if config.get("tasks") else {}
    specs.append(TaskSpec(t, ds.num_classes[t],
                          weight=float(o.get("weight", 1.0)),
                          temperature=float(o.get("temperature", d.temperature)),
                          alpha=float(o.get("alpha", d.alpha))))
  return tuple(specs)


def check_config(config, ds: datasets.Dataset, mesh) -> tuple[TaskSpec, ...]:
  """Validates result-affecting settings before any compute; returns tasks."""
  unknown = sorted(set(config.get("tasks") or {}) - set(ds.tasks))
  if unknown:
    raise UserError(f"config.tasks names {unknown}, which the dataset "
                    f"{config.data.name!r} does not have (its tasks: "
                    f"{list(ds.tasks)}).")
  specs = task_specs(config, ds)
  for s in specs:
    if not s.temperature > 0:
      raise UserError(f"Temperature for task {s.name!r} is {s.temperature}; "
                      "it must be > 0 (typical: 1 to 20).")
    if not 0 <= s.alpha <= 1:
      raise UserError(f"alpha for task {s.name!r} is {s.alpha}; it must lie "
                      "in [0, 1] (weight of the KD term vs. the label CE).")
    if not s.weight >= 0:
      raise UserError(f"Weight for task {s.name!r} is {s.weight}; it must be "
                      ">= 0.")
  TEACHER_LAYOUTS.get(config.teacher.kind)
  for part in ("teacher", "student"):
    c = config[part]
    models.TRUNKS.get(c.model.name)  # Unknown names fail here, not mid-run.
    train.OPTIMIZERS.get(c.optimizer.name)
    sharding.check_batch_size(c.batch_size, mesh, f"config.{part}.batch_size")
    if c.steps <= 0:
      raise UserError(f"config.{part}.steps is {c.steps}; it must be > 0.")
  sharding.check_batch_size(config.eval_batch_size, mesh,
                            "config.eval_batch_size")
  if config.nonfinite not in ("stop", "skip"):
    raise UserError(f"config.nonfinite is {config.nonfinite!r}; use 'stop' or "
                    "'skip'.")
  n = config.data.num_labeled
  if n == 0 or n < -1:
    raise UserError(f"config.data.num_labeled is {n}; use a positive count, "
                    "or -1 for all labels.")
  if n > len(ds.train):
    raise UserError(f"config.data.num_labeled={n} exceeds the {len(ds.train)} "
                    "training examples; use -1 for all labels.")
  return specs


def _cache(directory, model, params, split, config, mesh, expected
           ) -> cache.LogitCache:
  """Opens the teacher's cache for `split`, building missing shards first."""
  if cache.read_metadata(directory) is None:
    def predict(start, stop):
      part = split.take(slice(start, stop))
      return part.ids, evaluate.predict(model, params, part,
                                        config.eval_batch_size, mesh)
    cache.build(directory, len(split), config.cache.shard_size, predict,
                expected, config.cache.dtype, jax.process_index(),
                jax.process_count(), distributed.barrier)
  return cache.LogitCache(directory, expected)


def run(config, workdir: str, allow_config_change: bool = False) -> dict:
  """Runs (or resumes) the whole pipeline; returns and writes results.json."""
  t_start = time.perf_counter()
  mesh = sharding.make_mesh(config.mesh)
  strategy = parallel.make(config.parallel, mesh)
  ds = datasets.build(config.data)
  specs = check_config(config, ds, mesh)
  by_name = {s.name: s for s in specs}
  _check_workdir(workdir)
  runinfo.write(workdir, config)
  timings = {}
  loop_settings = dict(log_every=config.log_every,
                       checkpoint_every=config.checkpoint_every,
                       nonfinite=config.nonfinite,
                       allow_config_change=allow_config_change)
  fp_train = ds.train.fingerprint()
  common = {"dataset": config.data.name, "dataset_fingerprint": fp_train,
            "seed": config.seed}
  print(f"Data: {config.data.name}, {len(ds.train)} train / {len(ds.test)} "
        f"test examples, input {ds.input_shape}, tasks "
        f"{dict(ds.num_classes)}; {jax.device_count()} device(s) in "
        f"{jax.process_count()} process(es), mesh {dict(mesh.shape)}, "
        f"{config.parallel.strategy}.", flush=True)

  # 1-2. Teachers and their logit caches.
  teacher_root = config.teacher.get("workdir") or workdir
  layout = TEACHER_LAYOUTS.get(config.teacher.kind)(ds.tasks)
  caches = {"train": {}, "test": {}}
  teacher_results = {}
  for name, ttasks in layout.items():
    t0 = time.perf_counter()
    model = models.build(config.teacher.model,
                         {t: ds.num_classes[t] for t in ttasks})
    tspecs = tuple(by_name[t] for t in ttasks)
    stage = Stage(
        name=f"teacher/{name}",
        directory=os.path.join(teacher_root, "teachers", name), model=model,
        tx=train.make_optimizer(config.teacher.optimizer),
        objective=OBJECTIVES.get("supervised"),
        tasks=tuple(dataclasses.replace(s, weight=1.0) for s in tspecs),
        stream=pipeline.train_stream(ds.train, ds.train.labels,
                                     config.teacher.batch_size, config.seed),
        num_steps=config.teacher.steps,
        batch_size=config.teacher.batch_size, seed=config.seed,
        input_shape=ds.input_shape,
        config=dict(common, teacher=configs_util.to_dict(config.teacher),
                    tasks=list(ttasks)),
        **loop_settings)
    state = fit(stage, strategy)
    fp = tree_fingerprint(state.params)
    for split_name, split in (("train", ds.train), ("test", ds.test)):
      expected = {"teacher": name, "teacher_fingerprint": fp,
                  "split": split_name,
                  "dataset_fingerprint": split.fingerprint()}
      c = _cache(os.path.join(teacher_root, "cache", name, split_name), model,
                 state.params, split, config, mesh, expected)
      caches[split_name].update({t: c for t in ttasks})
    for t in ttasks:
      teacher_results[t] = evaluate.classification(
          caches["test"][t].all_logits(t), ds.test.labels[t])
    timings[f"teacher/{name}"] = time.perf_counter() - t0

  # 3-4. Baseline (labels only) and distilled student: same init and budget.
  labelled = datasets.label_budget(len(ds.train), config.data.num_labeled,
                                   config.data.label_seed)
  labels = {t: np.where(labelled, y, -1).astype(np.int32)
            for t, y in ds.train.labels.items()}
  labelled_rows = np.flatnonzero(labelled)
  student_rows = (None if config.data.transfer_set else labelled_rows)
  model = models.build(config.student.model, ds.num_classes)
  student_common = dict(
      common, student=configs_util.to_dict(config.student),
      num_labeled=config.data.num_labeled, label_seed=config.data.label_seed,
      tasks=[dataclasses.asdict(s) for s in specs])
  runs = {
      "baseline": ("supervised", pipeline.train_stream(
          ds.train, labels, config.student.batch_size, config.seed,
          rows=labelled_rows), student_common),
      "student": ("distill", pipeline.train_stream(
          ds.train, labels, config.student.batch_size, config.seed,
          rows=student_rows, join=cache.TeacherJoin(caches["train"])),
                  dict(student_common,
                       distill=configs_util.to_dict(config.distill),
                       transfer_set=config.data.transfer_set,
                       teachers={t: c.meta["teacher_fingerprint"]
                                 for t, c in caches["train"].items()})),
  }
  predictions = {}
  for run_name, (objective, stream, stage_config) in runs.items():
    t0 = time.perf_counter()
    stage = Stage(
        name=run_name, directory=os.path.join(workdir, run_name), model=model,
        tx=train.make_optimizer(config.student.optimizer),
        objective=OBJECTIVES.get(objective), tasks=specs, stream=stream,
        num_steps=config.student.steps, batch_size=config.student.batch_size,
        seed=config.seed, input_shape=ds.input_shape, config=stage_config,
        **loop_settings)
    state = fit(stage, strategy)
    predictions[run_name] = evaluate.predict(model, state.params, ds.test,
                                             config.eval_batch_size, mesh)
    timings[run_name] = time.perf_counter() - t0

  # 5. Evaluation on the test split.
  results = {}
  for s in specs:
    teacher_logits = caches["test"][s.name].all_logits(s.name)
    results[s.name] = {"teacher": teacher_results[s.name]}
    for run_name, logits in predictions.items():
      results[s.name][run_name] = dict(
          evaluate.classification(logits[s.name], ds.test.labels[s.name]),
          **evaluate.agreement(logits[s.name], teacher_logits, s.temperature))
  timings["total"] = time.perf_counter() - t_start
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, "results.json"), results)
    _write_json(os.path.join(workdir, "timings.json"), timings)
    print("\n" + evaluate.format_table(results), flush=True)
    print(f"\nWrote {os.path.join(workdir, 'results.json')} "
          f"({timings['total']:.1f}s).", flush=True)
  return results


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _check_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"Cannot create the workdir {workdir!r}: {e.strerror}. "
                    "Fix: choose a writable --workdir.") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UserError(f"The workdir {workdir!r} is not writable. Fix: choose a "
                    "writable --workdir or fix its permissions.")
