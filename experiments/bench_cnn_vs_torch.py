"""A CNN student's cached-KD step: mtkd (JAX, XLA:CPU) vs PyTorch eager.

The same model (resnet20 or wrn_16_2, 100 classes, RepDistiller's
definitions; torch's in experiments/torch_reference.py), the same loss
(0.1 CE + 0.9 T^2 KL(teacher || student) at T = 4 against cached teacher
logits, batch mean) and the same SGD (lr 0.05, momentum 0.9, weight decay
5e-4 on conv / linear weights only), on random 32x32x3 batches. Rows:

  PyTorch eager               NCHW, torch.set_num_threads(2), 1 interop
  PyTorch eager, channels_last  the same, NHWC memory format
  mtkd step (one jit)         `step_lib.make_train_step` compiled by
                              `placement.Jit` (state donated), as mtkd
                              trains; default XLA flags
  mtkd step + ynn flag        the same with XLA_FLAGS=FLAG (below): XLA
                              sends convolutions to Eigen, not YNNPACK
  split (two jits) + ynn flag the same model, objective and optimizer as
                              two programs: a forward that returns
                              `jax.vjp`'s closure (its residuals are real
                              buffers), then backward + optax update
                              (state donated); this file's own code, the
                              reference for the next rows
  mtkd split_step=True        mtkd's own split (`make_train_step(split=
                              True)` compiled by `placement.Jit` as two
                              programs, config.split_step), default flags
  mtkd split_step=True + ynn flag  the same with XLA_FLAGS=FLAG

`--impls` also knows `split` (two jits, default flags), to separate the
split's gain from the flag's.

Each implementation lives in its own process (XLA_FLAGS is read at
start-up), compiles and warms up once, then waits; the parent runs timed
rounds of --steps steps through every process in turn (the order
reversed every other round), so a busy machine slows all rows alike.
Figures are medians over the rounds; the ratio to PyTorch eager is the
median of the per-round ratios. After the rounds, a few steps per row are
split into forward (with the loss) and the rest (backward, update), with a
sync between them, to show where the time goes. A check first runs the
first steps of mtkd's step, both split steps and torch (both formats) from
the same initial weights (mtkd's init copied into torch, the copy checked
by mtkd's own converter) on the same batches, and compares the losses.

Never put these steps in `lax.scan` on CPU: convolutions inside loops run
~30x slower on XLA:CPU (jax issue 12868).

Needs torch (`.venv/bin/pip install -r experiments/requirements.txt`);
without it, prints a message and exits 0.

Run (from the repository root):
  .venv/bin/python -m experiments.bench_cnn_vs_torch          # both models
  .venv/bin/python -m experiments.bench_cnn_vs_torch --model=resnet20 \\
      --steps=20 --repeats=7
  .venv/bin/python -m experiments.bench_cnn_vs_torch --quick  # smoke run
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging

from experiments import bench_common
from mtkd import models
from mtkd.methods import objectives
from mtkd.train import optim, packing, placement, sharding
from mtkd.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
MODELS = ("resnet20", "wrn_16_2")
TASK, CLASSES, SHAPE = "label", 100, (32, 32, 3)
TEMPERATURE, ALPHA = 4.0, 0.9
SGD = dict(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4)
NUM_BATCHES, CHECK_STEPS, PART_STEPS = 4, 5, 5
# name: (row label, XLA_FLAGS extra); "torch*" rows run PyTorch.
IMPLS = {
    "torch": ("PyTorch eager (NCHW)", ""),
    "torch_cl": ("PyTorch eager, channels_last", ""),
    "mtkd": ("mtkd step (one jit), default flags", ""),
    "mtkd_flag": ("mtkd step (one jit) + ynn flag", FLAG),
    "split_flag": ("split: two jits + ynn flag", FLAG),
    "split": ("split: two jits, default flags", ""),
    "mtkd_split": ("mtkd split_step=True", ""),
    "mtkd_split_flag": ("mtkd split_step=True + ynn flag", FLAG),
}
PROTOCOL = "@@"  # Prefix of the worker's answers on stdout.

_MODEL = flags.DEFINE_list("model", list(MODELS),
                           f"Student models, of {', '.join(MODELS)}.")
_BATCH = flags.DEFINE_integer("batch", 64, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per round.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Rounds (the median counts).")
_IMPLS = flags.DEFINE_list(
    "impls", [k for k in IMPLS if k != "split"],
    f"Rows, of {', '.join(IMPLS)} (the first is the ratios' reference).")
_QUICK = flags.DEFINE_bool("quick", False,
                           "Smoke run: batch 16, 2 steps x 2 rounds.")
_WORKER = flags.DEFINE_string(
    "worker", None, "Internal: serve this implementation (or 'check') in "
    "this process, answering on stdout.")


# ------------------------------------------------------------ data, mtkd


def host_batches(batch: int, n: int = NUM_BATCHES, seed: int = 0
                 ) -> list[dict]:
  """Random images, labels and one teacher's logits, as mtkd's loop
  yields them (`teacher`: `{task: [B, 1, C]}`)."""
  rng = np.random.default_rng(seed)
  return [{"inputs": rng.normal(size=(batch, *SHAPE)).astype(np.float32),
           "labels": {TASK: rng.integers(0, CLASSES, batch).astype(np.int32)},
           "mask": np.ones(batch, np.float32),
           "teacher": {TASK: (3 * rng.normal(size=(batch, 1, CLASSES))
                              ).astype(np.float32)}} for _ in range(n)]


@dataclasses.dataclass
class Setup:
  """mtkd's pieces for one student: net, optimizer, objective, placement."""
  net: models.Net
  tx: optax.GradientTransformation
  specs: tuple
  objective: objectives.Objective
  place: placement.Jit
  init: Callable

  def fresh_state(self):
    """The initial state (seed 0); the steps donate theirs."""
    return self.place.init(self.init, jax.random.key(0))


