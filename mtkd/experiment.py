"""The end-to-end pipeline: (source) -> teachers -> caches -> students.

`run(config, workdir)` executes the stages in order:

1. `source` (optional, `config.source.steps > 0`): a model trained on a
   source dataset, whose trunk can initialise teachers or student stages
   (transfer learning and transfer KD).
2. Teachers (`mtkd.teachers`: a layout, ensembles, per-group models), each
   trained on the labelled data, and their logit (and feature) caches.
3. `baseline`: the student architecture trained on labels alone.
   (`config.baseline=False` skips it.)
4. The student stages of `config.student.stages`, in order (one stage for
   plain KD; distil then fine-tune for cascaded KD; ...). Each names an
   objective (a registered plug-in), its data, how it initialises (fresh,
   from the previous stage, or from the source trunk), what it freezes, and
   whether its teachers are read from the cache or run online.
5. Evaluation of every model on the test split; results.json, summary.json
   (Delta_m) and timings.json.

Every stage is skipped when its output in the workdir is complete and was
produced by the same settings (checkpoints and caches carry their settings
and fingerprints), and resumes from its last checkpoint when interrupted.

Fairness: the baseline and the first student stage share the architecture,
optimiser, seed (hence initial parameters), batch size and label budget; the
baseline's step count is the sum of the student stages' steps.
"""

import dataclasses
import json
import os
import time

import jax
import numpy as np

from mtkd import (
  augment,
  cache,
  configs_util,
  distributed,
  evaluate,
  models,
  parallel,
  runinfo,
  sharding,
  tasks,
  teachers,
  train,
  weighting,
)
from mtkd.data import datasets, pipeline
from mtkd.errors import UserError
from mtkd.fingerprint import tree_fingerprint
from mtkd.loop import Stage, fit
from mtkd.objectives import OBJECTIVES
from mtkd.tasks import TaskSpec

TEACHER_LAYOUTS = teachers.LAYOUTS  # Kept for callers of the old name.
STAGE_DEFAULTS = dict(objective="distill", steps=-1, data="all", init="",
                      init_parts="trunk", freeze="", teacher_mode="cached")


def task_specs(config, ds: datasets.Dataset) -> tuple[TaskSpec, ...]:
  """Per-task kind, weight, temperature and alpha: defaults plus
  `config.tasks`."""
  d = config.distill
  specs = []
  for t in ds.tasks:
    o = config.tasks.get(t, {}) if config.get("tasks") else {}
    specs.append(TaskSpec(t, ds.num_classes[t],
                          weight=float(o.get("weight", 1.0)),
                          temperature=float(o.get("temperature", d.temperature)),
                          alpha=float(o.get("alpha", d.alpha)),
                          kind=ds.kind(t)))
  return tuple(specs)


def student_stages(config) -> dict[str, dict]:
  """`config.student.stages` with defaults filled in, in order."""
  stages = configs_util.to_dict(config.student.get("stages") or {}) or {
      "student": {}}
  out = {}
  for name, s in stages.items():
    unknown = sorted(set(s) - set(STAGE_DEFAULTS))
    if unknown:
      raise UserError(f"config.student.stages.{name} has unknown key(s) "
                      f"{unknown}; known: {sorted(STAGE_DEFAULTS)}.")
    s = dict(STAGE_DEFAULTS, **s)
    if s["steps"] == -1:
      s["steps"] = config.student.steps
    out[name] = s
  return out


