"""Loaders from public log formats to the behaviour-log schema (`data/schema.py`).

Each loader returns `(table, meta, dropped)` where `dropped` maps a reason to a row count:
rows are never dropped silently. Raw ids are remapped to contiguous 1..n (0 = padding) in
order of first appearance after sorting, so the same file always gives the same ids.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lifelong.data.schema import LogMeta, LogSchemaError, validate_log

Loaded = tuple[pa.Table, LogMeta, dict[str, int]]

# Official Taobao UserBehavior window, 2017-11-25 00:00:00 .. 2017-12-03 23:59:59 (UTC+8).
TAOBAO_WINDOW = (1511539200, 1512316799)
TAOBAO_BEHAVIORS = ("pv", "cart", "fav", "buy")


def _read_csv(data: bytes | str | Path, source: str, names: list[str] | None,
              types: dict[str, pa.DataType]) -> pa.Table:
    read = pacsv.ReadOptions(column_names=names) if names else pacsv.ReadOptions()
    conv = pacsv.ConvertOptions(column_types=types, include_columns=list(types) if names is None else None)
    stream = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    try:
        table = pacsv.read_csv(stream, read_options=read, convert_options=conv)
    except pa.ArrowKeyError as e:  # a wanted column is absent
        raise LogSchemaError(f"{source}: missing column: {e}") from e
    except pa.ArrowInvalid as e:  # names the column and the bad value
        raise LogSchemaError(f"{source}: {e}") from e
    if table.num_rows == 0:
        raise LogSchemaError(f"{source}: file has no rows")
    missing = [c for c in types if c not in table.column_names]
    if missing:
        raise LogSchemaError(f"{source}: missing column(s) {missing}")
    return table


def remap(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Raw ids -> contiguous 1..n in sorted order of raw id; returns (new ids, n)."""
    uniq, inv = np.unique(ids, return_inverse=True)
    return (inv + 1).astype(np.int64), len(uniq)


