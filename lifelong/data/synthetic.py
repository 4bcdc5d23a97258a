"""Seeded synthetic behaviour logs with planted lifelong signals (always labelled synthetic).

Each user has a lifelong behaviour sequence (behavior=0, label=1) and, near its end, impressions
(behavior=1) whose click label depends on signals only a lifelong model can see:

- strong old interests: categories that occur in bursts of `burst` consecutive events, only
  far back (never within `guard` events of any impression). Impressions of these click often.
- noise categories: the same number of events as a strong interest, but isolated (single events
  between other categories). Only neighbouring events (context) tell them from strong ones;
  impressions of these click at the base rate.
- time-of-day habits: one habit category per 6-hour slot, frequent at that time of day.
  An impression of the habit category of the impression's own slot clicks often; of another
  slot's habit, at the base rate.
- filler categories fill the rest (and the recent past); random unseen categories also appear
  as impressions.

A short-history model sees only filler and habit categories, so it cannot separate strong from
noise or unseen impressions. Samples use behavior=1 rows; history uses behavior=0 rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lifelong.data.schema import LogMeta, validate_log

DAY = 86400
# Impression kinds and their click logits.
KINDS = ("strong", "noise", "habit_now", "habit_other", "filler", "unseen")


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the planted log. `seq_len` is the number of history events per user."""

    n_users: int = 200
    seq_len: int = 1000
    n_impressions: int = 40
    n_categories: int = 200
    items_per_category: int = 20
    n_strong: int = 3
    n_noise: int = 3
    n_filler: int = 6
    burst: int = 4
    bursts_per_interest: int = 4
    guard: int = 100
    habit_prob: float = 0.5
    days: int = 360
    base_logit: float = -1.5
    strong_logit: float = 3.0
    habit_logit: float = 2.5
    seed: int = 0

    def __post_init__(self) -> None:
        need = self.n_strong + self.n_noise + 4 + self.n_filler + 1
        if self.n_categories < need:
            raise ValueError(f"n_categories={self.n_categories} < {need} needed per user")
        # Bursts of burst events for every strong and noise interest, plus the noise interests'
        # remaining events scattered singly, all in the first seq_len - 2 * guard positions.
        old = ((self.n_strong + self.n_noise) * self.burst + self.n_noise * (self.burst - 1)) * self.bursts_per_interest
        if old > self.seq_len - 2 * self.guard:
            raise ValueError(f"seq_len={self.seq_len} too short for {old} planted events and guard={self.guard}")


def _user(cfg: SyntheticConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    L, n_imp = cfg.seq_len, cfg.n_impressions
    cats = rng.choice(np.arange(1, cfg.n_categories + 1), cfg.n_strong + cfg.n_noise + 4 + cfg.n_filler,
                      replace=False)
    strong, rest = cats[:cfg.n_strong], cats[cfg.n_strong:]
    noise, rest = rest[:cfg.n_noise], rest[cfg.n_noise:]
    habit, filler = rest[:4], rest[4:]
    # Timeline: L history events and n_imp impressions; impressions fall after the first
    # L - guard history events, so the planted old events are always > guard events back.
    ts = np.sort(rng.integers(0, cfg.days * DAY, L + n_imp))
    is_imp = np.zeros(L + n_imp, bool)
    tail = np.arange(L - cfg.guard + 1, L + n_imp)  # positions after the (L-guard)-th history event
    is_imp[rng.choice(tail, n_imp, replace=False)] = True
    hist_ts, imp_ts = ts[~is_imp], ts[is_imp]
    slot = (hist_ts % DAY) // (6 * 3600)
    cat = np.where(rng.random(L) < cfg.habit_prob, habit[slot], rng.choice(filler, L))
    # Planted old events in the first L - 2*guard positions: strong bursts and isolated noise.
    n_b = cfg.bursts_per_interest
    limit = L - 2 * cfg.guard
    starts = np.sort(rng.choice(limit // cfg.burst, (cfg.n_strong + cfg.n_noise) * n_b, replace=False))
    starts = rng.permutation(starts) * cfg.burst
    for j, c in enumerate(strong):
        for s in starts[j * n_b:(j + 1) * n_b]:
            cat[s:s + cfg.burst] = c  # (burst,) consecutive events of one strong interest
    for j, c in enumerate(noise):
        for s in starts[(cfg.n_strong + j) * n_b:(cfg.n_strong + j + 1) * n_b]:
            cat[s + rng.integers(0, cfg.burst)] = c  # one isolated event per block
    # Noise gets the same number of events as a strong interest: scatter the remainder singly.
    free = np.setdiff1d(np.arange(limit), np.concatenate([np.arange(s, s + cfg.burst) for s in starts]))
    for c in noise:
        extra = rng.choice(free, n_b * (cfg.burst - 1), replace=False)
        free = np.setdiff1d(free, extra)
        cat[extra] = c
    # Impressions.
    kind = rng.integers(0, len(KINDS), n_imp)
    imp_slot = (imp_ts % DAY) // (6 * 3600)
    other = (imp_slot + rng.integers(1, 4, n_imp)) % 4
    unseen_pool = np.setdiff1d(np.arange(1, cfg.n_categories + 1), cats)
    choices = {
        0: rng.choice(strong, n_imp), 1: rng.choice(noise, n_imp), 2: habit[imp_slot],
        3: habit[other], 4: rng.choice(filler, n_imp), 5: rng.choice(unseen_pool, n_imp),
    }
    imp_cat = np.select([kind == k for k in range(len(KINDS))], [choices[k] for k in range(len(KINDS))])
    logit = cfg.base_logit + cfg.strong_logit * (kind == 0) + cfg.habit_logit * (kind == 2)
    imp_label = (rng.random(n_imp) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    all_cat = np.concatenate([cat, imp_cat])
    item = (all_cat - 1) * cfg.items_per_category + rng.integers(1, cfg.items_per_category + 1, L + n_imp)
    return {
        "item_id": item, "category_id": all_cat,
        "timestamp": np.concatenate([hist_ts, imp_ts]),
        "label": np.concatenate([np.ones(L, np.int8), imp_label]),
        "behavior": np.concatenate([np.zeros(L, np.int8), np.ones(n_imp, np.int8)]),
        "kind": np.concatenate([np.full(L, -1, np.int8), kind.astype(np.int8)]),
    }


def generate(cfg: SyntheticConfig, with_kind: bool = False) -> tuple[pa.Table, LogMeta]:
    """Build the log for all users; `with_kind` adds the impression kind (for diagnostics only)."""
    rng = np.random.default_rng(cfg.seed)
    parts = [_user(cfg, np.random.default_rng(rng.integers(2**63))) for _ in range(cfg.n_users)]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = cfg.seq_len + cfg.n_impressions
    user = np.repeat(np.arange(1, cfg.n_users + 1, dtype=np.int64), n)
    base = 1_500_000_000  # arbitrary epoch offset, aligned to a day so hours are meaningful
    base -= base % DAY
    table = pa.table({
        "user_id": user, "item_id": cols["item_id"].astype(np.int64),
        "category_id": cols["category_id"].astype(np.int64),
        "timestamp": cols["timestamp"].astype(np.int64) + base,
        "label": cols["label"], "behavior": cols["behavior"],
    })
    meta = LogMeta(f"synthetic(L={cfg.seq_len},seed={cfg.seed})", cfg.n_users,
                   cfg.n_categories * cfg.items_per_category, cfg.n_categories, synthetic=True)
    table = validate_log(table, meta.name, meta)
    if with_kind:
        table = table.append_column("kind", pa.array(cols["kind"]))
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
