"""The Complete Journey loader: the real files, the next-purchase CTR framing without leakage
(baskets never see each other, negatives never from the own basket, popularity from the training
period only, the time split), and bad input named or counted."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifelong.data.completejourney import (HISTORY_BEHAVIORS, NEGATIVE, SAMPLE_BEHAVIORS, UNKNOWN_CATEGORY,
                                           CompleteJourneyConfig, load_completejourney)
from lifelong.data.samples import SampleConfig, build_local, split_cutoffs
from lifelong.data.schema import LogSchemaError
from lifelong.jobs.config import shared_data

CJ = shared_data() / "completejourney"
T0 = int(datetime(2017, 1, 1, tzinfo=timezone.utc).timestamp())


def _write(tmp_path, rows, products=None, drop_products=False):
    """transactions.parquet from (household, basket, product, quantity, seconds after T0) rows."""
    h, b, p, q, s = (list(c) for c in zip(*rows))
    tx = pa.table({"household_id": h, "store_id": [1] * len(h), "basket_id": b, "product_id": p, "quantity": q,
                   "transaction_timestamp": pa.array([(T0 + x) * 10**9 for x in s], pa.timestamp("ns"))})
    pq.write_table(tx, tmp_path / "transactions.parquet")
    if not drop_products:
        ids = sorted(set(p)) if products is None else products
        pq.write_table(pa.table({"product_id": ids, "product_category": [f"c{i % 3}" for i in ids]}),
                       tmp_path / "products.parquet")
    return tmp_path


def _log(seed=0):
    """4 households x 30 weekly baskets of 3 products from 12; household 1's baskets 10 and 11 fall in
    the same minute (different seconds); product 99 is bought only in the last week."""
    rng = np.random.default_rng(seed)
    rows, basket = [], 0
    for hh in range(1, 5):
        for week in range(30):
            basket += 1
            second = week * 7 * 86400 + hh * 3600 + (20 if (hh == 1 and week == 11) else 0)
            if hh == 1 and week == 11:
                second -= 7 * 86400  # same minute as week 10's basket, 20 s later
            for prod in rng.choice(12, 3, replace=False) + 1:
                rows.append((hh, basket, int(prod), 1, second))
    rows.append((2, basket + 1, 99, 2, 29 * 7 * 86400 + 5))
    return rows


def test_leakage_free_next_purchase_samples(tmp_path):
    src = _write(tmp_path, _log())
    cfg = SampleConfig(max_len=1000, short_len=5, sample_behaviors=SAMPLE_BEHAVIORS,
                       history_behaviors=HISTORY_BEHAVIORS, min_history=0)
    log, meta, counts = load_completejourney(src, CompleteJourneyConfig(negatives=2, last_n=20, seed=3), 0.8)
    cols = {c: log.column(c).to_numpy() for c in log.column_names}
    beh, item, basket, ts = cols["behavior"], cols["item_id"], cols["basket_id"], cols["timestamp"]
    # One visit time per basket, on the minute; both same-minute baskets share it.
    for b in np.unique(basket):
        assert len(np.unique(ts[basket == b])) == 1 and ts[basket == b][0] % 60 == 0
    # Negatives: `negatives` per positive, never an item of their own basket, never a later-only product.
    pos, neg = beh != NEGATIVE, beh == NEGATIVE
    assert neg.sum() == 2 * (beh == SAMPLE_BEHAVIORS[0]).sum()
    bought = set(zip(basket[pos].tolist(), item[pos].tolist()))
    assert not any((b, i) in bought for b, i in zip(basket[neg].tolist(), item[neg].tolist()))
    cutoff = split_cutoffs(log, cfg)[0]
    early = set(item[pos & (ts < cutoff)].tolist())
    assert set(item[neg].tolist()) <= early
    late_only = set(item[pos].tolist()) - early
    assert late_only and not late_only & set(item[neg].tolist())  # product 99 is never a negative
    # Samples: every history event strictly before the visit, so no basket (nor a same-minute one)
    # sees another's items; the history is exactly the household's purchases before the visit.
    samples = build_local(log, cfg)
    s = {c: samples.column(c).to_pylist() for c in ("user_id", "timestamp", "hist_ts", "hist_item", "split")}
    assert len(s["user_id"]) == (beh != 0).sum()
    for u, t, hts, hit in zip(s["user_id"], s["timestamp"], s["hist_ts"], s["hist_item"]):
        assert all(x < t for x in hts)
        before = pos & (cols["user_id"] == u) & (ts < t)
        assert sorted(hit) == sorted(item[before].tolist())
    same_minute = ts[(cols["user_id"] == 1) & (basket == 11)][0]
    assert same_minute == ts[(cols["user_id"] == 1) & (basket == 12)][0]
    # The time split holds: train < c0 <= valid < c1 <= test.
    c0, c1 = split_cutoffs(log, cfg)
    for t, part in zip(s["timestamp"], s["split"]):
        assert (t < c0) if part == 0 else (c0 <= t < c1) if part == 1 else (t >= c1)
    # Seeded: the same seed gives the same negatives, another seed others.
    again = load_completejourney(src, CompleteJourneyConfig(negatives=2, last_n=20, seed=3), 0.8)[0]
    other = load_completejourney(src, CompleteJourneyConfig(negatives=2, last_n=20, seed=4), 0.8)[0]
    assert again.equals(log) and not other.equals(log)


def test_bad_input_is_named_or_counted(tmp_path):
    rows = _log()
    (tmp_path / "a").mkdir()
    with pytest.raises(LogSchemaError, match="products.parquet: not found"):
        load_completejourney(_write(tmp_path / "a", rows, drop_products=True))
    (tmp_path / "b").mkdir()
    bad = [(h, b, p, -1 if i == 5 else q, s) for i, (h, b, p, q, s) in enumerate(rows)]
    with pytest.raises(LogSchemaError, match="quantity.*1 negative"):
        load_completejourney(_write(tmp_path / "b", bad))
    # A product without a products row gets the unknown category, counted; quantity 0 is dropped, counted.
    (tmp_path / "c").mkdir()
    zero = [(h, b, p, 0 if i == 7 else q, s) for i, (h, b, p, q, s) in enumerate(rows)]
    log, meta, counts = load_completejourney(_write(tmp_path / "c", zero, products=list(range(2, 13))))
    assert counts["products without a products row (unknown category)"] == 2  # products 1 and 99
    assert counts["rows with quantity 0 (nothing bought), dropped"] == 1
    item, cat = log.column("item_id").to_numpy(), log.column("category_id").to_numpy()
    assert (cat[item == 1] == UNKNOWN_CATEGORY).all() and (cat[item != 1] != UNKNOWN_CATEGORY).any()
    # A null timestamp names the column.
    (tmp_path / "d").mkdir()
    src = _write(tmp_path / "d", rows)
    tx = pq.read_table(src / "transactions.parquet")
    ts = tx.column("transaction_timestamp").to_pylist()
    ts[3] = None
    tx = tx.set_column(tx.column_names.index("transaction_timestamp"), "transaction_timestamp",
                       pa.array(ts, pa.timestamp("ns")))
    pq.write_table(tx, src / "transactions.parquet")
    with pytest.raises(LogSchemaError, match="'transaction_timestamp' has 1 null"):
        load_completejourney(src)


def test_real_files():
    log, meta, counts = load_completejourney(CJ, CompleteJourneyConfig(negatives=1, last_n=50), 0.8)
    assert meta.n_users == 2_469 and meta.n_categories == 304  # 303 named + unknown
    assert counts["rows with quantity 0 (nothing bought), dropped"] == 8_869
    assert counts["products without a products row (unknown category)"] == 3  # 17 before the quantity-0 drop
    beh = log.column("behavior").to_numpy()
    assert (beh == NEGATIVE).sum() == (beh == SAMPLE_BEHAVIORS[0]).sum() <= 50 * 2_469
    assert (beh != NEGATIVE).sum() == 1_469_307 - 8_869
