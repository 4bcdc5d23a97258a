"""Leakage-free CTR samples from a behaviour log, built with Ray Data.

A sample is one event (the target) plus the user's history strictly before its timestamp:
events at the same second are excluded (their order is unknowable), so no sample ever sees its
own or a later event. Within a user, events are ordered by (timestamp, item_id, category_id,
behavior): ties are broken deterministically. Samples are split by time with global cutoffs.

The train split is written in a seeded random order (`SampleConfig.shuffle_seed`), valid and test
grouped by user. Columns written (Parquet, one directory per split):
user_id, item_id, category_id, timestamp, label (target) and, in the "copy" layout, hist_item,
hist_cat, hist_ts (list<int64>, the last `max_len` history events, oldest first). In the "store"
layout a sample holds only hist_end (how many of the user's history events precede it) and each
user's history is written once to a sequence store (`store/`, see `lifelong.data.store`), so
storage grows with events, not samples x L. The short history is the last `short_len` events and
is sliced at collate time, not stored twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

SPLITS = ("train", "valid", "test")
LAYOUTS = ("copy", "store")
STORE_DIR = "store"
HIST_COLUMNS = {"hist_item": "item_id", "hist_cat": "category_id", "hist_ts": "timestamp"}


@dataclass(frozen=True)
class SampleConfig:
    """How samples are cut from a log.

    sample_behaviors / history_behaviors: which `behavior` codes become samples / history
    (empty = all rows). split: train/valid fractions of sample timestamps (test takes the rest).
    """

    max_len: int = 256
    short_len: int = 50
    min_history: int = 1
    sample_behaviors: tuple[int, ...] = ()
    history_behaviors: tuple[int, ...] = ()
    split: tuple[float, float] = (0.8, 0.1)
    layout: str = "copy"  # "copy": histories inside every sample; "store": once per user, samples reference it
    shuffle_seed: int = 0  # the train split is written in one random order drawn with this seed (built once,
    #                        read as written every epoch: `train.shuffle`); valid and test keep the build order

    def __post_init__(self) -> None:
        if not (0 < self.short_len <= self.max_len):
            raise ValueError(f"need 0 < short_len ({self.short_len}) <= max_len ({self.max_len})")
        if self.min_history < 0:
            raise ValueError("min_history must be >= 0")
        if self.layout not in LAYOUTS:
            raise ValueError(f"samples.layout '{self.layout}' not in {LAYOUTS}")
        tr, va = self.split
        if not (0 < tr and 0 <= va and tr + va < 1):
            raise ValueError(f"split fractions {self.split} must be positive and sum below 1")



def _mask(table: pa.Table, codes: tuple[int, ...]) -> np.ndarray:
    if not codes:
        return np.ones(table.num_rows, bool)
    if "behavior" not in table.column_names:
        raise ValueError(f"behaviour filter {codes} needs a 'behavior' column")
    return np.isin(table.column("behavior").to_numpy(), codes)


def concat_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated aranges [s, e) and the offsets of each range: no Python loop over rows."""
    lengths = ends - starts
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - starts, lengths)
    return idx, offsets