def check_config(config, ds: datasets.Dataset, mesh) -> tuple[TaskSpec, ...]:
  """Validates result-affecting settings before any compute; returns tasks."""
  unknown = sorted(set(config.get("tasks") or {}) - set(ds.tasks))
  if unknown:
    raise UserError(f"config.tasks names {unknown}, which the dataset "
                    f"{config.data.name!r} does not have (its tasks: "
                    f"{list(ds.tasks)}).")
  specs = task_specs(config, ds)
  for s in specs:
    labelled = np.asarray(tasks.kind(s).labelled(ds.test.labels[s.name]))
    if not labelled.any():
      raise UserError(
          f"Task {s.name!r} has no labelled example in the test split of "
          f"{config.data.name!r} ({len(ds.test)} rows), so its metrics "
          "cannot be measured. Fix: use a test split with labels for every "
          "task, or drop the task from the dataset.")
    if not s.temperature > 0:
      raise UserError(f"Temperature for task {s.name!r} is {s.temperature}; "
                      "it must be > 0 (typical: 1 to 20).")
    if not 0 <= s.alpha <= 1:
      raise UserError(f"alpha for task {s.name!r} is {s.alpha}; it must lie "
                      "in [0, 1] (weight of the KD term vs. the label CE).")
    if not s.weight >= 0:
      raise UserError(f"Weight for task {s.name!r} is {s.weight}; it must be "
                      ">= 0.")
  teachers.members(config, ds.tasks)
  for part in ("teacher", "student"):
    c = config[part]
    models.TRUNKS.get(c.model.name)  # Unknown names fail here, not mid-run.
    train.OPTIMIZERS.get(c.optimizer.name)
    sharding.check_batch_size(c.batch_size, mesh, f"config.{part}.batch_size")
    if c.steps <= 0:
      raise UserError(f"config.{part}.steps is {c.steps}; it must be > 0.")
  weighting.WEIGHTINGS.get(config.weighting.name)
  stages = student_stages(config)
  for name, s in stages.items():
    OBJECTIVES.get(s["objective"])
    where = f"config.student.stages.{name}"
    if s["steps"] <= 0:
      raise UserError(f"{where}.steps is {s['steps']}; it must be > 0.")
    if s["data"] not in ("all", "labelled"):
      raise UserError(f"{where}.data is {s['data']!r}; use 'all' or "
                      "'labelled'.")
    earlier = list(stages)[:list(stages).index(name)]
    if s["init"] not in ("", "source", *earlier):
      raise UserError(f"{where}.init is {s['init']!r}; use '' (fresh), "
                      f"'source', or an earlier stage ({earlier}).")
    if s["init"] == "source" and config.source.steps <= 0:
      raise UserError(f"{where}.init='source' needs a source model: set "
                      "config.source.steps > 0 and config.source.data.")
    if s["init_parts"] not in ("trunk", "model"):
      raise UserError(f"{where}.init_parts is {s['init_parts']!r}; use "
                      "'trunk' or 'model'.")
    if s["freeze"] not in ("", "trunk"):
      raise UserError(f"{where}.freeze is {s['freeze']!r}; use '' or "
                      "'trunk'.")
    if s["teacher_mode"] not in ("cached", "online"):
      raise UserError(f"{where}.teacher_mode is {s['teacher_mode']!r}; use "
                      "'cached' or 'online'.")
  if config.teacher.get("init", "") not in ("", "source"):
    raise UserError(f"config.teacher.init is {config.teacher.init!r}; use '' "
                    "or 'source'.")
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


# ----------------------------------------------------------------- helpers


def trunk_mask(params) -> dict:
  """True for the exported model's shared trunk (what PCGrad projects and
  what `freeze='trunk'` holds fixed); False for heads, adaptors, peers."""
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
  """Copies the source model's trunk (or every same-named, same-shaped
  submodule) into `params["model"]`; heads stay freshly initialised."""
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


def _hide_labels(y: np.ndarray, keep: np.ndarray, kind: str) -> np.ndarray:
  """The labels a student may see: the rest marked missing."""
  if kind == "regression":
    return np.where(keep[:, None], y, np.nan).astype(np.float32)
  k = keep if y.ndim == 1 else keep[:, None]
  return np.where(k, y, -1).astype(np.int32)


@dataclasses.dataclass
class _Run:
  """What every stage of one `run` shares."""
  config: object
  workdir: str
  mesh: object
  strategy: object
  ds: datasets.Dataset
  specs: tuple[TaskSpec, ...]
  loop_settings: dict
  common: dict

  def fit(self, name, directory, net, tx, objective, tasks, stream, steps,
          batch_size, stage_config, seed=None, **kwargs):
    stage = Stage(name=name, directory=directory, net=net, tx=tx,
                  objective=objective, tasks=tasks, stream=stream,
                  num_steps=steps, batch_size=batch_size,
                  seed=self.config.seed if seed is None else seed,
                  input_shape=self.ds.input_shape,
                  config=stage_config, **kwargs, **self.loop_settings)
    return fit(stage, self.strategy)

  def predict(self, model, params, split, layers=()):
    return evaluate.predict(model, params, split, self.config.eval_batch_size,
                            self.mesh, layers)


