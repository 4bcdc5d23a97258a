"""Cached GSU keys and the two-phase lookup: parity with the plain path, staleness, dedup."""
from __future__ import annotations

import pytest
import torch

from lifelong.embeddings.key_cache import dedup_lookup
from lifelong.models.gsu.simhash import SimHash
from lifelong.trainers.config import TrainConfig
from lifelong.trainers.inputs import make_collator
from lifelong.trainers.local import fit_local, local_optimizer
from lifelong.trainers.model_setup import plain_model
from tests.helpers import tiny_job, tiny_samples

CACHED = ["twin", "twin+match", "lic", "lic+match", "lic+gsu_form=head_mean", "eta", "eta+match"]  # +match: the
# target-match features, +key=value: a model_config key


def _pair(variant: str, random_beta: bool = True, **train):
    """(cached model, plain model) with the same weights, the cache freshly refreshed; TWIN's
    cross-feature weights β drawn at random, unless `random_beta` is False (then β = 0 and the
    cross features drop out: behaviours with equal keys tie exactly in both paths)."""
    samples, meta = tiny_samples()
    model, *opts = variant.split("+")
    cfg = {"k": 6, **({"match": True} if "match" in opts else {}),
           **{k: v for k, v in (o.split("=", 1) for o in opts if "=" in o)}}
    fast = tiny_job(model, meta, cfg, users=True, key_cache_every=1, **train)
    ref = tiny_job(model, meta, cfg, users=True)
    torch.manual_seed(0)
    m_fast = plain_model(fast)
    if hasattr(getattr(m_fast, "attention", None), "beta"):
        (torch.nn.init.normal_ if random_beta else torch.nn.init.zeros_)(m_fast.attention.beta)
    if getattr(getattr(m_fast, "clock", None), "m", None) is not None:
        torch.nn.init.normal_(m_fast.clock.m)  # LIC's match bias (0 at init) counts too
    m_ref = plain_model(ref)
    m_ref.load_state_dict({k: v for k, v in m_fast.state_dict().items() if not k.startswith("sparse.key_cache.")})
    m_fast.refresh_keys()
    return m_fast, m_ref, make_collator(fast)(samples.slice(0, 48)), fast


@pytest.mark.parametrize("model", CACHED)
def test_cached_gsu_two_phase_lookup_equals_plain_path_forward_and_backward(model):
    m_fast, m_ref, batch, _ = _pair(model)
    assert batch.long_len > m_fast.gsu.k  # the GSU has to choose
    looked = []
    m_fast.sparse.embeddings.register_forward_hook(
        lambda mod, args, out: looked.append(args[0]["long_item"].values().numel()))
    out_fast, out_ref = m_fast(batch).logits, m_ref(batch).logits
    assert looked and looked[0] <= batch.size * m_fast.gsu.k  # only the k selected ids reach the main tables
    assert looked[0] < batch.sparse["long_item"].values().numel()
    assert torch.allclose(out_fast, out_ref, atol=1e-5)
    out_fast.sum().backward()
    out_ref.sum().backward()
    ref = dict(m_ref.named_parameters())
    for n, p in m_fast.named_parameters():
        if n.startswith("sparse.key_cache."):
            assert p.grad is None  # the cache is not trained
            continue
        assert (p.grad is None) == (ref[n].grad is None), n
        if p.grad is not None:
            assert torch.allclose(p.grad, ref[n].grad, atol=1e-5), n


@pytest.mark.parametrize("model", CACHED)
@pytest.mark.parametrize("dedup", [False, "distinct", "whole", "expanded"])
def test_fast_cached_selection_equals_its_reference(model, dedup, monkeypatch):
    """Jagged / per-distinct-id / per-table-row scoring (read at padded positions, or expanded to
    the behaviours first) vs padded keys through the GSU module."""
    from lifelong.embeddings import key_cache
    from lifelong.models import cached_keys

    m_fast, _, batch, _ = _pair(model)
    m_fast.sparse.dedup_ids = bool(dedup)
    monkeypatch.setattr(key_cache, "WHOLE_TABLE_RATIO", 10**6 if dedup == "whole" else 0)
    monkeypatch.setattr(cached_keys, "PAIR_RATIO", 0 if dedup == "expanded" else 10**6)
    rows = m_fast.sparse.cached_rows(batch)
    for feature, (found, inv) in rows.items():  # which form ran: the table whole (ids as the inverse), or distinct ids
        assert (inv is None) == (not dedup), feature
        if dedup == "whole":
            assert len(found) == m_fast.sparse.cache_dedup[feature] and inv.dtype == torch.int64, feature
        elif dedup in ("distinct", "expanded"):
            assert inv.dtype == torch.int32, feature
    idx_fast, valid_fast = m_fast.select_cached(batch)
    idx_ref, valid_ref = m_fast.select_cached(batch, reference=True)
    assert torch.equal(valid_fast, valid_ref)
    assert torch.equal(idx_fast, idx_ref)


