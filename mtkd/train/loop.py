"""The training loop shared by every stage (source, teachers, baseline,
students).

One loop for all stages: what differs between them is the model, the
objective and the input stream, which a `TrainJob` holds. The loop restores
the job's latest checkpoint, so a finished job is skipped and an
interrupted one resumes; the data stream is indexed by step, so resuming
needs no iterator state.
"""

import contextlib
import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import optax

from mtkd import configs_util
from mtkd.data import streams
from mtkd.errors import UserError
from mtkd.methods.objectives import Objective, TaskSpec
from mtkd.methods.tasks import relative_gain
from mtkd.methods.weighting import Weighting
from mtkd.store import checkpoint, layout
from mtkd.train import preemption, sharding
from mtkd.train.metric_writers import MetricWriter, Progress
from mtkd.train.placement import Placement
from mtkd.train.prefetch import prefetch_to_device
from mtkd.train.step import (
  TrainState,
  make_init,
  make_train_step,
  metric_means,
)


@dataclasses.dataclass(frozen=True)
class TrainJob:
  """Everything that defines one training run of one model.

  `net` is a `models.Net`; `extra(params) -> dict` builds the state's
  non-gradient part (weighting state, online teachers);
  `init_variables(variables) -> variables` edits the freshly initialised
  `{"params": ..., **model_state}` (transfer: load a trunk) and is not
  applied on resume. `weighting`, `augment` and `teacher` go to
  `mtkd.train.step.make_train_step`.
  """
  name: str
  directory: str
  net: nn.Module
  tx: optax.GradientTransformation
  objective: Objective
  tasks: tuple[TaskSpec, ...]
  stream: grain.MapDataset
  num_steps: int
  batch_size: int
  seed: int
  input_shape: tuple[int, ...]
  config: dict  # Result-affecting settings; stored with checkpoints.
  weighting: Weighting | None = None
  augment: Callable | None = None
  teacher: Callable | None = None
  extra: Callable[[dict], dict] | None = None
  init_variables: Callable[[dict], dict] | None = None
  log_every: int = 100
  checkpoint_every: int = 1000
  nonfinite: str = "stop"  # 'stop' or 'skip' (the update) on NaN/Inf.
  prefetch: int = 0  # Batches put on device ahead, in a thread; 0 = none.
  accumulate: int = 1  # Micro-batches per step (`make_train_step`).
  ema: float = 0.0  # Decay of the parameters' EMA (extra["ema"]); 0 = none.
  # The step as two programs, forward then backward + update
  # (`make_train_step(split=True)`): faster CNN steps on XLA:CPU.
  split_step: bool = False
  # Evaluation during training: `evaluate(state) -> {task: metrics}` every
  # `eval_every` steps and at the end (see `Evaluation`).
  evaluate: Callable | None = None
  eval_every: int = 0
  writers: tuple[str, ...] = ("tensorboard",)  # Besides metrics.jsonl.
  writer_settings: dict = dataclasses.field(default_factory=dict)
  allow_config_change: bool = False


def check_resume_settings(job: TrainJob, saved: dict, where: str) -> None:
  """Refuses (or, with allow_config_change, warns about) a checkpoint
  written with other result-affecting settings."""
  keys = configs_util.diff(saved, job.config)
  if keys and job.allow_config_change:
    print(f"mtkd: warning: {where} was written with other settings "
          f"({', '.join(keys)}); continuing because --allow_config_change "
          "was given.", flush=True)
  elif keys:
    raise UserError(
        f"{where} was written by a different configuration of stage "
        f"{job.name!r}; differing keys: {', '.join(keys)}. Refusing to mix "
        "results. Fix: use a fresh --workdir, restore the original config, or "
        "pass --allow_config_change to continue with the new settings.")


def _restore(job: "TrainJob", ckpt: checkpoint.Checkpointer, state
             ) -> tuple[int, TrainState]:
  """(first step to run, state): the latest good checkpoint after checking
  its settings, else the fresh state with `job.init_variables` applied."""
  latest = ckpt.latest_step()
  if latest is not None:
    try:
      saved = ckpt.meta(latest).get("config", {})
    except Exception:  # noqa: BLE001 - unreadable: restore_latest decides.
      saved = None
    if saved is not None:
      check_resume_settings(job, saved,
                            f"Checkpoint {ckpt.directory}/{latest}")
    restored = ckpt.restore_latest(state)
    if restored is not None:
      return restored[0], restored[1]
  if job.init_variables is not None:
    # Copies: the step donates its state, and the source arrays (another
    # stage's result) must survive.
    where = jax.tree.map(lambda x: x.sharding, state.variables)
    state = state.with_variables(jax.device_put(jax.tree.map(
        jnp.copy, job.init_variables(state.variables)), where))
  return 0, state


