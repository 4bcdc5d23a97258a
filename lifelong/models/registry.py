"""One registry: model name -> (architecture config dataclass, module class).

Configs are frozen dataclasses; building one from a dict (`lifelong.config.make_config`) rejects
unknown keys by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lifelong.config import make_config

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


def model_config(name: str, values: dict[str, Any] | None = None) -> Any:
    return make_config(entry(name).config, values, f"model '{name}' config")


def _load_all() -> None:
    # Importing the model package registers every model once.
    import lifelong.models.zoo  # noqa: F401
