"""Arrow sample batch -> `Batch` (a KeyedJaggedTensor plus dense side tensors).

Works on the Arrow list offsets and flat values with numpy: no Python loop over rows. The short
history is the last `short_len` events of the stored history; the long history is either all of
it or, with a prefilter (SIM-hard's category search), only the k events it selects, so the KJT
the trainer looks up holds only those ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import numpy as np
import pyarrow as pa
import torch
from ray.data.collate_fn import ArrowBatchCollateFn
from torchrec import KeyedJaggedTensor

from lifelong.data.samples import concat_ranges, list_arrays
from lifelong.data.store import SequenceStore
from lifelong.embeddings.batch import Batch, EvalBatch, Prefilter
from lifelong.embeddings.spec import GROUPS, TABLE_COLUMNS, USER, FeatureSpec, SideTable, feature_name, features


class FeatureRangeError(ValueError):
    """An id is outside its table; the message names the feature."""


def tail(offsets: np.ndarray, n: int) -> tuple[Optional[np.ndarray], np.ndarray]:
    """Flat positions of the last n elements of each row, and their offsets; positions are None
    when that is every element (no row is longer than n)."""
    if len(offsets) < 2 or np.diff(offsets).max() <= n:
        return None, offsets
    return concat_ranges(np.maximum(offsets[:-1], offsets[1:] - n), offsets[1:])


def take(values: np.ndarray, idx: Optional[np.ndarray | tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """values[idx]; values itself when idx is None (all of them); for idx = (starts, stops), the
    ranges [start, stop) one after the other (slices copied, ~2x a gather's speed at 10^4 per row)."""
    if idx is None:
        return values
    if isinstance(idx, tuple):
        return np.concatenate([values[a:b] for a, b in zip(*idx)] or [values[:0]])
    return values[idx]


def last_ranges(starts: np.ndarray, stops: np.ndarray, n: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The ranges of the last n elements of each range [start, stop), and their offsets (B+1,)."""
    first = np.maximum(starts, stops - n)
    offsets = np.zeros(len(stops) + 1, np.int64)
    np.cumsum(stops - first, out=offsets[1:])
    return (first, stops), offsets


def pad(values: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """Jagged (values, offsets) -> (B, width) left-aligned, zero padded."""
    lengths = np.diff(offsets)
    out = np.zeros((len(lengths), width), values.dtype)
    out[np.arange(width) < lengths[:, None]] = values  # row-major, as the jagged values are
    return out


def padded(values: np.ndarray, idx: Optional[np.ndarray | tuple[np.ndarray, np.ndarray]], offsets: np.ndarray,
           width: int) -> np.ndarray:
    """`pad(take(values, idx), offsets, width)`; ranges are copied into their rows directly."""
    if not isinstance(idx, tuple):
        return pad(take(values, idx), offsets, width)
    out = np.zeros((len(offsets) - 1, width), values.dtype)
    for row, (a, b) in enumerate(zip(*idx)):
        out[row, :b - a] = values[a:b]
    return out


class Collator(ArrowBatchCollateFn):
    """Turns Arrow sample batches into `Batch`es for one feature spec and model input shape.

    A Ray Data collate function: passed to `iter_torch_batches(collate_fn=...)` it runs in the
    iterator's prefetch threads, beside the training step.
    """

    def __init__(self, spec: FeatureSpec, short_len: int, long_len: int, use_long: bool,
                 prefilter: Optional[Prefilter] = None, side: tuple[SideTable, ...] = (),
                 store: Optional[SequenceStore] = None) -> None:
        self.spec, self.short_len, self.long_len, self.store = spec, short_len, long_len, store
        self.use_long, self.prefilter, self.side = use_long, prefilter, side
        self.keys = list(features(side, user=spec.n_users > 0))
        self.long_width = 0 if not use_long else min(long_len, prefilter.k) if prefilter else long_len
        # How many of each sample's latest events the model reads: a short-only model (DIN, DIEN,
        # DSIN) reads `short_len` of a store's histories, not the whole `long_len`.
        self.read_len = max(short_len, long_len) if use_long else short_len

    def __call__(self, table: pa.Table) -> Batch:
        c = self.columns(table)
        return self._batch(c.values, c.lengths, c.dense)

    def split(self, table: pa.Table, batch_size: int) -> list[Batch]:
        """The table's rows as batches of `batch_size`, in order, collated at once (the collate's
        per-call cost paid once for them all); fewer than `batch_size` rows left over are dropped."""
        c = self.columns(table)
        return [self._batch(*c.rows(a, a + batch_size)) for a in range(0, table.num_rows - batch_size + 1, batch_size)]

    def columns(self, table: pa.Table) -> Columns:
        """The arrays of the table's batch, before they become tensors (`split` cuts them by row)."""
        target = {t: table.column(c).to_numpy() for t, c in TABLE_COLUMNS.items()}
        if self.store is not None:  # "store" layout: samples hold hist_end, histories live in the store
            # positions straight into the store's columns, each read only where a group needs it
            # (SIM-hard's search compares the categories of all L, reads the rest at the k it keeps)
            starts, stops = self.store.ranges(table.column("user_id").to_numpy(), table.column("hist_end").to_numpy(),
                                              self.read_len)
            hist, hist_ts = {t: self.store.values[f"hist_{t}"] for t in TABLE_COLUMNS}, self.store.values["hist_ts"]
            s_idx, s_off = last_ranges(starts, stops, self.short_len)
            if not self.use_long:
                l_idx, l_off = np.zeros(0, np.int64), np.zeros(len(starts) + 1, np.int64)
            elif self.prefilter is not None:
                l_idx, l_off = self.prefilter.search(target["cat"], hist["cat"], starts, stops)
            else:
                l_idx, l_off = last_ranges(starts, stops, self.long_len)
        else:
            lists = {t: list_arrays(table.column(f"hist_{t}")) for t in TABLE_COLUMNS}  # each column read once
            offsets = lists["item"][0]  # every hist_* column shares these offsets
            hist = {t: values for t, (_, values) in lists.items()}
            hist_ts = list_arrays(table.column("hist_ts"))[1]
            s_idx, s_off = tail(offsets, self.short_len)
            if not self.use_long:
                l_idx, l_off = np.zeros(0, np.int64), np.zeros(len(offsets), np.int64)
            elif self.prefilter is not None:
                l_idx, l_off = self.prefilter(target["cat"], hist["cat"], offsets)
            else:
                l_idx, l_off = tail(offsets, self.long_len)
        rows = {"target": (None, np.arange(len(s_off), dtype=np.int64)),
                "short": (s_idx, s_off), "long": (l_idx, l_off)}
        values, lengths = [], []
        # KJT order = features(side, user): main tables, user, side tables; table-major then group.
        for t in TABLE_COLUMNS:
            self._add(values, lengths, rows, hist, target, t, t, GROUPS)
        if self.spec.n_users:
            users = table.column("user_id").to_numpy().astype(np.int64)
            self._check_range(USER, users, self.spec.num_embeddings(USER))
            values.append(users)
            lengths.append(np.ones(len(users), np.int64))
        for s in self.side:
            self._add(values, lengths, rows, hist, target, s.name, s.source, s.groups)
        return Columns(values, lengths, {
            "target_ts": table.column("timestamp").to_numpy().astype(np.int64),
            "short_ts": padded(hist_ts, s_idx, s_off, self.short_len),  # (B, S)
            "long_ts": padded(hist_ts, l_idx, l_off, self.long_width),  # (B, K)
            "labels": table.column("label").to_numpy().astype(np.float32),
            "user_ids": table.column("user_id").to_numpy().astype(np.int64)})

    def _batch(self, values: list[np.ndarray], lengths: list[np.ndarray], dense: dict[str, np.ndarray]) -> Batch:
        """A `Batch` of `Columns`' arrays (all of them, or `Columns.rows`)."""
        sparse = KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys, values=torch.from_numpy(np.concatenate(values).astype(np.int64, copy=False)),
            lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32, copy=False)))
        return Batch(sparse=sparse, **{k: torch.from_numpy(v) for k, v in dense.items()},
                     short_len=self.short_len, long_len=self.long_width)

    def _add(self, values: list, lengths: list, rows: dict, hist: dict, target: dict, name: str, source: str,
             groups: tuple[str, ...]) -> None:
        """Append table `name`'s features (ids of main table `source`) for `groups`."""
        for g in groups:
            idx, off = rows[g]
            v = target[source] if g == "target" else take(hist[source], idx)
            if name == source:  # side tables read the same ids, already checked
                self._check_range(feature_name(g, name), v, self.spec.num_embeddings(source))
            values.append(v)
            lengths.append(np.ones(len(v), np.int64) if g == "target" else np.diff(off))

    @staticmethod
    def _check_range(feature: str, ids: np.ndarray, num_embeddings: int) -> None:
        if len(ids) and (ids.min() < 0 or ids.max() >= num_embeddings):
            bad = ids[(ids < 0) | (ids >= num_embeddings)][0]
            raise FeatureRangeError(
                f"feature '{feature}': id {int(bad)} outside table of {num_embeddings} rows [0, {num_embeddings})")


