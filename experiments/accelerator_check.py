"""One prepared check of mtkd on an accelerator, every number in one run.

  python -m experiments.accelerator_check --out=DIR          # on a GPU/TPU
  python -m experiments.accelerator_check --tiny --out=DIR   # CPU, seconds

In one process and (on an H100/H200-class GPU) under 8 minutes it:
1. prints the environment: devices, package versions, the device's peak
   bf16 TFLOP/s (`--peak_tflops`, or a table of known devices);
2. checks correctness on the device: one cached-KD step against the CPU
   (float32 and bfloat16 compute), jit = pmap, an Orbax round trip, and the
   quickstart smoke pipeline end to end (on sklearn digits);
3. benchmarks the student step of every model it knows that is registered
   (today the quickstart MLP and a patch CNN; resnet20, resnet8x4, resnet50
   and vit_s16 once the models land), plain / cached-KD / online-teacher, in
   float32 and bfloat16 at a few batch sizes: examples/s, XLA's FLOPs ->
   TFLOP/s -> MFU, the program's device memory, compile time;
4. runs the training loop's own code (Grain stream, cache join, placement,
   metric sums) on generated data and reports the device's idle share (how
   much of the loop's wall time the device is not computing a step), with
   and without `prefetch_to_device`;
5. writes accelerator_check.json and accelerator_check.md to --out.

It checks its imports first and names anything missing (the GPU machine has
no network: see README "Accelerators" for carrying wheels). Exit status: 0,
1 if a correctness check failed, 2 if a dependency is missing. `--tiny`
shrinks everything and runs on the CPU: tests/test_accelerator_check.py runs
it in CI, so the script does not rot before a GPU arrives.
"""

import dataclasses
import functools
import importlib
import importlib.metadata
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags, logging

REQUIRED = ("numpy", "jax", "flax", "optax", "orbax.checkpoint",
            "ml_collections", "grain", "tensorboardX", "sklearn", "PIL")
VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
            "ml-collections", "numpy")
# Dense bf16 peak TFLOP/s; the first matching substring of device_kind wins.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0),
                    ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0),
                    ("L4", 121.0), ("TPU v4", 275.0), ("TPU v5 lite", 197.0),
                    ("TPU v5e", 197.0), ("TPU v5p", 459.0),
                    ("TPU v6 lite", 918.0), ("TPU v6e", 918.0))

_OUT = flags.DEFINE_string("out", None, "Directory for the JSON and table.")
_TINY = flags.DEFINE_bool("tiny", False, "CPU, tiny shapes: the CI mode.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak bf16 TFLOP/s of one "
                           "device (default: from the table of known ones).")
_BUDGET = flags.DEFINE_float("budget_s", 420.0, "Seconds after which the "
                             "benchmarks skip what is left (the run must "
                             "fit a short accelerator lease).")
_REQUIRE = flags.DEFINE_list("require", [], "Extra modules to check for.")


def missing_modules(names: Sequence[str]) -> list[str]:
  out = []
  for name in names:
    try:
      importlib.import_module(name)
    except ImportError:
      out.append(name)
  return out


@dataclasses.dataclass(frozen=True)
class Model:
  """A benchmarked student (and its online teacher) on one input shape."""
  name: str
  student: dict
  teacher: dict
  shape: tuple[int, ...]
  batches: tuple[int, ...]


def models_to_check(tiny: bool) -> list[Model]:
  """Today's models, and the models issue's as soon as they register."""
  cnn_t = dict(name="patch_cnn", channels=(64, 128), dense=512)
  if tiny:  # One model: the code path is the same for every model.
    return [Model("quickstart_mlp", dict(name="mlp", hidden=(16,)),
                  dict(name="patch_cnn", channels=(4,), dense=8), (12, 12, 1),
                  (16,))]
  return [
      Model("quickstart_mlp", dict(name="mlp", hidden=(128,)),
            dict(name="patch_cnn", channels=(32, 64), dense=256), (36, 36, 1),
            (256, 2048)),
      Model("patch_cnn_64x64", dict(name="patch_cnn", channels=(32, 64),
                                    dense=256), cnn_t, (64, 64, 3),
            (256, 1024)),
      Model("resnet20", dict(name="resnet20"), dict(name="resnet56"),
            (32, 32, 3), (256, 1024)),
      Model("resnet8x4", dict(name="resnet8x4"), dict(name="resnet32x4"),
            (32, 32, 3), (256, 1024)),
      Model("resnet50", dict(name="resnet50"), dict(name="resnet50"),
            (224, 224, 3), (128, 256)),
      Model("vit_s16", dict(name="vit_s16"), dict(name="vit_b16"),
            (224, 224, 3), (256, 512)),
  ]


