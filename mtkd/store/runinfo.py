"""What a workdir records about the run that produced it."""

import importlib.metadata
import json
import os
import subprocess
import sys

import jax

from mtkd import configs_util

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
            "ml-collections", "absl-py", "numpy", "tensorboardX")


def versions() -> dict[str, str]:
  out = {"python": sys.version.split()[0]}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def git_commit() -> str:
  """HEAD of the repo holding mtkd, with `-dirty` if it has local changes."""
  src = os.path.dirname(os.path.abspath(__file__))
  try:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, check=True,
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "."],
                           cwd=os.path.dirname(src), capture_output=True,
                           text=True).stdout.strip()
    return sha + ("-dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def write(workdir: str, config, argv: list[str] | None = None) -> None:
  """Writes config.json, command.txt, versions.json and git.txt (process 0)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  files = {
      "config.json": json.dumps(configs_util.to_dict(config), indent=1,
                                sort_keys=True),
      "command.txt": " ".join(argv if argv is not None else sys.argv),
      "versions.json": json.dumps(versions(), indent=1),
      "git.txt": git_commit(),
  }
  for name, text in files.items():
    with open(os.path.join(workdir, name), "w") as f:
      f.write(text + "\n")