def _source(r: _Run):
  """Trains the source model (transfer); returns its exported params."""
  c = r.config.source
  src = datasets.build(c.data)
  if src.input_shape != r.ds.input_shape:
    raise UserError(f"config.source.data gives inputs {src.input_shape} but "
                    f"the target data {r.ds.input_shape}; a transferred trunk "
                    "needs the same input shape.")
  specs = tuple(TaskSpec(t, src.num_classes[t], kind=src.kind(t))
                for t in src.tasks)
  model = models.build(c.model, src.num_classes)
  state = r.fit(
      "source", os.path.join(r.workdir, "source"), models.Net(model),
      train.make_optimizer(c.optimizer), OBJECTIVES.get("supervised")(
          r.config), specs,
      pipeline.train_stream(src.train, src.train.labels, c.batch_size,
                            r.config.seed), c.steps, c.batch_size,
      {"source": configs_util.to_dict(c), "seed": r.config.seed,
       "dataset_fingerprint": src.train.fingerprint()})
  return state.params["model"]


@dataclasses.dataclass
class _Teachers:
  members: list
  nets: dict          # member -> MultiHead
  params: dict        # member -> exported params
  caches: dict        # split -> member -> LogitCache
  feature_layer: str  # '' when no feature targets are cached

  def by_task(self, tasks):
    return teachers.stacks(self.members, tasks)

  def test_stack(self, task: str) -> np.ndarray:
    names = self.by_task((task,))[task]
    return np.stack([self.caches["test"][n].all_logits(task) for n in names],
                    1)


def _teachers(r: _Run, source_params, feature_layer: str) -> _Teachers:
  c = r.config.teacher
  teacher_root = c.get("workdir") or r.workdir
  members = teachers.members(r.config, r.ds.tasks)
  by_name = {s.name: s for s in r.specs}
  nets, params, caches = {}, {}, {"train": {}, "test": {}}
  feature_members = set(teachers.feature_sources(members).values())
  for m in members:
    t0 = time.perf_counter()
    model = models.build(m.model_cfg, {t: r.ds.num_classes[t]
                                       for t in m.tasks})
    init = None
    if c.get("init") == "source":
      init = lambda p, where=f"teacher/{m.name}": transplant(  # noqa: E731
          p, source_params, "trunk", where)
    state = r.fit(
        f"teacher/{m.name}", os.path.join(teacher_root, "teachers", m.name),
        models.Net(model), train.make_optimizer(c.optimizer),
        OBJECTIVES.get("supervised")(r.config),
        tuple(dataclasses.replace(by_name[t], weight=1.0) for t in m.tasks),
        pipeline.train_stream(r.ds.train, r.ds.train.labels, c.batch_size,
                              m.seed),
        c.steps, c.batch_size,
        # Not `workdir`: where teachers live does not change them, and runs
        # that share a teacher directory must agree on everything else.
        dict(r.common, teacher={k: v for k, v in configs_util.to_dict(c).items()
                                if k != "workdir"}, model=m.model_cfg,
             tasks=list(m.tasks), seed=m.seed,
             source=bool(source_params is not None and init)),
        augment=augment.make(c.get("augment")), init_params=init,
        seed=m.seed)
    nets[m.name], params[m.name] = model, state.params["model"]
    fp = tree_fingerprint(params[m.name])
    layers = (feature_layer,) if feature_layer and (
        m.name in feature_members) else ()
    sub = m.name + (f"-feat_{feature_layer}" if layers else "")
    for split_name, split in (("train", r.ds.train), ("test", r.ds.test)):
      expected = {"teacher": m.name, "teacher_fingerprint": fp,
                  "split": split_name, "features": list(layers),
                  "dataset_fingerprint": split.fingerprint()}
      caches[split_name][m.name] = _cache(
          r, os.path.join(teacher_root, "cache", sub, split_name), model,
          params[m.name], split, expected, layers)
    print(f"teacher/{m.name}: ready in {time.perf_counter() - t0:.1f}s.",
          flush=True)
  return _Teachers(members, nets, params, caches, feature_layer)


def _cache(r: _Run, directory, model, params, split, expected, layers
           ) -> cache.LogitCache:
  """Opens the teacher's cache for `split`, building missing shards first."""
  if cache.read_metadata(directory) is None:
    def predict(start, stop):
      part = split.take(slice(start, stop))
      return part.ids, r.predict(model, params, part, layers)
    cache.build(directory, len(split), r.config.cache.shard_size, predict,
                expected, r.config.cache.dtype, jax.process_index(),
                jax.process_count(), distributed.barrier)
  return cache.LogitCache(directory, expected)