def make_setup(model: str) -> Setup:
  net = models.Net(models.build(ml_collections.ConfigDict(dict(name=model)),
                                {TASK: CLASSES}))
  tx = optim.make_optimizer(ml_collections.ConfigDict(SGD))
  specs = (objectives.TaskSpec(TASK, CLASSES, temperature=TEMPERATURE,
                               alpha=ALPHA),)
  return Setup(net, tx, specs, objectives.OBJECTIVES.get("distill")(),
               placement.Jit(sharding.make_mesh(devices=jax.devices()[:1])),
               step_lib.make_init(net, tx, SHAPE,
                                  lambda p: {"weighting": {}}))


def mtkd_step(s: Setup, state, split: bool = False) -> Callable:
  """mtkd's step as mtkd trains: one program, state donated; with `split`
  (config.split_step) a `placement.Chained` of two programs."""
  return s.place.compile(lambda axis_name: step_lib.make_train_step(
      s.net, s.tx, s.objective, s.specs, axis_name=axis_name, split=split),
      state)


def _split_forward(s: Setup) -> Callable:
  """`(state, batch, rng) -> (loss, vjp_fn, metrics, model_state)`: the
  forward pass and loss of mtkd's step (fixed weighting), with `jax.vjp`'s
  closure (a pytree of residual buffers) returned instead of consumed."""
  names = s.objective.term_names(s.specs)
  weights = jnp.asarray([t.weight for t in s.specs], jnp.float32)

  def forward(state, batch, rng):
    batch = packing.unpack(batch)
    rng = jax.random.fold_in(rng, state.step)
    _, drop_rng, _ = jax.random.split(rng, 3)
    ctx = objectives.Context(state.step, 1)

    def loss_fn(params):
      out, model_state = s.net.apply(
          {"params": params, **state.model_state}, batch["inputs"],
          train=True, rngs={"dropout": drop_rng},
          mutable=list(state.model_state))
      terms, metrics = s.objective(out, batch, s.specs, ctx)
      loss = jnp.dot(weights, objectives.term_means(terms, names))
      return loss, (metrics, dict(model_state))

    loss, vjp_fn, (metrics, model_state) = jax.vjp(loss_fn, state.params,
                                                   has_aux=True)
    return loss, vjp_fn, metrics, model_state

  return forward


