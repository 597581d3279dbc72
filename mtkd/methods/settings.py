"""Plug-in settings: each objective and weighting owns one config block.

A plug-in declares `default_settings`; the block it receives overrides
them, unknown keys are refused, and `check` names the offending key, so
every bad value fails at construction, before anything compiles.
"""

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from mtkd import configs_util
from mtkd.errors import UserError


def settings_namespace(owner: str, defaults: Mapping[str, Any],
                       given: Mapping | None) -> SimpleNamespace:
  """`defaults` overridden by `given` (a config block); unknown keys are an
  error naming `owner` (e.g. 'config.dkd')."""
  given = configs_util.to_dict(given or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise UserError(f"{owner} has unknown key(s) {unknown}; known: "
                    f"{sorted(defaults)}.")
  return SimpleNamespace(**{**defaults, **given})


def check(ok: bool, owner: str, key: str, value, want: str) -> None:
  """Raises a UserError naming `owner.key` unless `ok`."""
  if not ok:
    raise UserError(f"{owner}.{key} is {value!r}; {want}.")
