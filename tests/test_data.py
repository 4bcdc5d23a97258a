"""Loaders on the real shared files, bad input, leakage-free sample building, planted signals."""
from __future__ import annotations

import zipfile

import numpy as np
import pyarrow as pa
import pytest

from lifelong.data.loaders import load_movielens, load_taobao
from lifelong.data.samples import SampleConfig, build_local, split_cutoffs, user_samples
from lifelong.data.schema import LogMeta, LogSchemaError, validate_log
from lifelong.data.synthetic import SyntheticConfig, generate
from lifelong.jobs.config import shared_data

ML = shared_data() / "movielens" / "ml-latest-small.zip"
TB = shared_data() / "taobao" / "UserBehavior_head.csv"


def test_movielens_real_file():
    table, meta, dropped = load_movielens(ML)
    assert table.num_rows == 100_836 and meta.n_users == 610 and meta.n_items == 9_724
    assert dropped == {}
    assert 0.47 < table.column("label").to_numpy().mean() < 0.49  # rating >= 4: 48%
    assert table.column("behavior").equals(table.column("label"))  # liked: history_behaviors [1] filters on it
    items = table.column("item_id").to_numpy()
    assert items.min() == 1 and items.max() == meta.n_items == len(np.unique(items))


def test_taobao_real_file_counts_dropped_rows():
    table, meta, dropped = load_taobao(TB)
    assert table.num_rows + sum(dropped.values()) == 4_321
    assert dropped["timestamp outside official window"] >= 1
    assert meta.n_users == 43
    beh = table.column("behavior").to_numpy()
    assert ((beh > 0) == (table.column("label").to_numpy() == 1)).all()


def _ml_zip(tmp_path, ratings: str) -> str:
    path = tmp_path / "ml.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml/ratings.csv", ratings)
        zf.writestr("ml/movies.csv", "movieId,title,genres\n1,A,Drama|Comedy\n2,B,Comedy\n")
    return str(path)