def _split_backward(s: Setup) -> Callable:
  """`(state, loss, vjp_fn, metrics, model_state) -> (state, metrics)`:
  the gradients from the closure, then mtkd's update (finite guard)."""

  def backward(state, loss, vjp_fn, metrics, model_state):
    (grads,) = vjp_fn(jnp.ones_like(loss))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = s.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params, opt_state, model_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (params, opt_state, model_state),
        (state.params, state.opt_state, state.model_state))
    one = jnp.ones((), jnp.float32)
    state = state.replace(step=state.step + 1, params=params,
                          opt_state=opt_state,
                          extra=dict(state.extra, model_state=model_state))
    return state, dict(metrics, loss=(loss, one), grad_norm=(grad_norm, one),
                       nonfinite=(1.0 - finite.astype(jnp.float32), one))

  return backward


def split_step(s: Setup) -> tuple[Callable, Callable]:
  """(step, (forward, backward)): the same update as `mtkd_step`, as two
  jitted programs; `step(state, batch, rng)` donates the state."""
  forward = jax.jit(_split_forward(s))
  backward = jax.jit(_split_backward(s), donate_argnums=(0,))

  def step(state, batch, rng):
    return backward(state, *forward(state, batch, rng))

  return step, (forward, lambda state, carry: backward(state, *carry))


# ------------------------------------------------------------ runners


@dataclasses.dataclass
class Runner:
  """`run(n)`: n steps and a sync; `parts(n)`: per-step (forward s, total
  s) medians with a sync between the halves (None: not separable);
  `losses`: the losses of the steps run with `record`."""
  run: Callable[[int], None]
  parts: Callable[[int], tuple[float, float] | None]
  losses: list = dataclasses.field(default_factory=list)


def jax_runner(model: str, impl: str, batch: int) -> Runner:
  """mtkd's one-jit step, this file's split step ("split*") or mtkd's
  ("mtkd_split*"), on NUM_BATCHES prepared device batches."""
  s = make_setup(model)
  box = [s.fresh_state()]
  if impl.startswith("split"):
    step, halves = split_step(s)
  elif impl.startswith("mtkd_split"):
    step = mtkd_step(s, box[0], split=True)
    halves = (step.forward, step.backward)
  else:
    step, halves = mtkd_step(s, box[0]), None
  dev = [s.place.put_batch(b) for b in host_batches(batch)]
  key = jax.random.key(1)
  runner = Runner(None, None)

  def run(n: int, record: bool = False) -> None:
    for i in range(n):
      box[0], m = step(box[0], dev[i % NUM_BATCHES], key)
      if record:
        runner.losses.append(float(m["loss"][0] / m["loss"][1]))
    jax.block_until_ready(box[0])

  def parts(n: int):
    if halves is None:
      return None
    fwd, total = [], []
    for i in range(n):
      t0 = time.perf_counter()
      out = jax.block_until_ready(halves[0](box[0], dev[i % NUM_BATCHES],
                                            key))
      t1 = time.perf_counter()
      box[0] = jax.block_until_ready(halves[1](box[0], out))[0]
      fwd.append(t1 - t0)
      total.append(time.perf_counter() - t0)
    return statistics.median(fwd), statistics.median(total)

  runner.run, runner.parts = run, parts
  return runner


def torch_runner(model: str, channels_last: bool, batch: int,
                 init: dict | None = None) -> Runner:
  """PyTorch eager on the same batches (NCHW tensors, or channels_last);
  `init`: mtkd's variables to start from (default: torch's own init)."""
  import torch

  from experiments import torch_reference as ref
  torch.set_num_threads(2)
  if torch.get_num_interop_threads() != 1:  # Settable once per process.
    torch.set_num_interop_threads(1)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  net = ref.CNNS[model](CLASSES)
  if init is not None:
    ref.load_flax_cnn(net, torch_leaves(model, init))
  net = net.to(memory_format=fmt).train()
  opt = ref.decayed_sgd(net, SGD["learning_rate"], SGD["momentum"],
                        SGD["weight_decay"])
  step = ref.make_cnn_step(net, opt, TASK, TEMPERATURE, ALPHA)
  data = [(torch.from_numpy(b["inputs"].transpose(0, 3, 1, 2).copy()
                            ).contiguous(memory_format=fmt),
           torch.from_numpy(b["teacher"][TASK][:, 0].copy()),
           torch.from_numpy(b["labels"][TASK].astype(np.int64)))
          for b in host_batches(batch)]
  runner = Runner(None, None)

  def run(n: int, record: bool = False) -> None:
    for i in range(n):
      loss = step(*data[i % NUM_BATCHES])
      if record:
        runner.losses.append(float(loss.detach()))

  def parts(n: int):
    fwd, total = [], []
    for i in range(n):
      x, teacher, labels = data[i % NUM_BATCHES]
      t0 = time.perf_counter()
      opt.zero_grad(set_to_none=True)
      loss = ref.distill_loss({TASK: net(x)}, {TASK: teacher},
                              {TASK: labels}, (TASK,), TEMPERATURE, ALPHA)
      t1 = time.perf_counter()
      loss.backward()
      opt.step()
      fwd.append(t1 - t0)
      total.append(time.perf_counter() - t0)
    return statistics.median(fwd), statistics.median(total)

  runner.run, runner.parts = run, parts
  return runner


