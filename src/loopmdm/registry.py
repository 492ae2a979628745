"""A tiny registry: variants (noise schedules, loop distributions, objectives, data sources, samplers, loop
policies, unmasking orders, metrics) register by name; ``build`` instantiates one from user options."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, Optional, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a class (or factory). `REG.register("name")` decorates; `REG.get("name")` looks up."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from YAML, e.g. a list
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, name: str) -> bool:
        try:
            return name in self._items
        except TypeError:
            return False


def build(registry: Registry, name: str, options: Optional[dict]) -> Any:
    """Instantiate ``registry[name](**options)`` with one-line errors for unknown names and options."""
    cls = registry.get(name)
    if options is not None and not isinstance(options, dict):
        raise ConfigError(
            f"{registry.kind} options must be a dict of name -> value, got {type(options).__name__}"
        )
    options = dict(options or {})
    params = inspect.signature(cls.__init__).parameters.values()
    known = [
        p.name
        for p in params
        if p.name != "self"  # not object.__init__'s *args / **kwargs
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = [k for k in options if k not in known]
    if unknown:
        # the variants that do take it, if any
        hint = getattr(cls, "option_hints", {}).get(unknown[0])
        raise ConfigError(
            f"unknown option {unknown[0]!r} for {registry.kind} {name!r}; "
            f"valid options: {', '.join(known) or '(none)'}" + (f" ({hint})" if hint else "")
        )
    return cls(**options)
