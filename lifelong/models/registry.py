"""One registry: model name -> (architecture config dataclass, module class).

Configs are frozen dataclasses; building one from a dict rejects unknown keys by name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

_REGISTRY: dict[str, "Entry"] = {}


@dataclass(frozen=True)
class Entry:
    config: type
    module: type


def register(name: str, config: type) -> Callable[[type], type]:
    def deco(module: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' registered twice")
        _REGISTRY[name] = Entry(config, module)
        return module
    return deco


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def entry(name: str) -> Entry:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model '{name}'; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def make_config(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """Frozen dataclass from a dict; unknown keys are errors naming `where`; lists become tuples."""
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def model_config(name: str, values: dict[str, Any] | None = None) -> Any:
    return make_config(entry(name).config, values, f"model '{name}' config")


def _load_all() -> None:
    # Importing the model package registers every model once.
    import lifelong.models.zoo  # noqa: F401