@dataclass
class Columns:
    """One collated Arrow batch as arrays: each KJT key's values and per-row lengths (the KJT's
    order) and the dense columns, one row per sample."""

    values: list[np.ndarray]
    lengths: list[np.ndarray]
    dense: dict[str, np.ndarray]

    @cached_property
    def offsets(self) -> list[np.ndarray]:
        """Per key (B+1,): where each row's values start."""
        return [np.concatenate(([0], np.cumsum(n))) for n in self.lengths]

    def rows(self, start: int, stop: int) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, np.ndarray]]:
        """(values, lengths, dense) of rows [start, stop)."""
        values = [v[o[start]:o[stop]] for v, o in zip(self.values, self.offsets)]
        return values, [n[start:stop] for n in self.lengths], {k: v[start:stop] for k, v in self.dense.items()}


class Batches(ArrowBatchCollateFn):
    """Arrow sample batch -> the list of `Batch`es of `batch_size` rows it holds (`Collator.split`):
    the iterator hands out batches of several training batches' rows, and their collate and Ray
    Data's per-batch work are paid once for all of them."""

    def __init__(self, collate: Collator, batch_size: int) -> None:
        self.collate, self.batch_size = collate, batch_size

    def __call__(self, table: pa.Table) -> list[Batch]:
        return self.collate.split(table, self.batch_size)


class EvalCollator(ArrowBatchCollateFn):
    """Arrow sample batch -> `EvalBatch`: the model's batch now (in the iterator's prefetch threads),
    the full-history batch (`full`, a collator without prefilter) only when it is asked for."""

    def __init__(self, collate: Collator, full: Collator) -> None:
        self.collate, self.full = collate, full

    def __call__(self, table: pa.Table) -> EvalBatch:
        return EvalBatch(self.collate(table), lambda: self.full(table))
