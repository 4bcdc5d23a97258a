"""Behaviour-log schema: the one table every loader produces and every stage reads.

A behaviour log is one row per user event:

| column      | type    | meaning                                                        |
|-------------|---------|----------------------------------------------------------------|
| user_id     | int64   | user, contiguous 1..n_users (0 is reserved)                     |
| item_id     | int64   | item, contiguous 1..n_items (0 is padding)                      |
| category_id | int64   | item category, contiguous 1..n_categories (0 is padding)        |
| timestamp   | int64   | unix seconds                                                   |
| label       | int8    | CTR label of the event (1 click/positive, 0 not)                |
| behavior    | int8    | optional behaviour type (dataset specific code, e.g. Taobao pv=0) |
| dwell       | float32 | optional cross feature (e.g. dwell time); NaN is an error       |
| basket_id   | int64   | optional visit / basket (events of one basket share a timestamp) |

Vocabulary sizes travel with the log in a `LogMeta` (written as `meta.json` beside Parquet).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

REQUIRED = {
    "user_id": pa.int64(),
    "item_id": pa.int64(),
    "category_id": pa.int64(),
    "timestamp": pa.int64(),
    "label": pa.int8(),
}
OPTIONAL = {"behavior": pa.int8(), "dwell": pa.float32(), "basket_id": pa.int64()}
ID_COLUMNS = ("user_id", "item_id", "category_id")


class LogSchemaError(ValueError):
    """A behaviour log does not match the schema; the message names the source and column."""


@dataclass(frozen=True)
class LogMeta:
    """Vocabulary sizes (max id, ids are 1..n) and provenance of a behaviour log."""

    name: str
    n_users: int
    n_items: int
    n_categories: int
    synthetic: bool = False

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "LogMeta":
        return cls(**json.loads(Path(path).read_text()))


def validate_log(table: pa.Table, source: str, meta: LogMeta | None = None) -> pa.Table:
    """Check columns, types, emptiness, id ranges and NaNs; return the table cast to the schema.

    Raises LogSchemaError naming `source` and the offending column. Extra columns are errors too:
    an unexpected column usually means the wrong file was passed.
    """
    if table.num_rows == 0:
        raise LogSchemaError(f"{source}: behaviour log is empty")
    names = set(table.column_names)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise LogSchemaError(f"{source}: missing column(s) {missing}; have {sorted(names)}")
    extra = sorted(names - set(REQUIRED) - set(OPTIONAL))
    if extra:
        raise LogSchemaError(f"{source}: unexpected column(s) {extra}")
    cols = []
    for name in table.column_names:
        want = REQUIRED.get(name) or OPTIONAL[name]
        col = table.column(name)
        if col.null_count:
            raise LogSchemaError(f"{source}: column '{name}' has {col.null_count} null value(s)")
        if col.type != want:
            if not _castable(col.type, want):
                raise LogSchemaError(f"{source}: column '{name}' has type {col.type}, expected {want}")
            try:
                col = col.cast(want)  # safe cast: overflow or fractional values raise
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise LogSchemaError(f"{source}: column '{name}' cannot be cast to {want}: {e}") from e
        cols.append(col)
    table = pa.table(cols, names=table.column_names)
    if "dwell" in names:
        dwell = table.column("dwell").to_numpy()
        if np.isnan(dwell).any():
            raise LogSchemaError(f"{source}: column 'dwell' has {int(np.isnan(dwell).sum())} NaN value(s)")
    labels = table.column("label").to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise LogSchemaError(f"{source}: column 'label' must be 0/1")
    limits = {} if meta is None else {
        "user_id": meta.n_users, "item_id": meta.n_items, "category_id": meta.n_categories}
    for name in ID_COLUMNS:
        ids = table.column(name).to_numpy()
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 1:
            raise LogSchemaError(f"{source}: column '{name}' has id {lo} < 1 (0 is padding)")
        if name in limits and hi > limits[name]:
            raise LogSchemaError(f"{source}: column '{name}' has id {hi} > vocabulary size {limits[name]}")
    return table


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    if pa.types.is_integer(dst):
        return pa.types.is_integer(src)
    if pa.types.is_floating(dst):
        return pa.types.is_integer(src) or pa.types.is_floating(src)
    return False
