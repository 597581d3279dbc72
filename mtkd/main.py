"""Command-line entry point: parses flags and the config, then runs.

  python -m mtkd.main --config=configs/quickstart.py --workdir=/tmp/qs
  python -m mtkd.main --config=configs/quickstart.py:smoke --workdir=/tmp/s \
      --config.student.steps=100
  python -m mtkd.main --config=configs/quickstart.py --workdir=/tmp/qs --verify
"""

import difflib
import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mtkd import configs_util
from mtkd.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, optionally with ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all outputs.")
_VERIFY = flags.DEFINE_bool(
    "verify", False, "Check every artifact in --workdir (checkpoints, caches, "
    "results) without training; exit 1 if any problem is found.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume stages whose checkpoints were "
    "written with different result-affecting settings.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  # Import jax after flag parsing.
  from mtkd import distributed, experiment
  from mtkd.stages import verify
  from mtkd.train import preemption
  try:
    if _VERIFY.value:
      problems = verify.verify_workdir(_CONFIG.value, _WORKDIR.value)
      for p in problems:
        print(f"PROBLEM: {p}")
      print(f"mtkd --verify: {len(problems)} problem(s) in {_WORKDIR.value}.")
      sys.exit(1 if problems else 0)
    distributed.initialize(_CONFIG.value.parallel)
    preemption.install()  # After initialize, which installs its own handler.
    experiment.run(_CONFIG.value, _WORKDIR.value,
                   allow_config_change=_ALLOW_CHANGE.value)
  except UserError as e:
    print(f"\nmtkd: error: {e}", file=sys.stderr)
    sys.exit(2)
  except preemption.Preempted as e:
    print(f"\nmtkd: stopped by {e.signal_name} at {e.where}; a checkpoint was "
          "saved. Re-run the same command to resume.", file=sys.stderr)
    sys.exit(128 + getattr(signal, e.signal_name))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; a config file or override that cannot be applied
  is one paragraph on stderr and exit status 2, not a traceback."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.keys()  # A failed load raises on first use: here.
    return rest
  except flags.Error as e:  # A value of the wrong type, a missing flag.
    print(f"mtkd: error: {e}. Flags: python -m mtkd.main --helpfull.",
          file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # noqa: BLE001 - ml_collections raises many types.
    print(f"mtkd: error: {config_flag_error(argv, e)}", file=sys.stderr)
    sys.exit(2)


def config_flag_error(argv: list[str], error: Exception) -> str:
  """What went wrong with `--config` or a `--config.KEY=...` override."""
  spec = next((a[len("--config="):] for a in argv
               if a.startswith("--config=")), "")
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    return (f"The config file {path!r} does not exist (--config={spec}). "
            "Fix: pass a get_config() file, e.g. "
            "--config=configs/quickstart.py.")
  try:
    keys = set(configs_util.flatten(configs_util.to_dict(
        configs_util.load_config(path, arg or None))))
  except Exception:  # noqa: BLE001 - the file itself failed to load.
    return f"Loading {path} failed: {type(error).__name__}: {error}"
  for arg in argv:
    key = arg[len("--config."):].split("=")[0] if arg.startswith(
        "--config.") else ""
    if key and key not in keys and not any(k.startswith(key + ".")
                                           for k in keys):
      near = _near(key, keys)
      hint = (" Did you mean " + " or ".join(f"--config.{k}" for k in near)
              + "?") if near else ""
      return (f"--config.{key} is not a key of this config.{hint} Every key, "
              "with a comment, is in mtkd/defaults.py (objective and "
              "weighting settings in their classes in mtkd/methods/).")
  return f"Applying the config overrides failed: {type(error).__name__}: {error}"


def _near(key: str, keys: set[str]) -> list[str]:
  """Up to three keys a typo most likely meant: same-looking last part
  first (a typo'd leaf may sit at the wrong level), then the whole key."""
  leaves = {k.rsplit(".", 1)[-1] for k in keys}
  close = set(difflib.get_close_matches(key.rsplit(".", 1)[-1], leaves, n=3,
                                        cutoff=0.75))
  by_leaf = [k for k in keys if k.rsplit(".", 1)[-1] in close]
  pool = by_leaf or difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
  return sorted(pool, key=lambda k: (
      -difflib.SequenceMatcher(None, key, k).ratio(), len(k), k))[:3]


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
