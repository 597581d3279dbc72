"""A name -> object registry, so configs pick components by string."""

from collections.abc import Callable
from typing import Generic, TypeVar

from mtkd.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to objects; unknown names fail with the list of known ones."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def decorator(obj: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice.")
      self._items[name] = obj
      return obj
    return decorator

  def get(self, name: str) -> T:
    try:
      return self._items[name]
    except KeyError:
      raise UserError(
          f"Unknown {self.kind} {name!r}. Known {self.kind}s: "
          f"{', '.join(sorted(self._items))}. Fix the name in the config."
      ) from None

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items