def environment(peak_flag: float) -> dict:
  import jax
  kind = jax.devices()[0].device_kind
  peak = peak_flag or next((v for k, v in PEAK_BF16_TFLOPS if k in kind), 0.0)
  versions = {}
  for name in VERSIONS:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = "not installed"
  return {"device_kind": kind, "platform": jax.devices()[0].platform,
          "device_count": jax.device_count(),
          "process_count": jax.process_count(),
          "python": sys.version.split()[0], "versions": versions,
          "peak_bf16_tflops": peak, "peak_source": (
              "--peak_tflops" if peak_flag else "table" if peak else "none"),
          "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


# ------------------------------------------------------------ correctness


def _check(name: str, fn: Callable[[], str]) -> dict:
  """Runs one check: ok with its detail, or not ok with the exception."""
  t0 = time.perf_counter()
  try:
    detail, ok = fn(), True
  except Exception as e:  # noqa: BLE001 - every failure is a finding.
    detail, ok = f"{type(e).__name__}: {e}", False
    traceback.print_exc()
  return {"check": name, "ok": ok, "detail": detail,
          "seconds": round(time.perf_counter() - t0, 2)}


def _student(devices, dtype: str = "float32", objective: str = "distill"):
  """The quickstart student (bench_common's) on `devices`, in `dtype`."""
  import ml_collections

  from experiments import bench_common as bc
  from mtkd import models
  from mtkd.train import step as step_lib
  s = bc.make_student(devices, objective)
  net = models.Net(models.build(ml_collections.ConfigDict(
      dict(name="mlp", hidden=(bc.HIDDEN,), dtype=dtype)),
      {t: bc.NUM_CLASSES for t in bc.TASKS}))
  return dataclasses.replace(s, model=net, init=step_lib.make_init(
      net, s.tx, bc.INPUT_SHAPE))


def _one_step(devices, dtype: str, host_state, batch):
  """(metrics, params after one step) on `devices`, from a host state."""
  import jax

  from experiments import bench_common as bc
  s = _student(devices, dtype)
  like = s.fresh_state()
  state = jax.device_put(host_state, jax.tree.map(lambda x: x.sharding, like))
  step = bc.make_student_step(s, like)
  state, metrics = step(state, s.put(batch), jax.random.key(1))
  return jax.device_get(metrics), jax.device_get(state.params)


def _update(params, before):
  """The step's parameter update, flattened, in float64."""
  import jax
  import numpy as np
  return np.concatenate([
      np.ravel(np.asarray(a, np.float64) - np.asarray(b, np.float64))
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(before),
                      strict=True)])


def check_kd_step_against_cpu(dtype: str, tol: float) -> str:
  """Loss and KD terms agree with a float32 step on the CPU within `tol`
  (relative), and the parameter updates point the same way."""
  import jax
  import numpy as np

  from experiments import bench_common as bc
  split = bc.synthetic_split(64)
  batch = bc.host_batch(split, bc.synthetic_logits(64), np.arange(64))
  host = jax.device_get(_student(jax.devices("cpu")[:1], dtype).fresh_state())
  dev_m, dev_p = _one_step(jax.devices()[:1], dtype, host, batch)
  cpu_m, cpu_p = _one_step(jax.devices("cpu")[:1], "float32", host, batch)
  worst = 0.0
  for key in ("loss", "left/kd", "right/kd"):
    a, b = (float(m[key][0]) / float(m[key][1]) for m in (dev_m, cpu_m))
    worst = max(worst, abs(a - b) / max(abs(b), 1e-6))
  d, c = _update(dev_p, host.params), _update(cpu_p, host.params)
  cosine = float(d @ c / (np.linalg.norm(d) * np.linalg.norm(c)))
  if not (worst <= tol and cosine >= 0.99):
    raise AssertionError(f"{dtype} on {jax.devices()[0].device_kind} vs "
                         f"float32 CPU: relative metric difference {worst:.2e}"
                         f" (tolerance {tol:g}), update cosine {cosine:.5f}")
  return (f"max relative metric difference {worst:.2e}, update cosine "
          f"{cosine:.6f}")