def fit(job: TrainJob, placement: Placement) -> TrainState:
  """Trains (or resumes, or just restores) a job; returns the final state
  as global arrays in the placement's canonical layout."""
  sharding.check_batch_size(job.batch_size, placement.mesh,
                            f"{job.name} batch_size", job.accumulate)
  init_rng, step_rng = jax.random.split(jax.random.key(job.seed))
  state = placement.init(
      make_init(job.net, job.tx, job.input_shape, job.extra, job.ema > 0),
      init_rng)
  ckpt = checkpoint.Checkpointer(layout.checkpoints(job.directory))
  ckpt.quarantine_unfinished()
  meta = {"stage": job.name, "config": job.config,
          "config_hash": configs_util.fingerprint(job.config),
          "kinds": {t.name: t.kind for t in job.tasks},
          # The stream is indexed by step: resuming at step s reads ds[s:].
          "data": "step-indexed grain.MapDataset; next batch = state.step"}
  start, state = _restore(job, ckpt, state)
  if start >= job.num_steps:
    ckpt.close()
    return state
  if start:
    print(f"{job.name}: resuming at step {start}/{job.num_steps}.",
          flush=True)
  writer = MetricWriter(layout.logs(job.directory), job.writers, job.name,
                        job.writer_settings)
  evaluation = Evaluation(job, writer, ckpt.meta(start) if start else {})
  if evaluation.on and not start:
    evaluation.run(0, state)  # The reference the scores are taken against.

  step_fn = placement.compile(
      lambda axis_name: make_train_step(
          job.net, job.tx, job.objective, job.tasks, job.weighting,
          job.num_steps, job.augment, job.teacher, axis_name,
          job.accumulate, job.ema, job.split_step),
      state)
  progress = Progress(job.name, job.num_steps, start, job.batch_size)
  try:
    state = _train(job, placement, step_fn, state, step_rng, start, ckpt,
                   meta, writer, progress, evaluation)
    ckpt.close()
  except OSError as e:  # Disk full, quota, permissions: the user's to fix.
    raise UserError(
        f"{job.name}: writing to {job.directory} failed ({e.strerror or e})"
        ". Checkpoints are written atomically, so the last complete one "
        f"(step {ckpt.latest_step() or 'none'}) is intact. Fix: free disk "
        "space or fix permissions, then re-run the same command to resume."
    ) from None
  finally:  # Let in-flight async saves finish, even when training failed.
    try:
      ckpt.close()
    except OSError:
      pass  # Already reported above.
    writer.close()
  progress.update(job.num_steps, f"done in {progress.elapsed():.1f}s",
                  force=True)
  return state


# One dispatch for the whole tree: `jax.tree.map(jnp.add, ...)` outside jit
# dispatches once per metric leaf (~22 for two tasks), which measured about
# 12 % of a small student's loop (experiments/README.md).
_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


def accumulate(sums, since, metrics):
  """`(sums, since) += (metrics, metrics["loss"])` in one dispatch; `None`
  starts a sum. `sums` feeds the log, `since` the keep-best loss since the
  last save; their cadences differ, so they reset separately."""
  loss = metrics["loss"]
  if sums is None or since is None:
    return (metrics if sums is None else _add(sums, metrics),
            loss if since is None else _add(since, loss))
  return _add((sums, since), (metrics, loss))


def _placed(batch):
  return batch


def _log(job: TrainJob, host: dict, last_logged: int, step: int,
         last_saved: int | None, writer: MetricWriter,
         progress: Progress) -> None:
  """Writes the means of the metric sums since the last log; stops on
  non-finite steps unless `job.nonfinite == 'skip'`."""
  bad = int(float(host["nonfinite"][0]))
  if bad and job.nonfinite == "stop":
    raise UserError(
        f"{job.name}: {bad} step(s) between steps {last_logged + 1} and "
        f"{step} had a non-finite loss or gradient; their updates were not "
        f"applied, and the last checkpoint ({last_saved or 'none'}) holds "
        "finite parameters. Fix: lower the learning rate, check the inputs "
        "for extreme values, or set config.nonfinite='skip' to skip such "
        "updates and go on.")
  means = metric_means(host)
  writer.write(step, {f"train/{k}": v for k, v in means.items()})
  progress.update(step, f"loss {means['loss']:.4f}")


