"""Runs every benchmark under experiments/ and prints their tables.

Each benchmark runs in its own process, one after the other (they time
things, so never in parallel); a failing one is reported and the rest go on.
`--quick` shrinks every benchmark's sizes (a smoke run, numbers not for
quoting). The torch comparison skips itself, with a message, when torch is
not installed (experiments/requirements.txt).

Run (from the repository root):
  .venv/bin/python experiments/run_benchmarks.py            # 20 min at load 10
  .venv/bin/python experiments/run_benchmarks.py --quick    # ~4 min
  .venv/bin/python experiments/run_benchmarks.py --only=bench_scaling
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# (script, full-run argument lists, quick-run argument lists); any other
# experiments/bench_*.py runs too, without arguments (with --quick in a quick
# run if its source mentions that flag).
BENCHMARKS = [
    ("bench_cache_formats.py",
     [[], ["--num_examples=20000", "--num_classes=1000"]],
     [["--smoke"], ["--smoke", "--num_classes=1000"]]),
    ("bench_cache_storage.py", [[]], [["--quick"]]),
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
        script not in known):
      with open(os.path.join(HERE, script)) as f:
        quick = ["--quick"] if '"--quick"' in f.read() else []
      out.append((script, [[]], [quick]))
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true",
                 help="small sizes in every benchmark")
  p.add_argument("--only", default="",
                 help="comma-separated script names (without .py) to run")
  a = p.parse_args()
  only = {s.removesuffix(".py") for s in a.only.split(",") if s}
  failed, t_all = [], time.perf_counter()
  for script, full, quick in BENCHMARKS + discovered():
    if only and script.removesuffix(".py") not in only:
      continue
    for args in quick if a.quick else full:
      cmd = [sys.executable, os.path.join(HERE, script), *args]
      shown = " ".join(["python", f"experiments/{script}", *args])
      print(f"\n=== {shown}", flush=True)
      t0 = time.perf_counter()
      rc = subprocess.run(cmd, check=False).returncode
      print(f"=== {script}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
            f"{time.perf_counter() - t0:.0f} s", flush=True)
      if rc:
        failed.append(shown)
  print(f"\nall benchmarks: {time.perf_counter() - t_all:.0f} s; "
        + (f"{len(failed)} failed: {'; '.join(failed)}" if failed
           else "none failed"))
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