def check_jit_equals_pmap() -> str:
  import jax
  import numpy as np

  from experiments import bench_common as bc
  from mtkd.train import placement
  devices = jax.local_devices()
  n = 16 * len(devices)
  split = bc.synthetic_split(n)
  batch = bc.host_batch(split, bc.synthetic_logits(n), np.arange(n))
  out = []
  for cls in (placement.Jit, placement.Pmap):
    s = _student(devices)
    s = dataclasses.replace(s, place=cls(s.place.mesh))
    state = s.fresh_state()
    step = bc.make_student_step(s, state)
    state = s.place.to_device(state)
    for _ in range(3):
      state, _ = step(state, s.put(batch), jax.random.key(2))
    out.append(jax.device_get(s.place.from_device(state).params))
  worst = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(out[0]), jax.tree.leaves(out[1]), strict=True))
  if worst > 1e-4:
    raise AssertionError(f"jit and pmap parameters differ by {worst:.2e} "
                         f"after 3 steps on {len(devices)} device(s)")
  return f"{len(devices)} device(s), max parameter difference {worst:.2e}"


def check_checkpoint_round_trip(workdir: str) -> str:
  import jax

  from mtkd.store.checkpoint import Checkpointer
  from mtkd.store.fingerprint import tree_fingerprint
  state = _student(jax.devices()[:1]).fresh_state()
  ckpt = Checkpointer(os.path.join(workdir, "ckpt"))
  ckpt.save(1, state, {"config": {}}, force=True)
  ckpt.wait()
  restored, _ = ckpt.restore(1, state)
  ckpt.close()
  want, got = tree_fingerprint(state), tree_fingerprint(restored)
  if got != want:
    raise AssertionError(f"restored fingerprint {got} != saved {want}")
  return f"fingerprint {want[:12]} restored onto {jax.devices()[0].platform}"


def check_smoke_pipeline(workdir: str, tiny: bool) -> str:
  from configs import quickstart
  from mtkd import experiment
  c = quickstart.get_config("smoke")
  c.data.name = "digits"  # sklearn's; Fashion-MNIST is not on the device.
  if tiny:
    c.teacher.model = dict(name="mlp", hidden=(16,))
    c.teacher.steps = c.student.steps = 10
    c.baseline = False
  results = experiment.run(c, os.path.join(workdir, "smoke"))
  values = [v for rows in results.values() for m in rows.values()
            for v in m.values()]
  if not all(math.isfinite(v) for v in values):
    raise AssertionError(f"non-finite metric in {results}")
  acc = {t: round(rows["student"]["accuracy"], 4)
         for t, rows in results.items()}
  return f"student accuracy {acc}"


def correctness(workdir: str, tiny: bool) -> list[dict]:
  return [_check("cached-KD step, float32, device vs CPU",
                 lambda: check_kd_step_against_cpu("float32", 2e-2)),
          _check("cached-KD step, bfloat16 trunk, device vs float32 CPU",
                 lambda: check_kd_step_against_cpu("bfloat16", 1e-1)),
          _check("jit = pmap", check_jit_equals_pmap),
          _check("checkpoint round trip",
                 lambda: check_checkpoint_round_trip(workdir)),
          _check("quickstart smoke pipeline (digits)",
                 lambda: check_smoke_pipeline(workdir, tiny))]


# ------------------------------------------------------------ step timing