def load_movielens(path: str | Path, click_threshold: float = 4.0) -> Loaded:
    """MovieLens ratings.csv + movies.csv (a directory or the official zip).

    label = rating >= click_threshold; category = the movie's first listed genre; `behavior` = the
    label too (1 liked, 0 not), so `samples.history_behaviors: [1]` builds histories of liked movies
    only (each strictly before its sample, so no sample sees its own label).
    """
    path = Path(path)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            members = {Path(n).name: n for n in zf.namelist()}
            for need in ("ratings.csv", "movies.csv"):
                if need not in members:
                    raise LogSchemaError(f"{path}: zip has no {need}")
            ratings_src, movies_src = f"{path}!ratings.csv", f"{path}!movies.csv"
            ratings_data, movies_data = zf.read(members["ratings.csv"]), zf.read(members["movies.csv"])
    else:
        ratings_src, movies_src = str(path / "ratings.csv"), str(path / "movies.csv")
        ratings_data, movies_data = path / "ratings.csv", path / "movies.csv"
    ratings = _read_csv(ratings_data, ratings_src, None, {
        "userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()})
    movies = _read_csv(movies_data, movies_src, None, {"movieId": pa.int64(), "genres": pa.string()})
    genre = pc.list_element(pc.split_pattern(movies.column("genres"), "|"), 0).to_numpy(zero_copy_only=False)
    movie_ids = movies.column("movieId").to_numpy()
    raw_items = ratings.column("movieId").to_numpy()
    order = np.argsort(movie_ids)
    sorted_ids = movie_ids[order]
    pos = np.minimum(np.searchsorted(sorted_ids, raw_items), len(sorted_ids) - 1)
    found = sorted_ids[pos] == raw_items
    if not found.all():
        bad = np.unique(raw_items[~found])[:5]
        raise LogSchemaError(f"{ratings_src}: column 'movieId' has ids not in {movies_src}: {bad.tolist()}")
    cat_names = genre[order][pos]
    users, n_users = remap(ratings.column("userId").to_numpy())
    items, n_items = remap(raw_items)
    cats, n_cats = remap(cat_names)
    liked = (ratings.column("rating").to_numpy() >= click_threshold).astype(np.int8)
    table = pa.table({
        "user_id": users, "item_id": items, "category_id": cats,
        "timestamp": ratings.column("timestamp"), "label": liked, "behavior": liked,
    })
    meta = LogMeta("movielens", n_users, n_items, n_cats)
    return validate_log(table, ratings_src, meta), meta, {}


def load_taobao(path: str | Path, window: tuple[int, int] | None = TAOBAO_WINDOW) -> Loaded:
    """Taobao UserBehavior CSV (no header: user,item,category,behavior,timestamp).

    label = behaviour is cart/fav/buy (an engagement beyond a page view); `behavior` keeps the
    type (pv=0, cart=1, fav=2, buy=3). Rows outside the official window are dropped and counted.
    """
    src = str(path)
    t = _read_csv(Path(path), src, ["user_id", "item_id", "category_id", "behavior", "timestamp"], {
        "user_id": pa.int64(), "item_id": pa.int64(), "category_id": pa.int64(),
        "behavior": pa.string(), "timestamp": pa.int64()})
    beh = t.column("behavior").to_numpy(zero_copy_only=False)
    code = np.full(len(beh), -1, np.int8)
    for i, name in enumerate(TAOBAO_BEHAVIORS):
        code[beh == name] = i
    if (code < 0).any():
        bad = sorted(set(beh[code < 0].tolist()))[:5]
        raise LogSchemaError(f"{src}: column 'behavior' has unknown value(s) {bad}; expected {TAOBAO_BEHAVIORS}")
    ts = t.column("timestamp").to_numpy()
    keep = np.ones(len(ts), bool) if window is None else (ts >= window[0]) & (ts <= window[1])
    dropped = {"timestamp outside official window": int((~keep).sum())} if window else {}
    if not keep.any():
        raise LogSchemaError(f"{src}: no rows inside the window {window}")
    users, n_users = remap(t.column("user_id").to_numpy()[keep])
    items, n_items = remap(t.column("item_id").to_numpy()[keep])
    cats, n_cats = remap(t.column("category_id").to_numpy()[keep])
    table = pa.table({
        "user_id": users, "item_id": items, "category_id": cats, "timestamp": ts[keep],
        "label": (code[keep] > 0).astype(np.int8), "behavior": code[keep],
    })
    meta = LogMeta("taobao", n_users, n_items, n_cats)
    return validate_log(table, src, meta), meta, dropped


def load_parquet_log(path: str | Path) -> Loaded:
    """A behaviour log already in the schema: one Parquet file with `meta.json` beside it, or a
    directory of `*.parquet` part files with `meta.json` inside it (see the README's log format)."""
    path = Path(path)
    if not path.exists():
        raise LogSchemaError(f"{path}: not found (a Parquet file, or a directory of *.parquet files)")
    meta_path = (path if path.is_dir() else path.parent) / "meta.json"
    if not meta_path.exists():
        raise LogSchemaError(f"{path}: no meta.json {'inside' if path.is_dir() else 'beside'} the Parquet log "
                             '(vocabulary sizes: {"name", "n_users", "n_items", "n_categories"})')
    meta = LogMeta.load(meta_path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise LogSchemaError(f"{path}: directory holds no *.parquet files")
    try:
        table = pa.concat_tables([pq.read_table(f) for f in files])
    except (pa.ArrowInvalid, OSError) as e:
        raise LogSchemaError(f"{path}: cannot read Parquet: {e}") from e
    return validate_log(table, str(path), meta), meta, {}


LOADERS: dict[str, Callable[..., Loaded]] = {
    "movielens": load_movielens,
    "taobao": load_taobao,
    "parquet": load_parquet_log,
}
