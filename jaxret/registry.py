"""A tiny name -> constructor registry (one per kind: encoder, head, loss)."""
from typing import Callable, Generic, TypeVar

from jaxret.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to objects; unknown names fail with the list of valid ones."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def decorator(obj: T) -> T:
      if name in self._entries:
        raise KeyError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      return obj
    return decorator

  def get(self, name: str) -> T:
    if name not in self._entries:
      raise ConfigError(
          f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._entries))}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