def _analysis(compiled) -> tuple[float, int]:
  """(XLA's FLOPs per call, the program's device bytes) of a compiled
  step; nan / -1 where the backend reports none."""
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):  # Older jax: one dict per program.
    cost = cost[0] if cost else {}
  flops = float((cost or {}).get("flops", float("nan")))
  try:
    m = compiled.memory_analysis()
    mem = int(m.temp_size_in_bytes + m.argument_size_in_bytes
              + m.output_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # noqa: BLE001 - not every backend reports it.
    mem = -1
  return flops, mem


def _variants(model: Model, dtype: str, batch: int):
  """{mode: (net, tx, specs, objective, teacher_fn, extra, host batch)}."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np

  from mtkd import models
  from mtkd.methods import objectives
  from mtkd.stages import teachers
  from mtkd.train.optim import make_optimizer
  tasks = ("left", "right")
  classes = {t: 10 for t in tasks}
  cfg = ml_collections.ConfigDict

  def build(c):
    return models.build(cfg(dict(c, dtype=dtype)), classes)
  teacher = build(model.teacher)
  t_vars = dict(teacher.init(jax.random.key(1),
                            jnp.zeros((1, *model.shape))))
  rng = np.random.default_rng(0)
  base = {"inputs": rng.random((batch, *model.shape), np.float32),
          "labels": {t: rng.integers(0, 10, batch).astype(np.int32)
                     for t in tasks},
          "mask": np.ones(batch, np.float32)}
  cached = dict(base, teacher={t: rng.normal(size=(batch, 1, 10)).astype(
      np.float32) for t in tasks})
  specs = tuple(objectives.TaskSpec(t, 10, temperature=4.0, alpha=0.5)
                for t in tasks)
  net = models.Net(build(model.student))
  tx = make_optimizer(cfg(dict(name="sgd", learning_rate=0.05,
                               momentum=0.9)))
  online = teachers.online({"t": teacher}, {t: ["t"] for t in tasks})
  return {"plain": (net, tx, specs, "supervised", None, {}, base),
          "cached": (net, tx, specs, "distill", None, {}, cached),
          "online": (net, tx, specs, "distill", online,
                     {"teachers": {"t": t_vars}}, base)}


def _make_step(net, tx, objective, specs, teacher, axis_name):
  from mtkd.train.step import make_train_step
  return make_train_step(net, tx, objective, specs, teacher=teacher,
                         axis_name=axis_name)


def _median_step_s(step, state, batch, key, steps: int):
  """(state, median seconds per step of three timed runs after a warm-up);
  the step donates its state, so the newest one is handed back."""
  import jax
  times = []
  for _ in range(3):
    state, m = step(state, batch, key)
    jax.block_until_ready((state, m))
    t0 = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, batch, key)
    jax.block_until_ready((state, m))
    times.append((time.perf_counter() - t0) / steps)
  return state, statistics.median(times)


def time_step(model: Model, dtype: str, batch: int, steps: int) -> list[dict]:
  """One row per mode: compile s, ex/s, GFLOP/step, TFLOP/s, program MiB."""
  import jax

  from mtkd.methods.objectives import OBJECTIVES
  from mtkd.train import placement, sharding
  from mtkd.train.step import make_init
  place = placement.Jit(sharding.make_mesh(devices=jax.devices()[:1]))
  rows = []
  for mode, (net, tx, specs, obj, teacher, extra, host) in _variants(
      model, dtype, batch).items():
    init = make_init(net, tx, model.shape,
                     lambda p, e=extra: {"weighting": {}, **e})
    state = place.init(init, jax.random.key(0))
    jitted = place.compile(functools.partial(
        _make_step, net, tx, OBJECTIVES.get(obj)(), specs, teacher), state)
    device_batch, key = place.put_batch(host), jax.random.key(1)
    t0 = time.perf_counter()
    compiled = jitted.lower(state, device_batch, key).compile()
    compile_s = time.perf_counter() - t0
    flops, mem = _analysis(compiled)
    _, t = _median_step_s(compiled, state, device_batch, key, steps)
    rows.append({"model": model.name, "dtype": dtype, "batch": batch,
                 "mode": mode, "compile_s": round(compile_s, 3),
                 "step_ms": 1e3 * t, "examples_per_s": batch / t,
                 "gflop_per_step": flops / 1e9, "tflops": flops / t / 1e12,
                 "program_mib": mem / 2**20 if mem >= 0 else None})
  return rows


def step_benchmarks(tiny: bool, peak: float, deadline: float) -> dict:
  from mtkd.models import TRUNKS
  rows, skipped = [], []
  steps = 3 if tiny else 20
  for model in models_to_check(tiny):
    names = {model.student["name"], model.teacher["name"]}
    if not names <= set(TRUNKS.names()):
      skipped.append(f"{model.name}: {sorted(names - set(TRUNKS.names()))} "
                     "not registered yet (the models issue)")
      continue
    for dtype in ("bfloat16", "float32"):
      for batch in model.batches:
        if time.monotonic() > deadline:
          skipped.append(f"{model.name} {dtype} batch {batch}: time budget")
          continue
        try:
          rows += time_step(model, dtype, batch, steps)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory.
          skipped.append(f"{model.name} {dtype} batch {batch}: "
                         f"{type(e).__name__}: {str(e)[:200]}")
  for r in rows:
    r["mfu_percent"] = 100 * r["tflops"] / peak if peak else None
  return {"rows": rows, "skipped": skipped}


# ------------------------------------------------------------ loop timing


def _cached_data(model: Model, n: int, directory: str):
  """(split, join): generated uint8 images and a cache of random teacher
  logits, read back through the pipeline's own cache join."""
  import numpy as np

  from mtkd.data import datasets
  from mtkd.stages import teachers
  from mtkd.store import cache
  rng = np.random.default_rng(0)
  tasks = ("left", "right")
  split = datasets.Split(
      rng.integers(0, 255, (n, *model.shape), dtype=np.uint8),
      {t: rng.integers(0, 10, n).astype(np.int32) for t in tasks},
      np.arange(n, dtype=np.int64))
  logits = {t: rng.normal(size=(n, 10)).astype(np.float32) for t in tasks}
  cache.build(directory, n, 4096, lambda a, b: (
      split.ids[a:b], {t: x[a:b] for t, x in logits.items()}),
      {"teacher": "t"}, "float32")
  c = cache.LogitCache(directory, {})
  return split, teachers.CachedJoin({"t": c}, {t: ["t"] for t in tasks})


def loop_idle(model: Model, dtype: str, batch: int, steps: int,
              prefetch: int, directory: str) -> dict:
  """The loop's per-step code (`mtkd.train.loop`): Grain stream with the
  cache join, put (or `prefetch_to_device`), cached-KD step, metric sums.
  idle % = 1 - steps x (step time on a resident batch) / (loop wall time)."""
  import jax

  from mtkd.data import streams
  from mtkd.methods.objectives import OBJECTIVES
  from mtkd.train import placement, sharding
  from mtkd.train.loop import accumulate
  from mtkd.train.prefetch import prefetch_to_device
  from mtkd.train.step import make_init
  split, join = _cached_data(model, max(16 * batch, 1024), directory)
  stream = streams.train_stream(split, split.labels, batch, 0, join=join)
  place = placement.Jit(sharding.make_mesh(devices=jax.devices()[:1]))
  net, tx, specs, *_ = _variants(model, dtype, batch)["cached"]
  state = place.init(make_init(net, tx, model.shape,
                               lambda p: {"weighting": {}}),
                     jax.random.key(0))
  step = place.compile(functools.partial(
      _make_step, net, tx, OBJECTIVES.get("distill")(), specs, None), state)
  key = jax.random.key(1)
  state, step_s = _median_step_s(step, state, place.put_batch(stream[0]),
                                 key, steps)
  warm = 3
  batches, put = streams.iterate(stream, 0, warm + steps), place.put_batch
  if prefetch:
    batches, put = prefetch_to_device(batches, put, prefetch), (lambda b: b)
  sums = since = None
  for i, b in enumerate(batches):
    if i == warm:
      jax.block_until_ready(state)
      t0 = time.perf_counter()
    state, metrics = step(state, put(b), key)
    sums, since = accumulate(sums, since, metrics)
  jax.block_until_ready((state, sums))
  wall = time.perf_counter() - t0
  return {"model": model.name, "dtype": dtype, "batch": batch,
          "prefetch_to_device": prefetch,
          "loop_ms_per_step": 1e3 * wall / steps,
          "device_step_ms": 1e3 * step_s,
          "idle_percent": max(0.0, 100 * (1 - steps * step_s / wall))}


def loop_benchmarks(tiny: bool, workdir: str, deadline: float) -> dict:
  dtype = "float32" if tiny else "bfloat16"
  cases = models_to_check(tiny)[:2]  # The quickstart student, an image CNN.
  batches = (16,) if tiny else (128, 256)
  rows, skipped = [], []
  for model, batch in zip(cases, batches, strict=True):
    for prefetch in (0, 2):
      if time.monotonic() > deadline:
        skipped.append(f"{model.name} prefetch {prefetch}: time budget")
        continue
      rows.append(loop_idle(model, dtype, batch, 10 if tiny else 200,
                            prefetch, os.path.join(
                                workdir, f"cache_{model.name}_{prefetch}")))
  return {"rows": rows, "skipped": skipped}


# ------------------------------------------------------------- host input


def host_input(tiny: bool, deadline: float) -> dict:
  """Decode + host augmentation in Grain's threads on this host's cores:
  how many a device step rate needs (issue: the input is never the
  bottleneck). Rates per thread count; `per_thread` at the largest."""
  from experiments.bench_host_input import AUGMENTS, worker_decode_rate
  cores = os.cpu_count() or 1
  threads = sorted({1, max(1, cores // 2), cores}) if not tiny else [1, 2]
  cases = ((32, "PNG", "pad-crop 4 + flip", 128),
           (224, "JPEG", "resized crop + flip + RandAugment(2, 9)", 32))
  rows, skipped = [], []
  for size, fmt, augment, batch in cases:
    for t in threads:
      if time.monotonic() > deadline:
        skipped.append(f"host input {size}px, {t} threads: time budget")
        continue
      n = 64 if tiny else 2048 if size == 32 else 512
      rate = worker_decode_rate(size, fmt, AUGMENTS[augment], n,
                                8 if tiny else batch, 2 if tiny else 40, t)
      rows.append({"images": f"{size}x{size} {fmt}", "augment": augment,
                   "threads": t, "images_per_s": rate,
                   "per_thread": rate / t})
  return {"rows": rows, "skipped": skipped, "cores": cores}


# ----------------------------------------------------------------- output


def _fmt(x, digits: int = 1) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return ""
  return f"{x:,.{digits}f}" if isinstance(x, float) else str(x)


def markdown(report: dict) -> str:
  from experiments.report import markdown as table
  env = report["environment"]
  lines = [f"Accelerator check, {env['date']}: {env['device_count']} x "
           f"{env['device_kind']} ({env['platform']}), jax "
           f"{env['versions']['jax']}, peak bf16 {env['peak_bf16_tflops']:g}"
           f" TFLOP/s ({env['peak_source']}).", ""]
  lines += [table(["check", "ok", "detail", "s"], [
      [c["check"], "yes" if c["ok"] else "**NO**", c["detail"],
       _fmt(c["seconds"])] for c in report["correctness"]]), ""]
  keys = ("model", "dtype", "batch", "mode", "examples_per_s", "step_ms",
          "gflop_per_step", "tflops", "mfu_percent", "program_mib",
          "compile_s")
  lines += [table(list(keys), [[_fmt(r[k], 3 if k in (
      "step_ms", "tflops", "gflop_per_step", "compile_s") else 1)
                                for k in keys]
                               for r in report["steps"]["rows"]]), ""]
  keys = ("model", "dtype", "batch", "prefetch_to_device", "loop_ms_per_step",
          "device_step_ms", "idle_percent")
  lines += [table(list(keys), [[_fmt(r[k], 2) for k in keys]
                               for r in report["loop"]["rows"]]), ""]
  host = report.get("host_input", {"rows": [], "skipped": []})
  keys = ("images", "augment", "threads", "images_per_s", "per_thread")
  lines += [f"Host input (decode + augmentation in Grain's threads, "
            f"{host.get('cores')} cores; threads needed for a device rate R "
            "= R / per_thread):", "",
            table(list(keys), [[_fmt(r[k]) for k in keys]
                               for r in host["rows"]])]
  skipped = (report["steps"]["skipped"] + report["loop"]["skipped"]
             + host["skipped"])
  if skipped:
    lines += ["", "Skipped: " + "; ".join(skipped) + "."]
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  missing = missing_modules([*REQUIRED, *_REQUIRE.value])
  if missing:
    print(f"accelerator_check: missing module(s) {missing}. On a machine "
          "without network, bring them as wheels (README.md, "
          "'Accelerators'): pip download --only-binary=:all: "
          "--python-version 3.12 -d wheels <packages>, then pip install "
          "--no-index --find-links wheels <packages> there.",
          file=sys.stderr)
    sys.exit(2)
  if not _OUT.value:
    raise app.UsageError("--out is required.")
  import jax
  if _TINY.value:
    jax.config.update("jax_platforms", "cpu")
  start = time.monotonic()
  os.makedirs(_OUT.value, exist_ok=True)
  report = {"command": " ".join(sys.argv), "tiny": _TINY.value,
            "environment": environment(_PEAK.value)}
  print(json.dumps(report["environment"], indent=1), flush=True)
  with tempfile.TemporaryDirectory() as work:
    report["correctness"] = correctness(work, _TINY.value)
    deadline = start + _BUDGET.value
    report["steps"] = step_benchmarks(
        _TINY.value, report["environment"]["peak_bf16_tflops"], deadline)
    report["loop"] = loop_benchmarks(_TINY.value, work, deadline)
    report["host_input"] = host_input(_TINY.value, deadline)
  report["wall_s"] = round(time.monotonic() - start, 1)
  with open(os.path.join(_OUT.value, "accelerator_check.json"), "w") as f:
    json.dump(report, f, indent=1)
  text = markdown(report)
  with open(os.path.join(_OUT.value, "accelerator_check.md"), "w") as f:
    f.write(text)
  print(text + f"\nWall time {report['wall_s']} s; wrote {_OUT.value}.")
  sys.exit(0 if all(c["ok"] for c in report["correctness"]) else 1)


if __name__ == "__main__":
  app.run(main)