def make_runner(model: str, impl: str, batch: int) -> Runner:
  if impl.startswith("torch"):
    return torch_runner(model, impl == "torch_cl", batch)
  return jax_runner(model, impl, batch)


# ------------------------------------------------------------ the check


def torch_leaves(model: str, variables: dict) -> dict:
  """PyTorch state_dict key -> mtkd's array, for mtkd's `{"params":
  {"model": ...}, "batch_stats": {"model": ...}}` of the student, by the
  names mtkd's converter (`mtkd.models.convert`) reads checkpoints with."""
  from flax import traverse_util

  from mtkd.models import convert
  multi = models.build(ml_collections.ConfigDict(dict(name=model)),
                       {TASK: CLASSES})
  family = convert.FAMILIES[type(multi.trunk)]
  leaf_names = {("params", "kernel"): "weight", ("params", "scale"): "weight",
                ("params", "bias"): "bias",
                ("batch_stats", "mean"): "running_mean",
                ("batch_stats", "var"): "running_var"}
  out = {}
  flat = traverse_util.flatten_dict(jax.device_get(variables))
  for (collection, _, module, *path, leaf), value in flat.items():
    prefix = (family.rename(multi.trunk, tuple(path)) if module == "trunk"
              else family.classifier)
    name = leaf_names[(collection, leaf)]
    out[f"{prefix}.{name}" if prefix else name] = value
  return out


def check(model: str, batch: int) -> dict:
  """The first CHECK_STEPS losses of every implementation from mtkd's
  initial weights, and the largest difference between those weights and
  torch's copy of them read back by mtkd's converter."""
  from experiments import torch_reference as ref
  from mtkd.models import convert
  s = make_setup(model)
  variables = jax.device_get(s.fresh_state().variables)
  out = {}
  for impl in ("mtkd", "split", "mtkd_split"):
    runner = jax_runner(model, impl, batch)
    runner.run(CHECK_STEPS, record=True)
    out[impl] = runner.losses
  for impl in ("torch", "torch_cl"):
    runner = torch_runner(model, impl == "torch_cl", batch, variables)
    runner.run(CHECK_STEPS, record=True)
    out[impl] = runner.losses
  net = ref.CNNS[model](CLASSES)  # A fresh copy, loaded as above.
  ref.load_flax_cnn(net, torch_leaves(model, variables))
  back = convert.from_torch(
      {k: v.numpy() for k, v in net.state_dict().items()}, s.net.model, TASK,
      SHAPE)
  want = {c: t["model"] for c, t in variables.items()}
  out["round_trip"] = max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
      back, want)))
  step = mtkd_step(s, s.fresh_state())
  cost = step.lower(s.fresh_state(), s.place.put_batch(host_batches(batch)[0]),
                    jax.random.key(1)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  out["gflop"] = float((cost or {}).get("flops", float("nan"))) / 1e9
  return out


# ------------------------------------------------------------ processes


def serve(impl: str, model: str, batch: int) -> None:
  """The worker: builds `impl`, compiles and warms it up, then answers the
  parent's commands on stdin ('run n', 'parts n', 'quit'), one line each
  (PROTOCOL + JSON; anything else on stdout is ignored)."""
  def answer(obj) -> None:
    print(PROTOCOL + json.dumps(obj), flush=True)

  if impl == "check":
    answer(check(model, batch))
    return
  t0 = time.perf_counter()
  runner = make_runner(model, impl, batch)
  runner.run(1)
  first = time.perf_counter() - t0
  # A jitted step may compile again once its inputs are its own outputs;
  # torch warms its allocator.
  runner.run(NUM_BATCHES)
  answer({"first": first})
  for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "run":
      t0 = time.perf_counter()
      runner.run(int(args[0]))
      answer({"s": time.perf_counter() - t0})
    elif cmd == "parts":
      answer({"parts": runner.parts(int(args[0]))})
    else:
      return


class WorkerError(RuntimeError):
  pass


class Worker:
  """One implementation in its own process (`serve`), with its XLA_FLAGS."""

  def __init__(self, impl: str, model: str, batch: int):
    env = dict(os.environ)
    xla = " ".join(f for f in (env.get("XLA_FLAGS", "").replace(FLAG, ""),
                               IMPLS.get(impl, ("", ""))[1]) if f.strip())
    env.pop("XLA_FLAGS", None)
    if xla:
      env["XLA_FLAGS"] = xla
    self.err = tempfile.TemporaryFile(mode="w+")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.bench_cnn_vs_torch",
         f"--worker={impl}", f"--model={model}", f"--batch={batch}"],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=self.err, text=True)

  def ask(self, command: str = "") -> dict:
    """Sends `command` (if any) and returns the answer; WorkerError with
    the last line of its stderr if the process ended instead."""
    try:
      if command:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
      for line in self.proc.stdout:
        if line.startswith(PROTOCOL):
          return json.loads(line[len(PROTOCOL):])
    except BrokenPipeError:
      pass
    self.proc.wait()
    self.err.seek(0)
    lines = self.err.read().strip().splitlines() or ["no output"]
    raise WorkerError(f"failed (exit {self.proc.returncode}): "
                      f"{lines[-1][:200]}")

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
      except BrokenPipeError:
        pass
      self.proc.wait(timeout=120)
    self.err.close()