def test_bad_input_names_file_and_column(tmp_path):
    with pytest.raises(LogSchemaError, match=r"ratings\.csv.*timestamp"):
        load_movielens(_ml_zip(tmp_path, "userId,movieId,rating\n1,1,4.0\n"))
    with pytest.raises(LogSchemaError, match=r"ratings\.csv.*timestamp.*yesterday|ratings\.csv.*yesterday"):
        load_movielens(_ml_zip(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,yesterday\n"))
    with pytest.raises(LogSchemaError, match=r"ratings\.csv.*no rows"):
        load_movielens(_ml_zip(tmp_path, "userId,movieId,rating,timestamp\n"))
    with pytest.raises(LogSchemaError, match=r"movieId.*\[7\]"):
        load_movielens(_ml_zip(tmp_path, "userId,movieId,rating,timestamp\n1,7,4.0,5\n"))
    bad = tmp_path / "tb.csv"
    bad.write_text("1,2,3,click,1511600000\n")
    with pytest.raises(LogSchemaError, match=r"tb\.csv.*behavior.*click"):
        load_taobao(bad)


def test_validate_log_rejects_out_of_range_and_extra_columns():
    t = pa.table({"user_id": [1], "item_id": [12], "category_id": [1], "timestamp": [5], "label": [1]})
    meta = LogMeta("x", 1, 10, 1)
    with pytest.raises(LogSchemaError, match=r"'item_id' has id 12 > vocabulary size 10"):
        validate_log(t, "x.parquet", meta)
    with pytest.raises(LogSchemaError, match=r"unexpected column.*'price'"):
        validate_log(t.append_column("price", pa.array([1.0])), "x.parquet")
    with pytest.raises(LogSchemaError, match=r"'item_id' has id 0 < 1"):
        validate_log(t.set_column(1, "item_id", pa.array([0])), "x.parquet")
    with pytest.raises(LogSchemaError, match="empty"):
        validate_log(t.slice(0, 0), "x.parquet")


def _log(rows):
    u, i, c, ts, y = zip(*rows)
    return pa.table({"user_id": np.array(u, np.int64), "item_id": np.array(i, np.int64),
                     "category_id": np.array(c, np.int64), "timestamp": np.array(ts, np.int64),
                     "label": np.array(y, np.int8)})


def test_hand_built_log_has_no_leakage_and_breaks_ties():
    # user 1, shuffled input; items 2 and 3 share ts=200.
    log = _log([(1, 4, 1, 300, 1), (1, 3, 2, 200, 0), (1, 1, 1, 100, 1), (1, 2, 1, 200, 1), (1, 5, 2, 50, 0)])
    cfg = SampleConfig(max_len=10, short_len=2, split=(0.5, 0.25))
    s = user_samples(log, cfg, split_cutoffs(log, cfg)).to_pydict()
    by_item = {i: k for k, i in enumerate(s["item_id"])}
    assert 5 not in by_item  # first event: no history, dropped (and counted by build_samples)
    assert s["hist_item"][by_item[1]] == [5]
    assert s["hist_item"][by_item[2]] == [5, 1]  # the tie at ts=200 (item 3) is not "before"
    assert s["hist_item"][by_item[3]] == [5, 1]
    assert s["hist_item"][by_item[4]] == [5, 1, 2, 3]  # ties ordered by item id
    assert s["hist_ts"][by_item[4]] == [50, 100, 200, 200]
    short = user_samples(log, SampleConfig(max_len=2, short_len=1), (10**9, 10**9)).to_pydict()
    assert short["hist_item"][short["item_id"].index(4)] == [2, 3]  # last max_len events


def test_random_logs_history_is_exactly_the_strict_past():
    rng = np.random.default_rng(3)
    n = 400
    log = _log(list(zip(rng.integers(1, 6, n), rng.integers(1, 50, n), rng.integers(1, 5, n),
                        rng.integers(0, 60, n), rng.integers(0, 2, n))))
    cfg = SampleConfig(max_len=7, short_len=3)
    s = build_local(log, cfg).to_pydict()
    ev = log.to_pydict()
    for k in range(len(s["item_id"])):
        u, t = s["user_id"][k], s["timestamp"][k]
        past = sorted((ts, it) for uu, it, ts in zip(ev["user_id"], ev["item_id"], ev["timestamp"])
                      if uu == u and ts < t)
        assert [it for _, it in past[-7:]] == s["hist_item"][k]
        assert all(h < t for h in s["hist_ts"][k])


def test_time_split_is_ordered():
    log, _ = generate(SyntheticConfig(n_users=5, seq_len=300, n_impressions=30, n_categories=32, n_background=8,
                                      guard=40))
    s = build_local(log, SampleConfig(max_len=50, short_len=10, sample_behaviors=(1,), history_behaviors=(0,)))
    ts, split = s.column("timestamp").to_numpy(), s.column("split").to_numpy()
    assert set(split) == {0, 1, 2}
    assert ts[split == 0].max() <= ts[split == 1].min() and ts[split == 1].max() <= ts[split == 2].min()


def test_synthetic_planted_signal_is_old_balanced_and_seeded():
    for sibling in (0.0, 0.5):
        cfg = SyntheticConfig(n_users=30, seq_len=600, n_impressions=30, guard=80, sibling=sibling)
        log, meta = generate(cfg, with_kind=True)
        again, _ = generate(cfg, with_kind=True)
        assert log.equals(again) and meta.synthetic
        kind, label = log.column("kind").to_numpy(), log.column("label").to_numpy()
        imp = log.column("behavior").to_numpy() == 1
        assert (kind[~imp] == -1).all() and ((kind[imp] == 1).mean() > 0.15) == (sibling > 0)
        interest = imp & (kind < 2)
        assert interest.sum() == (kind == 2).sum()  # every interest impression has its unseen pair
        assert label[interest].mean() > label[kind == 2].mean() + 0.5
        # every category is shown as often as (a sibling of) an interest as unseen
        cat = log.column("category_id").to_numpy()
        assert (np.bincount(cat[interest], minlength=201) == np.bincount(cat[kind == 2], minlength=201)).all()
        s = build_local(log, SampleConfig(max_len=600, short_len=50, sample_behaviors=(1,), history_behaviors=(0,)))
        users, ts = log.column("user_id").to_numpy(), log.column("timestamp").to_numpy()
        for k in range(0, s.num_rows, 7):
            hist = s.column("hist_cat")[k].as_py()
            target = s.column("category_id")[k].as_py()
            imp_kind = kind[(users == s.column("user_id")[k].as_py()) & (ts == s.column("timestamp")[k].as_py())]
            assert target not in hist[-cfg.guard:]  # nothing of any target in the last guard events
            assert set(hist[-cfg.guard:]) <= set(range(1, cfg.n_background + 1))
            old_cluster = set(cfg.cluster(np.array(hist[:-cfg.guard])).tolist())
            assert (target in hist) == (imp_kind[0] == 0)  # only an interest's own category was seen
            assert (int(cfg.cluster(target)) in old_cluster) == (imp_kind[0] < 2)  # its cluster: siblings too