@pytest.mark.parametrize("model", CACHED)
def test_cached_gsu_picks_the_same_top_k_as_the_live_gsu(model):
    m_fast, _, batch, _ = _pair(model)
    scheme = m_fast.cached_keys()
    # what the trainer built the cache from: the tables and their widths the model declares
    assert scheme.tables == m_fast.cache_tables(m_fast.config) == m_fast.sparse.cache_tables
    assert {c.embedding_dim for c in m_fast.sparse.key_cache.embedding_configs()} == {scheme.key_dim}
    cached = m_fast.sparse.cached(batch)
    mask = m_fast.lookup(batch).long_mask
    idx_c, s_c = scheme.gsu(*scheme.gsu_inputs(batch, cached), mask)  # the reference form
    emb = m_fast.lookup(batch)
    idx_l, s_l = m_fast.gsu(*m_fast.gsu_inputs(batch, emb), mask)
    assert torch.equal(idx_c, idx_l)
    assert torch.allclose(s_c, s_l, atol=1e-5)


def test_stale_cache_is_reported_and_refresh_restores_parity():
    # β = 0: after a step, two behaviours of one item can tie within 1e-7 in the live and the
    # cached scores alike, and top-k may then break the tie either way (seen with random β)
    m_fast, m_ref, batch, job = _pair("twin", random_beta=False)
    opt = local_optimizer(job, m_fast)
    m_fast(batch).logits.sum().backward()
    opt.step()  # the tables and W_h move; the cache does not
    m_ref.load_state_dict({k: v for k, v in m_fast.state_dict().items() if not k.startswith("sparse.key_cache.")})
    with torch.no_grad():
        stale = m_fast(batch).logits
    drift = m_fast.refresh_keys()
    assert drift["rel_change"] > 1e-4 and drift["rows_changed"] > 0.5
    with torch.no_grad():
        fresh, ref = m_fast(batch).logits, m_ref(batch).logits
    assert torch.allclose(fresh, ref, atol=1e-5)
    assert m_fast.refresh_keys() == {"rel_change": 0.0, "rows_changed": 0.0}
    assert not torch.equal(stale, fresh) or drift["rel_change"] < 1e-3


def test_dedup_lookup_equals_plain_lookup_values_and_grads():
    samples, meta = tiny_samples()
    job = tiny_job("din_full", meta, users=True)
    batch = make_collator(job)(samples.slice(0, 32))
    torch.manual_seed(0)
    a, b = plain_model(job), plain_model(job)
    b.load_state_dict(a.state_dict())
    out_a = a.sparse.embeddings(batch.sparse)
    out_b = dedup_lookup(b.sparse.embeddings, batch.sparse, job.features.feature_rows())
    ids = batch.sparse["long_item"].values()
    assert ids.unique().numel() < ids.numel()  # there are repeats to remove
    loss_a = sum((out_a[k].values() ** 2).sum() for k in batch.sparse.keys())
    loss_b = sum((out_b[k].values() ** 2).sum() for k in batch.sparse.keys())
    assert torch.allclose(loss_a, loss_b)
    loss_a.backward()
    loss_b.backward()
    for (n, p), (_, q) in zip(a.sparse.embeddings.named_parameters(), b.sparse.embeddings.named_parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), n


def test_simhash_part_halves_rebuild_the_block_signature():
    h = SimHash(32, 64, seed=2, blocks=2)
    x = torch.randn(10, 32)
    halves = torch.cat([h.part_halves(x[:, :16], 0), h.part_halves(x[:, 16:], 1)], -1)  # (10, 4)
    assert halves.max() < 2 ** 16 and halves.dtype == torch.float32
    assert torch.equal(h.pack_halves(halves), h.signature(x))
    assert (h.R[:16, 32:] == 0).all() and (h.R[16:, :32] == 0).all()  # block-diagonal


