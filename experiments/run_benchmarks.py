"""Runs every benchmark under experiments/ and prints their tables.

Each benchmark runs in its own process (`python -m experiments.<name>`,
from the repository root), one after the other (they time things, so never
in parallel); a failing one is reported and the rest go on. `--quick`
shrinks every benchmark's sizes (a smoke run, numbers not for quoting). The
torch comparison skips itself, with a message, when torch is not installed
(experiments/requirements.txt).

Run (from the repository root):
  .venv/bin/python -m experiments.run_benchmarks            # 20 min at load 10
  .venv/bin/python -m experiments.run_benchmarks --quick    # ~4 min
  .venv/bin/python -m experiments.run_benchmarks --only=bench_scaling
"""

import os
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

_QUICK = flags.DEFINE_bool("quick", False, "Small sizes in every benchmark.")
_ONLY = flags.DEFINE_list(
    "only", [], "Script names (without .py) to run, comma-separated.")

# (script, full-run argument lists, quick-run argument lists); any other
# experiments/bench_*.py runs too, without arguments (with --quick in a quick
# run if it defines that flag).
BENCHMARKS = [
    ("bench_cache_formats.py",
     [[], ["--num_examples=20000", "--num_classes=1000"]],
     [["--smoke"], ["--smoke", "--num_classes=1000"]]),
    ("bench_cache_storage.py", [[]], [["--quick"]]),
    ("bench_sparse_tails.py", [[]], [["--quick"]]),
    ("bench_student_loop.py", [[]], [["--steps=50"]]),
    ("bench_input_pipeline.py", [[]], [["--quick"]]),
    ("bench_torch_vs_jax.py", [[]], [["--quick"]]),
    ("bench_scaling.py", [[]], [["--quick"]]),
]


def discovered() -> list[tuple[str, list, list]]:
  """bench_*.py scripts not listed in BENCHMARKS, with default arguments."""
  known = {script for script, _, _ in BENCHMARKS}
  out = []
  for script in sorted(os.listdir(HERE)):
    if script.startswith("bench_") and script.endswith(".py") and (
        script not in known and script != "bench_common.py"):
      with open(os.path.join(HERE, script)) as f:
        quick = ["--quick"] if 'DEFINE_bool("quick"' in f.read() else []
      out.append((script, [[]], [quick]))
  return out


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  only = {s.removesuffix(".py") for s in _ONLY.value if s}
  failed, t_all = [], time.perf_counter()
  for script, full, quick in BENCHMARKS + discovered():
    name = script.removesuffix(".py")
    if only and name not in only:
      continue
    for args in quick if _QUICK.value else full:
      cmd = [sys.executable, "-m", f"experiments.{name}", *args]
      shown = " ".join(["python -m", f"experiments.{name}", *args])
      print(f"\n=== {shown}", flush=True)
      t0 = time.perf_counter()
      rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
      print(f"=== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
            f"{time.perf_counter() - t0:.0f} s", flush=True)
      if rc:
        failed.append(shown)
  print(f"\nall benchmarks: {time.perf_counter() - t_all:.0f} s; "
        + (f"{len(failed)} failed: {'; '.join(failed)}" if failed
           else "none failed"))
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  app.run(main)