def list_arrays(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (B+1,) relative to values, and the flat values of a list column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy()
    return offsets - offsets[0], values[offsets[0]:offsets[-1]]


def _sorted_history(events: pa.Table, cfg: SampleConfig) -> tuple[pa.Table, np.ndarray]:
    """One user's events in the deterministic order, and the positions of its history events."""
    cols = {c: events.column(c).to_numpy() for c in ("item_id", "category_id", "timestamp")}
    beh = events.column("behavior").to_numpy() if "behavior" in events.column_names else None
    tie = beh if beh is not None else np.zeros(events.num_rows, np.int8)
    order = np.lexsort((tie, cols["category_id"], cols["item_id"], cols["timestamp"]))
    events = events.take(order)
    return events, np.flatnonzero(_mask(events, cfg.history_behaviors))


def user_samples(events: pa.Table, cfg: SampleConfig, cutoffs: tuple[int, int]) -> pa.Table:
    """All samples of one user's events (any order in, deterministic order out)."""
    events, hist = _sorted_history(events, cfg)
    ts = events.column("timestamp").to_numpy()
    cand = np.flatnonzero(_mask(events, cfg.sample_behaviors))
    n_before = np.searchsorted(ts[hist], ts[cand], side="left")  # strictly earlier events only
    keep = n_before >= max(cfg.min_history, 0)
    cand, n_before = cand[keep], n_before[keep]
    cols = ("user_id", "item_id", "category_id", "timestamp", "label")
    out = {c: events.column(c).take(pa.array(cand)) for c in cols}
    if cfg.layout == "store":
        out["hist_end"] = pa.array(n_before.astype(np.int32))  # history = the store's first hist_end events
    else:
        start = np.maximum(n_before - cfg.max_len, 0)
        idx, offsets = concat_ranges(start, n_before)
        rows = hist[idx]  # positions (in sorted events) of each sample's history, concatenated
        for name, src in HIST_COLUMNS.items():
            values = events.column(src).take(pa.array(rows)).combine_chunks()
            out[name] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    t = ts[cand]
    split = np.where(t < cutoffs[0], 0, np.where(t < cutoffs[1], 1, 2)).astype(np.int8)
    out["split"] = pa.array(split)
    return pa.table(out)


def user_sequence(events: pa.Table, cfg: SampleConfig) -> pa.Table:
    """One store row: the user's whole history (oldest first), in the order samples count it."""
    events, hist = _sorted_history(events, cfg)
    out = {"user_id": pa.array([events.column("user_id")[0].as_py()], pa.int64())}
    for name, src in HIST_COLUMNS.items():
        values = events.column(src).take(pa.array(hist)).combine_chunks().cast(pa.int64())
        out[name] = pa.ListArray.from_arrays(pa.array([0, len(hist)], pa.int32()), values)
    return pa.table(out)


def split_cutoffs(log: pa.Table, cfg: SampleConfig) -> tuple[int, int]:
    """Global time cutoffs (train < c0 <= valid < c1 <= test) from candidate timestamps."""
    ts = log.column("timestamp").to_numpy()[_mask(log, cfg.sample_behaviors)]
    c0, c1 = np.quantile(ts, [cfg.split[0], cfg.split[0] + cfg.split[1]], method="higher")
    return int(c0), int(c1)


def count_candidates(log: pa.Table, cfg: SampleConfig) -> int:
    return int(_mask(log, cfg.sample_behaviors).sum())


def build_samples(log: pa.Table, cfg: SampleConfig, out_dir: str | Path, num_workers: int = 2) -> dict:
    """Ray Data job: log -> Parquet samples under out_dir/{train,valid,test}. Returns a report.

    The report counts samples per split and candidates dropped for having fewer than
    `min_history` earlier events, so no row disappears unreported.
    """
    import ray

    cutoffs = split_cutoffs(log, cfg)
    ds = ray.data.from_arrow(log).repartition(max(num_workers, 1))
    samples = ds.groupby("user_id", num_partitions=max(num_workers, 1)).map_groups(
        user_samples, fn_args=(cfg, cutoffs), batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=max(num_workers, 1)))
    out_dir = Path(out_dir)
    samples = samples.materialize()
    counts = {}
    for code, name in enumerate(SPLITS):
        part = samples.filter(expr=f"split == {code}").drop_columns(["split"])
        if name == "train":  # one global permutation, drawn here once instead of by every epoch's read
            part = part.random_shuffle(seed=cfg.shuffle_seed)
        part.write_parquet(str(out_dir / name), mode="overwrite")
        counts[name] = part.count()
    n_cand = count_candidates(log, cfg)
    n_samples = sum(counts.values())
    report = {"samples": counts, "candidates": n_cand, "layout": cfg.layout,
              "dropped": {"history shorter than min_history": n_cand - n_samples},
              "cutoffs": list(cutoffs)}
    if cfg.layout == "store":
        store = ds.groupby("user_id", num_partitions=max(num_workers, 1)).map_groups(
            user_sequence, fn_args=(cfg,), batch_format="pyarrow",
            compute=ray.data.TaskPoolStrategy(size=max(num_workers, 1)))
        store.write_parquet(str(out_dir / STORE_DIR), mode="overwrite")
    report["bytes"] = {d.name: sum(f.stat().st_size for f in d.rglob("*.parquet"))
                       for d in sorted(out_dir.iterdir()) if d.is_dir()}
    return report


def build_local(log: pa.Table, cfg: SampleConfig) -> pa.Table:
    """All samples of a log, built in-process with the same per-user function Ray Data runs
    (tests, small benchmarks); `build_samples` is the Ray Data path."""
    cutoffs = split_cutoffs(log, cfg)
    return _per_user(log, lambda events: user_samples(events, cfg, cutoffs))


def build_store_local(log: pa.Table, cfg: SampleConfig) -> pa.Table:
    """The sequence store of a log, in-process (`build_samples` writes it with Ray Data)."""
    return _per_user(log, lambda events: user_sequence(events, cfg))


def _per_user(log: pa.Table, fn) -> pa.Table:
    """fn over each user's events (what Ray Data's groupby + map_groups does), concatenated."""
    users = log.column("user_id").to_numpy()
    return pa.concat_tables([fn(log.filter(pa.array(users == u))) for u in np.unique(users)])