def _student_stage(r: _Run, name: str, s: dict, model, t: _Teachers,
                   labels, rows, prev_params, source_params):
  """Builds and fits one student stage; returns its exported params."""
  config = r.config
  feature_targets, adaptors = (), ()
  groups = teachers.feature_sources(t.members)
  if s["objective"] in ("feature", "shared_rep"):
    dims = {g: models.feature_dims(t.nets[n], r.ds.input_shape,
                                   config.feature.teacher_layer)
            for g, n in groups.items()}
    fused = (s["objective"] == "shared_rep"
             or config.feature.fusion == "concat")
    adaptors = ((("fused", sum(dims.values())),) if fused
                else tuple(sorted(dims.items())))
    feature_targets = tuple(a for a, _ in adaptors)
  objective = OBJECTIVES.get(s["objective"])(config,
                                             feature_targets=feature_targets)
  peers = config.mutual.peers if s["objective"] == "mutual" else 0
  student_layer = config.feature.layer if adaptors else ""
  net = models.Net(model, feature_layer=student_layer, adaptors=adaptors,
                   peers=peers)
  names = objective.term_names(r.specs)
  weights = {sp.name: sp.weight for sp in r.specs}
  weights.update({n: config.feature.weight for n in names
                  if n.startswith("feature/")})
  wcfg = dict(configs_util.to_dict(config.weighting), weights=weights)
  weights_fn = weighting.make(wcfg, names, trunk_mask,
                              last_trunk_layer_mask)
  online = objective.needs_teacher or adaptors
  online = online and s["teacher_mode"] == "online"
  join = None
  if (objective.needs_teacher or adaptors) and not online:
    join = teachers.CachedJoin(
        t.caches["train"], t.by_task(r.ds.tasks),
        groups if adaptors else None, config.feature.teacher_layer)
  teacher_fn = None
  if online:
    teacher_fn = teachers.online(
        t.nets, t.by_task(r.ds.tasks), groups if adaptors else None,
        config.feature.teacher_layer)
  teacher_params = t.params if online else None

  def extra(params):
    out = {"weighting": weights_fn.init(params)}
    if teacher_params is not None:
      out["teachers"] = teacher_params
    return out

  init, where = None, f"config.student.stages.{name}"
  if s["init"] == "source":
    init = lambda p: transplant(p, source_params, s["init_parts"],  # noqa: E731
                                where)
  elif s["init"]:
    init = lambda p: transplant(p, prev_params[s["init"]],  # noqa: E731
                                s["init_parts"], where)
  frozen = trunk_mask if s["freeze"] == "trunk" else None
  # Only what this stage reads: the other stages' plans, and the tasks' KD
  # temperature and alpha for a stage without a teacher (the baseline), do
  # not change its result, so changing them must not refuse its checkpoint.
  kd_keys = () if objective.needs_teacher else ("temperature", "alpha")
  stage_config = dict(
      r.common, stage=s,
      student={k: v for k, v in configs_util.to_dict(config.student).items()
               if k != "stages"},
      num_labeled=config.data.num_labeled, label_seed=config.data.label_seed,
      tasks=[{k: v for k, v in dataclasses.asdict(sp).items()
              if k not in kd_keys} for sp in r.specs],
      weighting=wcfg, augment=configs_util.to_dict(config.student.augment))
  if objective.needs_teacher or adaptors:
    stage_config.update(
        distill=configs_util.to_dict(config.distill),
        teachers={n: tree_fingerprint(p) for n, p in t.params.items()},
        transfer_set=config.data.transfer_set)
  for section in ("dkd", "anneal", "feature", "mutual"):
    if section in (s["objective"], "feature" if adaptors else None):
      stage_config[section] = configs_util.to_dict(config[section])
  if s["init"]:
    src = source_params if s["init"] == "source" else prev_params[s["init"]]
    stage_config["init_from"] = tree_fingerprint(src)
  batch = config.student.batch_size
  stream_rows = rows["labelled"] if s["data"] == "labelled" else rows["all"]
  state = r.fit(
      name, os.path.join(r.workdir, name), net,
      train.make_optimizer(config.student.optimizer, frozen), objective,
      r.specs, pipeline.train_stream(r.ds.train, labels, batch, config.seed,
                                     rows=stream_rows, join=join),
      s["steps"], batch, stage_config, weighting=weights_fn,
      augment=augment.make(config.student.get("augment")), teacher=teacher_fn,
      extra=extra, init_params=init)
  return state.params["model"]


