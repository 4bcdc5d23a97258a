"""Reference baselines that make model metrics mean something: popularity and logistic regression.

Both fit on the train split's samples and score another split, in process (they are tiny).
- `popularity`: the target item's smoothed click rate in train, backed off to its category's,
  then to the global rate (`prior` pseudo-impressions each).
- `logistic`: logistic regression on one-hot user, item, category and hour of day (a hashed
  weight per id, Adagrad, `epochs` passes): what a linear model sees without any sequence.
Scores are logits, so AUC, GAUC and logloss come from the same `evaluate_arrays`.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from lifelong.trainers.metrics import evaluate_arrays


def _col(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).to_numpy()


def smoothed_rate(keys: np.ndarray, labels: np.ndarray, query: np.ndarray, prior_rate: np.ndarray | float,
                  prior: float) -> np.ndarray:
    """Smoothed per-key rate at `query` keys: (clicks + prior * prior_rate) / (n + prior)."""
    size = int(max(keys.max(initial=0), query.max(initial=0))) + 1
    clicks = np.bincount(keys, weights=labels, minlength=size)
    n = np.bincount(keys, minlength=size)
    return (clicks[query] + prior * prior_rate) / (n[query] + prior)


def logits(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) with p kept off 0 and 1."""
    p = p.clip(1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def popularity(train: pa.Table, test: pa.Table, prior: float = 20.0) -> np.ndarray:
    """Logits of the smoothed item click rate with category back-off."""
    y = _col(train, "label").astype(np.float64)
    base = np.full(test.num_rows, y.mean())
    cat = smoothed_rate(_col(train, "category_id"), y, _col(test, "category_id"), base, prior)
    return logits(smoothed_rate(_col(train, "item_id"), y, _col(test, "item_id"), cat, prior))


def _ids(t: pa.Table, buckets: int) -> np.ndarray:
    """(N, 4) hashed ids: user, item, category, hour of day; each field its own range."""
    hour = (_col(t, "timestamp") // 3600) % 24
    fields = [_col(t, "user_id"), _col(t, "item_id"), _col(t, "category_id"), hour]
    return np.stack([(f.astype(np.int64) * 4 + i) % buckets for i, f in enumerate(fields)], 1)


def logistic(train: pa.Table, test: pa.Table, epochs: int = 3, lr: float = 0.1, batch_size: int = 1024,
             buckets: int = 1 << 20, seed: int = 0) -> np.ndarray:
    """Logits of a logistic regression on one-hot user, item, category, hour."""
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.EmbeddingBag(buckets, 1, mode="sum", sparse=True)
    torch.nn.init.zeros_(w.weight)
    bias = torch.nn.Parameter(torch.zeros(1))
    opts = [torch.optim.Adagrad(w.parameters(), lr=lr), torch.optim.Adagrad([bias], lr=lr)]  # sparse, dense
    x, y = torch.from_numpy(_ids(train, buckets)), torch.from_numpy(_col(train, "label").astype(np.float32))
    # the sparse step's coalesced gradients are well-formed: opt out of checking them (torch warns otherwise)
    with torch.sparse.check_sparse_tensor_invariants(enable=False):
        _fit(w, bias, opts, x, y, epochs, batch_size, g)
    with torch.no_grad():
        return (w(torch.from_numpy(_ids(test, buckets))).squeeze(-1) + bias).double().numpy()


def _fit(w, bias, opts, x, y, epochs: int, batch_size: int, g: torch.Generator) -> None:
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch_size):
            logit = w(x[idx]).squeeze(-1) + bias  # (b,)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[idx])
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()


BASELINES = {"popularity": popularity, "logistic": logistic}


def evaluate_baseline(name: str, train: pa.Table, test: pa.Table) -> dict:
    scores = BASELINES[name](train, test)
    return evaluate_arrays(scores, _col(test, "label").astype(np.float64), _col(test, "user_id").astype(np.int64))
