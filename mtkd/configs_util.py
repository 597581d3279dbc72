"""Helpers for configs: arg parsing, flattening, and stage-config diffs."""

import hashlib
import importlib.util
import json
from collections.abc import Mapping
from typing import Any


def parse_arg(arg: str | None, **defaults) -> dict[str, Any]:
  """Parses `"smoke,seed=3"` into `{"smoke": True, "seed": 3, ...}`.

  Bare words are booleans; values are cast to the type of their default.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in out:
      raise ValueError(f"Unknown config arg {key!r}; known: {sorted(out)}.")
    if not eq:
      out[key] = True
    elif isinstance(out[key], bool):
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = type(out[key])(value)
  return out


def to_dict(cfg: Any) -> Any:
  """ConfigDict / tuples -> plain JSON-able dicts and lists."""
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  if isinstance(cfg, Mapping):
    return {str(k): to_dict(v) for k, v in cfg.items()}
  if isinstance(cfg, list | tuple):
    return [to_dict(v) for v in cfg]
  return cfg


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping) and v:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def diff(a: Mapping, b: Mapping) -> list[str]:
  """Dotted keys whose values differ between two nested dicts."""
  fa, fb = flatten(to_dict(a)), flatten(to_dict(b))
  return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def fingerprint(d: Any) -> str:
  return hashlib.sha256(json.dumps(to_dict(d), sort_keys=True).encode()
                        ).hexdigest()[:16]


def load_config(path: str, arg: str | None = None):
  """`get_config(arg)` of a config file, as `--config=path[:arg]` loads it
  (without locking)."""
  spec = importlib.util.spec_from_file_location("_mtkd_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()
