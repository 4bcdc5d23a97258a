"""Arrow -> KJT collate round trip, range errors, and the collate-time GSU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong.embeddings.collate import Collator, FeatureRangeError, pad
from lifelong.embeddings.spec import FeatureSpec
from lifelong.models.gsu.hard import HardSearchGSU, HardSearchPrefilter
from tests.helpers import tiny_samples


def test_round_trip():
    samples, meta = tiny_samples()
    t = samples.slice(0, 40)
    spec = FeatureSpec(meta.n_items, meta.n_categories, 8)
    b = Collator(spec, short_len=5, long_len=20, use_long=True)(t)
    jt = {k: v.to_dense() for k, v in b.sparse.to_dict().items()}  # feature -> per-row tensors
    for row in range(t.num_rows):
        hist = t.column("hist_item")[row].as_py()
        cats = t.column("hist_cat")[row].as_py()
        ts = t.column("hist_ts")[row].as_py()
        assert jt["target_item"][row].tolist() == [t.column("item_id")[row].as_py()]
        assert jt["short_item"][row].tolist() == hist[-5:]
        assert jt["long_item"][row].tolist() == hist[-20:]
        assert jt["long_cat"][row].tolist() == cats[-20:]
        assert b.long_ts[row, :len(ts[-20:])].tolist() == ts[-20:]
        assert b.short_ts[row, :len(ts[-5:])].tolist() == ts[-5:]
    assert b.labels.tolist() == t.column("label").to_numpy().astype(float).tolist()


def assert_same_batch(a, b) -> None:
    assert a.sparse.keys() == b.sparse.keys()
    assert torch.equal(a.sparse.values(), b.sparse.values()) and torch.equal(a.sparse.lengths(), b.sparse.lengths())
    for f in ("target_ts", "short_ts", "long_ts", "labels", "user_ids"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f
    assert (a.short_len, a.long_len) == (b.short_len, b.long_len)


@pytest.mark.parametrize("prefilter", [None, 3])
def test_a_split_batch_is_the_batches_of_its_slices_and_drops_only_a_short_tail(prefilter):
    """`Collator.split` (the Ray path's `Batches`): collated at once, cut by row, equal to collating
    each slice alone; rows short of a batch at the end are left out."""
    from lifelong.embeddings.collate import Batches

    samples, meta = tiny_samples()
    spec = FeatureSpec(meta.n_items, meta.n_categories, 8, meta.n_users)
    collate = Collator(spec, 5, 20, True, HardSearchPrefilter(prefilter) if prefilter else None)
    t = samples.slice(0, 103)
    got = Batches(collate, 25)(t)
    assert [b.size for b in got] == [25] * 4  # 3 rows left out
    for i, b in enumerate(got):
        assert_same_batch(b, collate(t.slice(25 * i, 25)))
    assert len(collate.split(t, 103)) == 1 and collate.split(t, 104) == []
    assert_same_batch(collate.split(t, 103)[0], collate(t))


def test_out_of_range_id_names_the_feature():
    samples, meta = tiny_samples()
    spec = FeatureSpec(meta.n_items - 1, meta.n_categories, 8)  # a table one row too small
    with pytest.raises(FeatureRangeError, match=r"feature '(target|short|long)_item'"):
        Collator(spec, 5, 20, True)(samples)


@pytest.mark.parametrize("k", [1, 3, 50])
def test_prefilter_matches_torch_gsu(k):
    rng = np.random.default_rng(k)
    B = 64
    lengths = rng.integers(0, 40, B)
    off = np.concatenate([[0], np.cumsum(lengths)])
    cats = rng.integers(1, 5, off[-1])
    target = rng.integers(1, 5, B)
    pos, new_off = HardSearchPrefilter(k)(target, cats, off)
    cand = torch.from_numpy(pad(cats, off, 40))
    mask = torch.from_numpy(pad(np.ones(off[-1], bool), off, 40))
    idx, scores = HardSearchGSU(k)(torch.from_numpy(target), cand, mask)
    for b in range(B):
        got = (pos[new_off[b]:new_off[b + 1]] - off[b]).tolist()
        want = idx[b][scores[b] > -np.inf].tolist()
        assert got == want  # same positions, oldest first
        matches = np.flatnonzero(cats[off[b]:off[b + 1]] == target[b])
        assert got == matches[-k:].tolist()  # the k most recent matches
    # the per-row-range form (a sequence store's column; ranges in any order, gaps between them)
    order = rng.permutation(B)
    store_off = np.concatenate([[0], np.cumsum(lengths[order] + 3)])  # 3 unrelated events after each row
    store = rng.integers(1, 5, store_off[-1])
    starts = np.empty(B, np.int64)
    starts[order] = store_off[:-1]
    for b in range(B):
        store[starts[b]:starts[b] + lengths[b]] = cats[off[b]:off[b + 1]]
    at, ranges_off = HardSearchPrefilter(k).search(target, store, starts, starts + lengths)
    assert np.array_equal(ranges_off, new_off)
    assert np.array_equal(at - np.repeat(starts, np.diff(new_off)), pos - np.repeat(off[:-1], np.diff(new_off)))
