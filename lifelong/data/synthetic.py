"""Seeded synthetic behaviour logs with a planted lifelong signal (always labelled synthetic).

Categories 1..n_categories form global clusters of `cluster_size` consecutive ids. Each user has
a lifelong behaviour sequence (behavior=0, label=1) and, near its end, impressions (behavior=1):

- old interests: `n_interests` categories, each from its own cluster, with `interest_events`
  single events scattered over the old part of the history, never within `guard` events of any
  impression (so never in a short window of S <= guard events).
- background: every other history position (old and recent) is a category drawn at random from
  the first `n_background` categories (whole clusters, shared by all users, never impressed), so
  the recent window says nothing about a target, nor which user it is.
- impressions: half of an old interest (with probability `sibling`, an unseen sibling of it: a
  category of the same cluster the user never touched), half of a category from a cluster the user
  never touched, paired across users so every category is shown as often each way
  (`_impressions`). P(click) is `interest_p` for a (sibling of an) old interest, `unseen_p` otherwise:
  monotone in the count of the target's cluster among events older than the short window, and
  independent of everything in the last `guard` events, so a short-history model sits at AUC 0.5
  by construction. With `sibling = 0` exact category search sees all of it; with `sibling > 0`
  only a relevance that learns which categories are siblings does (`ceilings` prints both).

Samples use behavior=1 rows; history uses behavior=0 rows. `generate(..., with_kind=True)` adds
the impression kind and its true P(click) for diagnostics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lifelong.data.schema import LogMeta, validate_log

DAY = 86400
KINDS = ("interest", "sibling", "unseen")  # impression kinds (the `kind` column's codes)


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the planted log. `seq_len` is the number of history events per user."""

    n_users: int = 200
    seq_len: int = 1000
    n_impressions: int = 40
    n_categories: int = 200
    items_per_category: int = 20
    cluster_size: int = 4
    n_interests: int = 3
    interest_events: int = 16
    n_background: int = 20
    guard: int = 100
    interest_p: float = 0.8
    unseen_p: float = 0.1
    sibling: float = 0.0
    days: int = 360
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_categories % self.cluster_size:
            raise ValueError(f"n_categories={self.n_categories} is not a multiple of cluster_size={self.cluster_size}")
        if self.sibling > 0 and self.cluster_size < 2:
            raise ValueError("sibling > 0 needs cluster_size >= 2")
        if self.n_background < 1 or self.n_background % self.cluster_size:
            raise ValueError(f"n_background={self.n_background} must be a positive multiple of cluster_size")
        need = self.n_background // self.cluster_size + self.n_interests + 1
        if self.n_categories // self.cluster_size < need:
            raise ValueError(f"{self.n_categories // self.cluster_size} clusters < {need} needed (background, "
                             "each interest's own, one unseen)")
        if self.n_interests * self.interest_events > self.seq_len - 2 * self.guard:
            raise ValueError(f"seq_len={self.seq_len} too short for {self.n_interests * self.interest_events} "
                             f"old-interest events and guard={self.guard}")
        for name in ("interest_p", "unseen_p", "sibling"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")

    def cluster(self, category: np.ndarray) -> np.ndarray:
        """Cluster of each category id (>= 1)."""
        return (np.asarray(category) - 1) // self.cluster_size


def _user(cfg: SyntheticConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One user's history, its interests and siblings, and its impression slots' times."""
    L, n_imp, cs = cfg.seq_len, cfg.n_impressions, cfg.cluster_size
    clusters = cfg.n_background // cs + rng.permutation(cfg.n_categories // cs - cfg.n_background // cs)
    own = clusters[:cfg.n_interests]
    members = own[:, None] * cs + 1 + np.array([rng.permutation(cs) for _ in own])  # (n_interests, cs)
    # Timeline: L history events and n_imp impressions; impressions fall after the first
    # L - guard history events, so the old-interest events are always > guard events back.
    ts = np.sort(rng.integers(0, cfg.days * DAY, L + n_imp))
    is_imp = np.zeros(L + n_imp, bool)
    tail = np.arange(L - cfg.guard + 1, L + n_imp)  # positions after the (L-guard)-th history event
    is_imp[rng.choice(tail, n_imp, replace=False)] = True
    cat = rng.integers(1, cfg.n_background + 1, L)
    spots = rng.choice(L - 2 * cfg.guard, cfg.n_interests * cfg.interest_events, replace=False)
    cat[spots] = np.repeat(members[:, 0], cfg.interest_events)  # single events, scattered
    return {"own": own, "interests": members[:, 0], "siblings": members[:, 1:], "hist_ts": ts[~is_imp],
            "hist_cat": cat, "imp_ts": ts[is_imp]}


def _impressions(cfg: SyntheticConfig, users: list[dict], rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Every impression slot's (kind, category), slots walked in time order across users: a slot
    either pairs with the oldest waiting (sibling of an) interest impression of another user whose
    clusters exclude that category, and shows that category as unseen, or becomes an interest
    impression that waits for its pair. So every category is shown as often unseen as as an
    interest, at nearly the same time: its click rate alone says nothing (DIN-short's 0.5)."""
    owner = np.repeat(np.arange(len(users)), cfg.n_impressions)
    t = np.concatenate([u["imp_ts"] for u in users])
    kind, cat = np.full(len(t), 2, np.int8), np.zeros(len(t), np.int64)
    waiting: list[tuple[int, int]] = []  # (user, category) of interest impressions without a pair
    for slot in np.lexsort((rng.random(len(t)), t)):
        u = users[owner[slot]]
        pair = next((j for j, (v, c) in enumerate(waiting)
                     if v != owner[slot] and cfg.cluster(c) not in u["own"]), None)
        if pair is not None:
            cat[slot] = waiting.pop(pair)[1]
            continue
        which = rng.integers(cfg.n_interests)
        if rng.random() < cfg.sibling:
            kind[slot], cat[slot] = 1, u["siblings"][which, rng.integers(cfg.cluster_size - 1)]
        else:
            kind[slot], cat[slot] = 0, u["interests"][which]
        waiting.append((int(owner[slot]), int(cat[slot])))
    return kind, cat


def generate(cfg: SyntheticConfig, with_kind: bool = False) -> tuple[pa.Table, LogMeta]:
    """Build the log for all users; `with_kind` adds the impression kind and its true P(click)
    (diagnostics only: no model may read them)."""
    rng = np.random.default_rng(cfg.seed)
    users = [_user(cfg, np.random.default_rng(rng.integers(2**63))) for _ in range(cfg.n_users)]
    kind, imp_cat = _impressions(cfg, users, rng)
    p = np.where(kind < 2, cfg.interest_p, cfg.unseen_p)
    imp_label = (rng.random(len(kind)) < p).astype(np.int8)
    L, n_imp = cfg.seq_len, cfg.n_impressions
    per_user = lambda key, imp: np.concatenate(  # noqa: E731  (B users) x [L history, n_imp impressions]
        [np.concatenate([u[key], imp[i * n_imp:(i + 1) * n_imp]]) for i, u in enumerate(users)])
    cat = per_user("hist_cat", imp_cat)
    item = (cat - 1) * cfg.items_per_category + rng.integers(1, cfg.items_per_category + 1, len(cat))
    is_hist = np.tile(np.arange(L + n_imp) < L, cfg.n_users)
    label = np.ones(len(cat), np.int8)
    label[~is_hist] = imp_label
    user = np.repeat(np.arange(1, cfg.n_users + 1, dtype=np.int64), L + n_imp)
    base = 1_500_000_000  # arbitrary epoch offset, aligned to a day so hours are meaningful
    base -= base % DAY
    table = pa.table({
        "user_id": user, "item_id": item.astype(np.int64), "category_id": cat.astype(np.int64),
        "timestamp": per_user("hist_ts", np.concatenate([u["imp_ts"] for u in users])).astype(np.int64) + base,
        "label": label, "behavior": (~is_hist).astype(np.int8),
    })
    meta = LogMeta(f"synthetic(L={cfg.seq_len},seed={cfg.seed})", cfg.n_users,
                   cfg.n_categories * cfg.items_per_category, cfg.n_categories, synthetic=True)
    table = validate_log(table, meta.name, meta)
    if with_kind:
        full_kind, full_p = np.full(len(cat), -1, np.int8), np.full(len(cat), np.nan)
        full_kind[~is_hist], full_p[~is_hist] = kind, p
        table = table.append_column("kind", pa.array(full_kind))
        table = table.append_column("p_click", pa.array(full_p, mask=is_hist))
    return table, meta


def presence_labels(log: pa.Table) -> pa.Table:
    """The control task: an impression clicks iff its category occurs in the user's history
    before it (every target-attention model should learn it; diagnostics only)."""
    user, cat, ts = (log[c].to_numpy() for c in ("user_id", "category_id", "timestamp"))
    hist = log["behavior"].to_numpy() == 0
    first: dict[tuple[int, int], int] = {}  # (user, category) -> its first history timestamp
    for u, c, t in zip(user[hist].tolist(), cat[hist].tolist(), ts[hist].tolist()):
        first[(u, c)] = min(t, first.get((u, c), t))
    label = np.array([t > first.get((u, c), t) for u, c, t in zip(user.tolist(), cat.tolist(), ts.tolist())], np.int8)
    label[hist] = log["label"].to_numpy()[hist]
    return log.set_column(log.schema.get_field_index("label"), "label", pa.array(label, log.schema.field("label").type))
