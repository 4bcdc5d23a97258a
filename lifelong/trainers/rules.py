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
from lifelong.trainers.metrics import evaluate_arrays

SHARE_BINS = 100  # a share is binned to 1 / SHARE_BINS
EXACT_COUNTS = 16  # counts above this share quarter-octave bins (a rule keeps enough train samples per bin)


def count_bins(count: np.ndarray) -> np.ndarray:
    """Counts 0..16 as themselves, larger ones in quarter-octave bins (17, 18, ...)."""
    big = count > EXACT_COUNTS
    out = count.astype(np.int64).copy()
    out[big] = EXACT_COUNTS + 1 + np.floor(4 * np.log2(count[big] / EXACT_COUNTS)).astype(np.int64)
    return out
TARGETS = {"item": ("item_id", "hist_item"), "category": ("category_id", "hist_cat")}


def _windows(samples: pa.Table, store: Optional[SequenceStore], column: str, length: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat history values and each sample's [lo, hi) window over them: its last `length` events."""
    if "hist_end" in samples.column_names:
        if store is None:
            raise ValueError("store-layout samples need their sequence store")
        users = samples.column("user_id").to_numpy().astype(np.int64)
        rows = store.row[users]
        hi = store.offsets[rows] + samples.column("hist_end").to_numpy().astype(np.int64)
        base = store.offsets[rows]
        values = store.values[column]
    else:
        offsets, values = list_arrays(samples.column(column))
        base, hi = offsets[:-1], offsets[1:]
    return values, np.maximum(hi - length, base), hi


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


def features(samples: pa.Table, max_len: int, short_len: int, store: Optional[SequenceStore] = None
             ) -> dict[str, np.ndarray]:
    """Rule name -> (N,) integer feature (binned counts, or shares binned to 1 / SHARE_BINS)."""
    out = {}
    for what, (target_col, hist_col) in TARGETS.items():
        target = samples.column(target_col).to_numpy()
        for window, length in (("L", max_len), ("last S", short_len)):
            values, lo, hi = _windows(samples, store, hist_col, length)
            count = occurrences(values, lo, hi, target)
            out[f"{what} count ({window})"] = count_bins(count)
            share = count / np.maximum(hi - lo, 1)
            out[f"{what} share ({window})"] = np.round(share * SHARE_BINS).astype(np.int64)
    return out


def _fit(feature: np.ndarray, labels: np.ndarray, query: np.ndarray, prior: float = 20.0) -> np.ndarray:
    """Logits of the smoothed train click rate per feature value (unseen values: the global rate)."""
    size = int(max(feature.max(initial=0), query.max(initial=0))) + 1
    rate = labels.mean()
    clicks = np.bincount(feature, weights=labels, minlength=size)
    n = np.bincount(feature, minlength=size)
    p = ((clicks[query] + prior * rate) / (n[query] + prior)).clip(1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def evaluate_rules(train: pa.Table, valid: pa.Table, max_len: int, short_len: int,
                   store: Optional[SequenceStore] = None) -> dict[str, dict]:
    """Rule name -> metrics on `valid` (AUC, GAUC, logloss), each rule fit on `train`."""
    f_train = features(train, max_len, short_len, store)
    f_valid = features(valid, max_len, short_len, store)
    y = train.column("label").to_numpy().astype(np.float64)
    y_valid = valid.column("label").to_numpy().astype(np.float64)
    users = valid.column("user_id").to_numpy().astype(np.int64)
    return {name: evaluate_arrays(_fit(f_train[name], y, f_valid[name]), y_valid, users) for name in f_train}
