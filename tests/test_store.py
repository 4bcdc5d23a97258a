"""The sequence store layout: each user's history stored once, samples hold hist_end. Batches
equal those of the copy layout exactly; storage grows with events, not samples x L. On Ray the layout
trains in tests/test_key_cache.py (TWIN with the key cache) and in the README's synthetic run."""
from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lifelong.data.samples import SampleConfig, build_local, build_store_local
from lifelong.data.store import SequenceStore
from lifelong.data.synthetic import SyntheticConfig, generate
from lifelong.jobs.config import run_file
from lifelong.jobs.prepare import samples_key
from lifelong.trainers.inputs import make_collator
from tests.helpers import tiny_job

COPY = SampleConfig(max_len=64, short_len=8, sample_behaviors=(1,), history_behaviors=(0,))
STORE = replace(COPY, layout="store")


@pytest.fixture(scope="module")
def log():
    return generate(SyntheticConfig(n_users=20, seq_len=300, n_impressions=20, n_categories=32, n_background=8,
                                    items_per_category=5, guard=40, seed=3))


def test_store_layout_expands_to_the_copy_layout(log):
    table, _ = log
    copy, ref = build_local(table, COPY), build_local(table, STORE)
    store = SequenceStore(build_store_local(table, STORE))
    assert ref.column_names == ["user_id", "item_id", "category_id", "timestamp", "label", "hist_end", "split"]
    assert store.expand(ref, COPY.max_len).equals(copy)


class CountingStore(SequenceStore):
    """A store that records how many events per sample each `ranges` call asked for."""

    def __init__(self, table: pa.Table) -> None:
        super().__init__(table)
        self.asked: list[int] = []

    def ranges(self, users, ends, max_len):
        self.asked.append(max_len)
        return super().ranges(users, ends, max_len)


@pytest.mark.parametrize("model,cfg,reads", [("din_full", {}, 64), ("sim_hard", {"k": 6}, 64),
                                             ("sim_soft", {"k": 6}, 64), ("din", {}, 8), ("dien", {}, 8)])
def test_batches_equal_across_layouts(log, model, cfg, reads):
    table, meta = log
    store = CountingStore(build_store_local(table, STORE))
    copy_rows, store_rows = build_local(table, COPY).slice(0, 50), build_local(table, STORE).slice(0, 50)
    job = tiny_job(model, meta, cfg, users=True)
    a = make_collator(job)(copy_rows)
    b = make_collator(replace(job, samples=replace(job.samples, layout="store")), store=store)(store_rows)
    assert a.sparse.keys() == b.sparse.keys()
    assert torch.equal(a.sparse.values(), b.sparse.values()) and torch.equal(a.sparse.lengths(), b.sparse.lengths())
    for f in ("target_ts", "short_ts", "long_ts", "labels", "user_ids"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert store.asked == [reads]  # a short-history model reads short_len events per sample, not max_len


def _bytes(tmp_path, impressions):
    """(copy, store) layouts' Parquet bytes on disk and Arrow bytes in memory, samples + store."""
    table, _ = generate(SyntheticConfig(n_users=20, seq_len=1000, n_impressions=impressions, seed=1))
    cfg = replace(COPY, max_len=1000, short_len=50)
    parts = {"copy": [build_local(table, cfg)],
             "store": [build_local(table, replace(cfg, layout="store")), build_store_local(table, cfg)]}
    out = {}
    for name, tables in parts.items():
        disk = 0
        for i, t in enumerate(tables):
            pq.write_table(t, tmp_path / f"{name}{i}.parquet")
            disk += (tmp_path / f"{name}{i}.parquet").stat().st_size
        out[name] = (disk, sum(t.nbytes for t in tables))
    return out


def test_store_bytes_grow_with_events_not_samples(tmp_path):
    few, many = _bytes(tmp_path, 20), _bytes(tmp_path, 80)
    # Copy layout: every sample holds ~L events, so 4x the samples is ~4x the bytes. Store layout:
    # the histories are the same 20 users x 1000 events; only the small sample rows grow.
    assert many["copy"][1] > 3.5 * few["copy"][1]
    assert many["store"][1] < 1.5 * few["store"][1]
    assert many["store"][1] * 20 < many["copy"][1] and many["store"][0] * 5 < many["copy"][0], many


def test_store_errors_name_the_user():
    t = pa.table({"user_id": [3], "hist_item": [[1, 2]], "hist_cat": [[1, 1]], "hist_ts": [[5, 6]]})
    store = SequenceStore(t, "s.parquet")
    with pytest.raises(KeyError, match=r"s\.parquet: no history for user_id 4"):
        store.lists(pa.array([4]).to_numpy(), pa.array([1]).to_numpy(), 8)
    with pytest.raises(ValueError, match=r"user_id 3 ends at history event 5, the user has 2"):
        store.lists(pa.array([3]).to_numpy(), pa.array([5]).to_numpy(), 8)
    offsets, values = store.lists(pa.array([3, 3]).to_numpy(), pa.array([2, 1]).to_numpy(), 1)
    assert offsets.tolist() == [0, 1, 2] and values["hist_item"].tolist() == [2, 1]  # last max_len before end


def test_store_samples_do_not_depend_on_max_len_so_lengths_share_one_build(log):
    table, _ = log
    short, long = replace(STORE, max_len=16), replace(STORE, max_len=64)
    assert build_local(table, short).equals(build_local(table, long))
    assert build_store_local(table, short).equals(build_store_local(table, long))
    at = {L: run_file({"samples": {"max_len": L, "short_len": 8, "layout": layout}})
          for L, layout in ((16, "store"), (64, "store"), (17, "copy"), (65, "copy"))}
    assert samples_key(at[16]) == samples_key(at[64])  # one cache for every L
    assert samples_key(at[17]) != samples_key(at[65])  # copy-layout samples hold max_len events
    assert samples_key(at[16]) != samples_key(run_file({"samples": {"max_len": 16, "short_len": 4,
                                                                     "layout": "store"}}))
