"""History-count rules: the vectorised counter equals the plain loop, both sample layouts give
the same features, and a planted repeat-purchase signal is found by the whole-history rule only."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa

from lifelong.data.samples import SampleConfig, build_local, build_store_local
from lifelong.data.store import SequenceStore
from lifelong.data.synthetic import SyntheticConfig, generate
from lifelong.trainers.rules import evaluate_rules, features, occurrences, reference_occurrences


def test_occurrences_equal_the_plain_loop():
    rng = np.random.default_rng(0)
    values = rng.integers(1, 8, 500)
    lo = rng.integers(0, 500, 200)
    hi = np.minimum(lo + rng.integers(0, 60, 200), 500)
    target = rng.integers(0, 9, 200)  # 0 and 8 never occur
    assert (occurrences(values, lo, hi, target) == reference_occurrences(values, lo, hi, target)).all()


def test_copy_and_store_layouts_give_the_same_features():
    log, _ = generate(SyntheticConfig(n_users=6, seq_len=300, n_impressions=20, n_categories=32, n_background=8,
                                      items_per_category=5, guard=40, seed=0))
    copy_cfg = SampleConfig(max_len=64, short_len=8, sample_behaviors=(1,), history_behaviors=(0,))
    store_cfg = replace(copy_cfg, layout="store")
    store_samples = build_local(log, store_cfg)
    store = SequenceStore(build_store_local(log, store_cfg))
    copy = features(build_local(log, copy_cfg), 64, 8)
    stored = features(store_samples, 64, 8, store)
    assert copy.keys() == stored.keys()
    for name in copy:
        assert (copy[name] == stored[name]).all(), name
    assert copy["category count (L)"].max() > 0
    # a cluster map adds the same rules for the target's cluster: never fewer hits than its category
    clustered = features(store_samples, 64, 8, store, clusters=np.arange(33) // 16)  # two coarse clusters
    assert clustered.keys() == copy.keys() | {f"cluster {r}" for r in ("count (L)", "share (L)", "count (last S)",
                                                                        "share (last S)")}
    assert (clustered["cluster count (L)"] >= clustered["category count (L)"]).all()
    assert (clustered["cluster count (L)"] > clustered["category count (L)"]).any()


def _repeat_log(n_users=300, seed=0):
    """Each user buys from 40 items; a target was bought early (>= 30 events back) iff clicked."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        old = rng.integers(1, 41, 5)
        for t, item in enumerate(np.r_[old, rng.integers(41, 200, 60)]):  # old interests, then 60 others
            rows.append((u, int(item), 1, t * 100, 1, 0))
        for j in range(10):
            click = j % 2
            item = int(old[j % 5]) if click else int(rng.integers(200, 260))
            rows.append((u, item, 1, 7000 + j, click, 1))
    u, i, c, t, y, b = (np.array(x) for x in zip(*rows))
    return pa.table({"user_id": u, "item_id": i, "category_id": c, "timestamp": t, "label": y.astype(np.int8),
                     "behavior": b.astype(np.int8)})


def test_whole_history_rule_finds_an_old_repeat_signal_the_short_one_cannot():
    cfg = SampleConfig(max_len=100, short_len=20, sample_behaviors=(1,), history_behaviors=(0,), split=(0.5, 0.4))
    samples = build_local(_repeat_log(), cfg)
    split = samples.column("split").to_numpy()
    train, valid = samples.filter(pa.array(split == 0)), samples.filter(pa.array(split == 1))
    got = evaluate_rules(train, valid, 100, 20)
    assert got["item count (L)"]["auc"] > 0.99
    assert abs(got["item count (last S)"]["auc"] - 0.5) < 1e-6  # the old buys are beyond the last 20


def test_count_bins_keep_small_counts_and_order_large_ones():
    from lifelong.trainers.rules import count_bins

    c = np.arange(0, 5000)
    b = count_bins(c)
    assert (b[:17] == c[:17]).all() and (np.diff(b) >= 0).all()
    assert b[32] == 17 + 4 and len(np.unique(b)) < 70  # 16 -> 32 is one octave: 4 bins
