"""History-count rules: how far plain counting of the target in the history gets.

Per sample, the occurrences of the target item and of the target category among its last L
(`max_len`, what the lifelong models see) and its last S (`short_len`, what DIN-short sees)
history events, as counts and as shares of the window. Each rule maps its feature to P(click)
with the train split's click rate per feature value (smoothed), so its valid AUC is what that
single statistic is worth; the gap between a whole-history rule and its last-S twin is the signal
beyond the short window that counting alone can reach.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa

from lifelong.data.samples import list_arrays
from lifelong.data.store import SequenceStore
from lifelong.trainers.baselines import logits, smoothed_rate
from lifelong.trainers.metrics import evaluate_arrays

SHARE_BINS = 100  # a share is binned to 1 / SHARE_BINS
PRIOR = 20.0  # pseudo-samples at the global click rate behind each value's rate (as the popularity baseline)
EXACT_COUNTS = 16  # counts above this share quarter-octave bins (a rule keeps enough train samples per bin)


def count_bins(count: np.ndarray) -> np.ndarray:
    """Counts 0..16 as themselves, larger ones in quarter-octave bins (17, 18, ...)."""
    big = count > EXACT_COUNTS
    out = count.astype(np.int64).copy()
    out[big] = EXACT_COUNTS + 1 + np.floor(4 * np.log2(count[big] / EXACT_COUNTS)).astype(np.int64)
    return out


TARGETS = {"item": ("item_id", "hist_item"), "category": ("category_id", "hist_cat")}


def _histories(samples: pa.Table, store: Optional[SequenceStore], column: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat history values and each sample's whole history [base, hi) over them."""
    if "hist_end" in samples.column_names:
        if store is None:
            raise ValueError("store-layout samples need their sequence store")
        users = samples.column("user_id").to_numpy().astype(np.int64)
        base = store.offsets[store.row[users]]
        hi = base + samples.column("hist_end").to_numpy().astype(np.int64)
        values = store.values[column]
    else:
        offsets, values = list_arrays(samples.column(column))
        base, hi = offsets[:-1], offsets[1:]
    return values, base, hi


def occurrences(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N,) how often `target[i]` occurs in `values[lo[i]:hi[i]]`, by binary search over the
    positions of each value (no Python loop, no (N, L) matrix)."""
    span = len(values) + 1
    keys = np.sort(values.astype(np.int64) * span + np.arange(len(values)))  # (value, position) sorted
    t = target.astype(np.int64) * span
    return np.searchsorted(keys, t + hi) - np.searchsorted(keys, t + lo)


def reference_occurrences(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The plain loop `occurrences` must equal."""
    return np.array([(values[a:b] == t).sum() for a, b, t in zip(lo, hi, target)], np.int64)


def features(samples: pa.Table, max_len: int, short_len: int, store: Optional[SequenceStore] = None,
             clusters: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Rule name -> (N,) integer feature (binned counts, or shares binned to 1 / SHARE_BINS).
    `clusters` (category id -> cluster id) adds the same rules for the target's cluster."""
    out = {}
    windows = (("L", max_len), ("last S", short_len))
    targets = dict(TARGETS, **({"cluster": TARGETS["category"]} if clusters is not None else {}))
    for what, (target_col, hist_col) in targets.items():
        target = samples.column(target_col).to_numpy()
        values, base, hi = _histories(samples, store, hist_col)
        if what == "cluster":
            target, values = clusters[target], clusters[values]
        lo = [np.maximum(hi - length, base) for _, length in windows]
        # both windows in one call: the history values are sorted once per column
        counts = np.split(occurrences(values, np.concatenate(lo), np.tile(hi, 2), np.tile(target, 2)), 2)
        for (window, _), count, start in zip(windows, counts, lo):
            out[f"{what} count ({window})"] = count_bins(count)
            share = count / np.maximum(hi - start, 1)
            out[f"{what} share ({window})"] = np.round(share * SHARE_BINS).astype(np.int64)
    return out


def evaluate_rules(train: pa.Table, valid: pa.Table, max_len: int, short_len: int,
                   store: Optional[SequenceStore] = None, clusters: Optional[np.ndarray] = None) -> dict[str, dict]:
    """Rule name -> metrics on `valid` (AUC, GAUC, logloss), each rule fit on `train`."""
    f_train = features(train, max_len, short_len, store, clusters)
    f_valid = features(valid, max_len, short_len, store, clusters)
    y = train.column("label").to_numpy().astype(np.float64)
    y_valid = valid.column("label").to_numpy().astype(np.float64)
    users = valid.column("user_id").to_numpy().astype(np.int64)
    fit = lambda name: logits(smoothed_rate(f_train[name], y, f_valid[name], y.mean(), PRIOR))  # noqa: E731
    return {name: evaluate_arrays(fit(name), y_valid, users) for name in f_train}