def _train(job, placement, step_fn, state, step_rng, start, ckpt, meta,
           writer, progress, evaluation):
  """Steps from `start` to the end, logging, evaluating and checkpointing
  on cadence. Keep-best ranks checkpoints by the evaluation's score when
  there is one (a checkpoint at every evaluation), else by the training
  loss since the previous save."""
  sums, last_logged = None, start
  since_save = None  # (loss sum, steps) since the last save, for keep-best.
  step = start
  state = placement.to_device(state)

  def save(force=False, score=None):
    loss = None if score is None else -score
    if since_save is not None and not evaluation.on:
      total, count = placement.metrics_to_host(since_save)
      loss = float(total) / float(count)
    loss = loss if loss is not None and math.isfinite(loss) else None
    # Orbax copies the arrays to the host in a background thread, while the
    # next step donates (frees) `state`: hand it a copy the step never sees.
    snapshot = jax.tree.map(jnp.copy, placement.from_device(state))
    ckpt.save(step, snapshot, dict(meta, **evaluation.meta()), force=force,
              loss=loss)

  batches = streams.iterate(job.stream, start, job.num_steps)
  put = placement.put_batch
  if job.prefetch > 0:  # A thread puts; the loop receives device batches.
    batches = prefetch_to_device(batches, put, job.prefetch)
    put = _placed
  with contextlib.closing(batches) if job.prefetch > 0 else (
      contextlib.nullcontext()):
    for batch in batches:
      state, metrics = step_fn(state, put(batch), step_rng)
      sums, since_save = accumulate(sums, since_save, metrics)
      step += 1
      if step % job.log_every == 0 or step == job.num_steps:
        _log(job, placement.metrics_to_host(sums), last_logged, step,
             ckpt.latest_step(), writer, progress)
        sums, last_logged = None, step
      if evaluation.due(step) and step < job.num_steps:
        save(force=True, score=evaluation.run(
            step, placement.from_device(state)))
        since_save = None
      elif step % job.checkpoint_every == 0 and step < job.num_steps:
        save()
        since_save = None
      # One process polls its own flag every step; several agree at log steps.
      multi = jax.process_count() > 1
      if (step < job.num_steps and (not multi or step % job.log_every == 0)
          and preemption.requested(sync=multi)):
        if ckpt.latest_step() != step:
          save(force=True)
        ckpt.wait()
        raise preemption.Preempted(f"step {step}/{job.num_steps} of stage "
                                   f"{job.name!r}", preemption.signal_name())
  final = placement.from_device(state)
  save(force=True, score=evaluation.run(step, final) if evaluation.on
       else None)
  return final


class Evaluation:
  """Evaluation during training: `job.evaluate` every `job.eval_every`
  steps and at the end, each result logged as `eval/<task>/<metric>`.

  A result's score is its multi-task Delta_m (%) against the evaluation at
  step 0 (the main metric of each task; for one task, its relative
  change), so "best" means the same at every step. The reference and the
  best step so far travel in every checkpoint's metadata: a resumed stage
  goes on with the same reference and the same choice."""

  def __init__(self, job: TrainJob, writer: MetricWriter, saved: dict):
    self.job, self.writer = job, writer
    self.on = job.evaluate is not None and job.eval_every > 0
    self.reference = saved.get("eval_reference")
    self.best = saved.get("eval_best")

  def due(self, step: int) -> bool:
    return self.on and step % self.job.eval_every == 0

  def run(self, step: int, state: TrainState) -> float:
    metrics = self.job.evaluate(state)
    if self.reference is None:
      self.reference = metrics
    score = relative_gain(metrics, self.reference, self.job.tasks)
    # Step 0 is the reference, not a candidate (it has no checkpoint).
    if step and (self.best is None or score > self.best["score"]):
      self.best = {"step": step, "score": score}
    self.writer.write(step, {f"eval/{t}/{k}": v for t, m in metrics.items()
                             for k, v in m.items()} | {"eval/score": score})
    return score

  def meta(self) -> dict:
    if not self.on:
      return {}
    return {"eval_reference": self.reference, "eval_best": self.best}


def best_state(directory: str, like: TrainState) -> tuple[int, TrainState]:
  """(step, state) of the checkpoint of a job (its `directory`) that its
  evaluations scored best."""
  ckpt = checkpoint.Checkpointer(layout.checkpoints(directory))
  try:
    step = ckpt.meta(ckpt.latest_step())["eval_best"]["step"]
    return step, ckpt.restore(step, like)[0]
  finally:
    ckpt.close()
