"""Config dataclasses from plain dicts, for every layer (run files, data, samples, models, training)."""
from __future__ import annotations

import dataclasses
from typing import Any


def make_config(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """Frozen dataclass from a dict; unknown keys are errors naming `where`; lists become tuples."""
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