def run(config, workdir: str, allow_config_change: bool = False) -> dict:
  """Runs (or resumes) the whole pipeline; returns and writes results.json."""
  t_start = time.perf_counter()
  mesh = sharding.make_mesh(config.mesh)
  strategy = parallel.make(config.parallel, mesh)
  ds = datasets.build(config.data)
  specs = check_config(config, ds, mesh)
  _check_workdir(workdir)
  runinfo.write(workdir, config)
  r = _Run(config, workdir, mesh, strategy, ds, specs,
           dict(log_every=config.log_every,
                checkpoint_every=config.checkpoint_every,
                nonfinite=config.nonfinite,
                prefetch=config.get("prefetch_to_device", 0),
                allow_config_change=allow_config_change),
           {"dataset": config.data.name,
            "dataset_fingerprint": ds.train.fingerprint(),
            "seed": config.seed})
  print(f"Data: {config.data.name}, {len(ds.train)} train / {len(ds.test)} "
        f"test examples, input {ds.input_shape}, tasks "
        f"{dict(ds.num_classes)}; {jax.device_count()} device(s) in "
        f"{jax.process_count()} process(es), mesh {dict(mesh.shape)}, "
        f"{config.parallel.strategy}.", flush=True)
  timings = {}
  stages = student_stages(config)

  t0 = time.perf_counter()
  source_params = _source(r) if config.source.steps > 0 else None
  if source_params is not None:
    timings["source"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  uses_features = any(s["objective"] in ("feature", "shared_rep")
                      for s in stages.values())
  t = _teachers(r, source_params,
                config.feature.teacher_layer if uses_features else "")
  timings["teachers"] = time.perf_counter() - t0

  labelled = datasets.label_budget(len(ds.train), config.data.num_labeled,
                                   config.data.label_seed)
  labels = {sp.name: _hide_labels(ds.train.labels[sp.name], labelled, sp.kind)
            for sp in specs}
  rows = {"labelled": np.flatnonzero(labelled),
          "all": None if config.data.transfer_set else np.flatnonzero(
              labelled)}
  model = models.build(config.student.model, ds.num_classes)
  total_steps = sum(s["steps"] for s in stages.values())
  plan = {"baseline": dict(STAGE_DEFAULTS, objective="supervised",
                           steps=total_steps, data="labelled")
          } if config.baseline else {}
  plan.update(stages)
  exported = {}
  for name, s in plan.items():
    t0 = time.perf_counter()
    exported[name] = _student_stage(r, name, s, model, t, labels, rows,
                                    exported, source_params)
    timings[name] = time.perf_counter() - t0

  # Evaluation on the test split.
  results = {}
  for sp in specs:
    teacher_out = tasks.ensemble(sp.kind, t.test_stack(sp.name))
    results[sp.name] = {"teacher": tasks.evaluate(
        sp, teacher_out, ds.test.labels[sp.name])}
  for name, params in exported.items():
    out = r.predict(model, params, ds.test)
    for sp in specs:
      results[sp.name][name] = tasks.evaluate(
          sp, out[sp.name], ds.test.labels[sp.name],
          tasks.ensemble(sp.kind, t.test_stack(sp.name)))
  summary = {f"delta_m_vs_{ref}": {
      name: tasks.delta_m(results, specs, name, ref)
      for name in exported if name != ref}
      for ref in ("teacher", "baseline") if ref == "teacher" or ref in plan}
  timings["total"] = time.perf_counter() - t_start
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, "results.json"), results)
    _write_json(os.path.join(workdir, "summary.json"), summary)
    _write_json(os.path.join(workdir, "timings.json"), timings)
    print("\n" + evaluate.format_table(results, specs), flush=True)
    for ref, deltas in summary.items():
      print(f"\nDelta_m vs {ref[len('delta_m_vs_'):]} (%, per task then "
            "averaged, main metric per task): " + ", ".join(
                f"{n} {v:+.2f}" for n, v in deltas.items() if v is not None),
            flush=True)
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