def start(impls: Sequence[str], model: str, batch: int
          ) -> tuple[dict, dict, dict]:
  """(workers, first-call seconds, failures), started one at a time so
  that no two compile at once."""
  workers, first, failed = {}, {}, {}
  for impl in impls:
    w = Worker(impl, model, batch)
    try:
      first[impl] = w.ask()["first"]
      workers[impl] = w
    except WorkerError as e:
      failed[impl] = str(e)
      w.close()
  return workers, first, failed


def bench_model(model: str, impls: Sequence[str], batch: int, steps: int,
                rounds: int) -> dict:
  """Interleaved rounds of `steps` steps through every implementation's
  process (order reversed every other round); then the forward / rest
  split. Returns first-call s, per-round s/step, parts and failures."""
  workers, first, failed = start(impls, model, batch)
  times = {impl: [] for impl in workers}
  parts = {}
  try:
    for r in range(rounds):
      for impl in list(workers)[::1 if r % 2 == 0 else -1]:
        if impl in failed:
          continue
        try:
          times[impl].append(workers[impl].ask(f"run {steps}")["s"] / steps)
        except WorkerError as e:
          failed[impl] = str(e)
    for impl, w in workers.items():
      if impl not in failed:
        parts[impl] = w.ask(f"parts {PART_STEPS}")["parts"]
  finally:
    for w in workers.values():
      w.close()
  return {"first": first, "times": times, "parts": parts, "failed": failed}


# ------------------------------------------------------------ reporting


def check_line(model: str, batch: int) -> str:
  """Runs the check in its own process; one line for the report."""
  w = Worker("check", model, batch)
  try:
    c = w.ask()
  except WorkerError as e:
    return f"{model}: loss check {e}"
  finally:
    w.close()
  ref = c["mtkd"]
  diffs = {k: [abs(x - y) for x, y in zip(c[k], ref, strict=True)]
           for k in ("split", "mtkd_split", "torch", "torch_cl")}
  return (f"{model}: XLA counts {c['gflop']:.2f} GFLOP per one-jit step; "
          f"mtkd's init copied into torch and read back by mtkd's converter "
          f"max |diff| {c['round_trip']:.1e}; losses of the first "
          f"{CHECK_STEPS} steps from it, mtkd "
          f"{[round(x, 5) for x in ref]}; |diff| to mtkd at step 0 / max "
          "over the steps: " + ", ".join(
              f"{k} {d[0]:.1e} / {max(d):.1e}" for k, d in diffs.items()))


def _ms(x: float) -> str:
  return f"{1e3 * x:.1f}"