def test_key_cache_config_errors_and_models_without_cache():
    with pytest.raises(ValueError, match="key_cache_every"):
        TrainConfig(key_cache_every=-1)
    samples, meta = tiny_samples()
    m = plain_model(tiny_job("din", meta, key_cache_every=5))
    assert m.sparse.key_cache is None  # not a cacheable GSU: the setting is ignored
    with pytest.raises(ValueError, match="eta bits"):
        tiny_job("eta", meta, {"bits": 40})
    from lifelong.embeddings.key_cache import cache_collection
    from lifelong.embeddings.sparse_arch import SparseArch
    from lifelong.models import entry
    from lifelong.models.cached_keys import projected_tables

    spec, tables = m.spec, projected_tables(8)
    side = entry("sim_soft").module.inputs(tiny_job("sim_soft", meta).arch()).side_tables  # SIM-soft's search tables
    with pytest.raises(ValueError, match="key cache and side tables together"):
        SparseArch(spec, spec.collection(), spec.side_collection(side), side, cache_collection(spec, tables), tables)
    with pytest.raises(ValueError, match="key cache goes with its cache tables"):
        SparseArch(spec, spec.collection(), key_cache=cache_collection(spec, tables))


def test_training_with_the_key_cache_reports_drift_and_learns():
    samples, meta = tiny_samples()
    train, valid = samples.slice(0, 160), samples.slice(160)
    job = tiny_job("twin", meta, {"k": 6}, users=True, key_cache_every=3, batch_size=16, epochs=3)
    _, hist = fit_local(job, train, valid)
    assert hist[0]["key_cache_refreshes"] == 4 + 1  # steps 0, 3, 6, 9 of 10, then before evaluation
    assert hist[-1]["key_cache_refreshes"] == 10 + 3  # global steps 0, 3, ..., 27, and three evaluations
    for h in hist:
        assert 0 < h["key_cache_rel_change"] < 1
        assert 0 < h["key_cache_topk_overlap"] <= 1
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_topk_overlap_counts_shared_valid_positions():
    from lifelong.trainers.loop import topk_overlap

    a = (torch.tensor([[0, 3, 5], [1, 2, 0]]), torch.tensor([[True, True, True], [True, True, False]]))
    b = (torch.tensor([[3, 4, 5], [2, 0, 0]]), torch.tensor([[True, True, True], [True, False, False]]))
    assert topk_overlap(a, b) == 3 / 4  # 3 and 5 of row 0, 2 of row 1; row 1's padded 0 never counts


def test_unique_ids_by_marking_rows_equals_torch_unique():
    from lifelong.embeddings.key_cache import unique_ids

    ids = torch.randint(0, 50, (300,))
    u, inv = unique_ids(ids, 50)
    ru, rinv = torch.unique(ids, return_inverse=True)
    assert torch.equal(u, ru) and torch.equal(inv, rinv)
    u, inv = unique_ids(ids, 10**7)  # a huge table: falls back to sorting
    assert torch.equal(u, ru) and torch.equal(inv, rinv)
    with pytest.raises(ValueError, match="id 50 is out of range for a table of 50 rows"):
        unique_ids(torch.cat([ids, torch.tensor([50])]), 50)
    with pytest.raises(RuntimeError):
        unique_ids(torch.cat([ids, torch.tensor([-1])]), 50)


def test_a_checkpoint_without_the_cache_loads_into_a_cached_model(tmp_path):
    from lifelong.trainers import checkpoint

    _, m_plain, batch, job = _pair("twin")
    checkpoint.save(m_plain, tmp_path, job.to_dict(), "plan", {}, None, {"global_step": 3})
    torch.manual_seed(1)
    m_cached = plain_model(job)
    state = checkpoint.load(m_cached, tmp_path)
    assert state == {"global_step": 3, "key_cache_loaded": False}  # the caller must refresh
    m_cached.refresh_keys()
    with torch.no_grad():
        assert torch.allclose(m_cached(batch).logits, m_plain(batch).logits, atol=1e-5)
    checkpoint.save(m_cached, tmp_path / "with", job.to_dict(), "plan", {}, None, {"global_step": 4})
    assert checkpoint.load(plain_model(job), tmp_path / "with") == {"global_step": 4}