def rows(result: dict, impls: Sequence[str], batch: int) -> list[list[str]]:
  """One table row per implementation (ratios against impls[0])."""
  ref = result["times"].get(impls[0]) if impls[0] not in result["failed"] \
      else None
  out = []
  for impl in impls:
    label = IMPLS[impl][0]
    if impl in result["failed"] or not result["times"].get(impl):
      out.append([label, result["failed"].get(impl, "no result"), *[""] * 6])
      continue
    t = result["times"][impl]
    ratio = statistics.median(
        a / b for a, b in zip(ref, t, strict=False)) if ref else None
    part = result["parts"].get(impl)
    out.append([
        label, f"{result['first'][impl]:.1f}", _ms(statistics.median(t)),
        _ms(min(t)), f"{batch / statistics.median(t):,.0f}",
        f"{ratio:.2f}x" if ratio else "",
        _ms(part[0]) if part else "-",
        _ms(part[1] - part[0]) if part else "-"])
  return out


def bounds(result: dict, impls: Sequence[str]) -> str:
  """Forward and backward of the best split row against PyTorch eager."""
  parts, ref = result["parts"], impls[0]
  best = [i for i in impls if "split" in i and parts.get(i)]
  if not best or not parts.get(ref) or not ref.startswith("torch"):
    return ""
  b = min(best, key=lambda i: parts[i][1])
  (jf, jt), (tf, tt) = parts[b], parts[ref]
  return (f"Forward (with the loss): {IMPLS[b][0]} {_ms(jf)} ms against "
          f"{_ms(tf)} ms, {tf / jf:.2f}x; backward + update {_ms(jt - jf)} "
          f"ms against {_ms(tt - tf)} ms, {(tt - tf) / (jt - jf):.2f}x "
          "(steps with a sync between the halves).")


READING = (
    "What bounds the ratio: the convolutions. XLA:CPU's convolution kernels "
    "(YNNPACK by default, Eigen with the flag) run at about half the speed "
    "of the oneDNN kernels PyTorch calls (../shared/notes/xla-cpu-cnn.md: "
    "~133 ms of Eigen convolution per ResNet-20 step at batch 64 against "
    "~70 ms in oneDNN), in the forward pass as in the backward. The split "
    "removes what XLA adds on top (the BatchNorm/ReLU chain recomputed "
    "inside every weight-gradient transpose of a one-jit step), the flag "
    "picks the faster kernel; neither makes a convolution faster, so no "
    "stock XLA flag gets to 1.0x; that takes other convolution kernels "
    "(e.g. oneDNN through jax.ffi in a custom_vjp).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # As mtkd.main: no INFO logs.
  batch, steps, rounds = (16, 2, 2) if _QUICK.value else (
      _BATCH.value, _STEPS.value, _REPEATS.value)
  if _WORKER.value:
    serve(_WORKER.value, _MODEL.value[0], batch)
    return
  bad = sorted(set(_MODEL.value) - set(MODELS)) + sorted(
      set(_IMPLS.value) - set(IMPLS))
  if bad:
    raise app.UsageError(f"Unknown --model / --impls {bad}; models "
                         f"{list(MODELS)}, impls {list(IMPLS)}.")
  try:
    import torch
  except ImportError:
    print("bench_cnn_vs_torch: torch is not installed; skipping. Install "
          "it with `.venv/bin/pip install -r experiments/requirements.txt`.")
    return
  print(f"{bench_common.machine()}; torch {torch.__version__}")
  impls = _IMPLS.value
  for model in _MODEL.value:
    print(f"\n{check_line(model, batch)}", flush=True)
    load = os.getloadavg()
    t0 = time.perf_counter()
    result = bench_model(model, impls, batch, steps, rounds)
    print(bench_common.table(
        ["implementation", "setup + first step s", "ms/step (median)",
         "min ms", "examples/s", f"vs {IMPLS[impls[0]][0]}", "forward ms",
         "backward + update ms"], rows(result, impls, batch),
        f"\n{model}, batch {batch}, {steps} steps x {rounds} interleaved "
        f"rounds (median; ratio: median of per-round ratios), "
        f"{time.perf_counter() - t0:.0f} s; load average (1 min) "
        f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n"))
    print(f"\n{bounds(result, impls)}", flush=True)
  print(f"\n{READING}\n\n{bench_common.machine()}")


if __name__ == "__main__":
  app.run(main)
