"""Each model's own mechanics (MODELS.md's property list), on hand-built inputs."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lifelong.models import model_config
from lifelong.models.cain import CAIN, gap_inputs
from lifelong.models.dien import AUGRU, auxiliary_loss
from lifelong.models.dsin import split_sessions
from lifelong.models.gsu.base import masked_topk, masked_topk_reference
from lifelong.models.gsu.clock import circular_gap, gap_features, minute_of_day, minute_of_day_reference
from lifelong.models.gsu.relevance import InnerProduct, RelevanceGSU
from lifelong.models.gsu.simhash import SimHash, SimHashGSU, hamming
from lifelong.models.gsu.twin import TwinAttention
from lifelong.models.layers import MATCH_BUCKETS, HitSimilarityUnit, RawTargetAttention
from lifelong.models.sdim import bucket_read, bucket_sums, collision_gather
from lifelong.models.tcn import TCNLayer, receptive_fields
from lifelong.trainers.inputs import make_collator
from lifelong.trainers.model_setup import plain_model
from lifelong.models.base import loss as ctr_loss
from tests.helpers import tiny_job, tiny_samples


def test_time_gap_bucket_is_the_floor_of_log2_of_the_minutes_plus_one():
    from lifelong.models.layers import TimeGapEmbedding

    g = torch.Generator().manual_seed(0)
    now = torch.tensor([1_700_000_000, 1_600_000_000])
    minutes = torch.cat([torch.randint(0, 2**26, (2, 5000), generator=g),  # powers of two - 1, +- a minute
                         (2 ** torch.arange(0, 26)).repeat(2, 3) + torch.arange(-1, 2).repeat_interleave(26) - 1], 1)
    ts = now.unsqueeze(1) - minutes * 60 - torch.randint(0, 60, minutes.shape, generator=g)  # seconds in the minute
    gap = TimeGapEmbedding(4, 30)
    x = (now.unsqueeze(1) - ts).float().clamp(min=0) / 60.0 + 1  # minutes + 1, in float32 as the model has it
    want = torch.log2(x.double()).floor().clamp(max=29).long()  # float64: exact at powers of two and just below
    assert torch.equal(gap.bucket(now, ts), want)
    assert torch.equal(gap.bucket(now, now.unsqueeze(1) + 3600), torch.zeros(2, 1, dtype=torch.long))  # future: 0


def test_masked_topk_breaks_ties_toward_recent_and_never_picks_padding():
    scores = torch.tensor([[1.0, 3.0, 1.0, 2.0, 1.0, 9.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[True] * 5 + [False], [True, True, True, False, False, False]])
    idx, top = masked_topk(scores, mask, 3)
    assert idx[0].tolist() == [1, 3, 4]  # 3, 2 and the most recent of the tied 1s; padded 9 never wins
    assert idx[1].tolist() == [0, 1, 2] and top[1].tolist() == [5.0, 5.0, 5.0]
    idx, top = masked_topk(scores, mask, 5)
    assert idx[1, 3:].tolist() == [0, 0] and torch.isinf(top[1, 3:]).all()  # only 3 valid


def test_masked_topk_on_integer_keys_equals_its_reference():
    g = torch.Generator().manual_seed(0)
    for trial in range(400):
        B, L = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        k = int(torch.randint(1, 45, (1,), generator=g))
        if trial % 2:  # long rows, small k: the top-k runs over the best blocks only (`top_blocks`)
            L, k = int(torch.randint(60, 700, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        scores = torch.randint(-3, 4, (B, L), generator=g).float()  # many ties, negatives, zeros
        if trial % 3 == 0:
            scores = torch.randn(B, L, generator=g)
        scores[torch.rand(B, L, generator=g) < 0.1] = float("-inf")  # a filtering GSU's exclusions
        scores[torch.rand(B, L, generator=g) < 0.1] = -0.0  # ties with +0.0
        mask = torch.rand(B, L, generator=g) < (0.7 if trial % 4 != 1 else 0.01)  # some rows with < k valid
        got, want = masked_topk(scores, mask, k), masked_topk_reference(scores, mask, k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (trial, scores, mask, k)
    assert masked_topk(scores.double(), mask, 3)[0].dtype == torch.int64  # other dtypes: the reference


# --- DIEN -------------------------------------------------------------------------------------

def test_augru_is_a_gru_at_full_attention_and_frozen_at_zero():
    torch.manual_seed(0)
    aug = AUGRU(6, 5)
    x, h = torch.randn(4, 6), torch.randn(4, 5)
    assert torch.allclose(aug.step(x, h, torch.ones(4)), aug.cell(x, h), atol=1e-6)
    assert torch.equal(aug.step(x, h, torch.zeros(4)), h)
    half = aug.step(x, h, torch.full((4,), 0.5))
    assert not torch.allclose(half, h) and not torch.allclose(half, aug.cell(x, h))


def test_augru_fast_forward_equals_its_steps_forward_and_backward():
    torch.manual_seed(0)
    aug = AUGRU(6, 5)
    xs, att = torch.randn(4, 7, 6, requires_grad=True), torch.rand(4, 7)
    att[1, 4:] = 0  # padding keeps the state
    att.requires_grad_()  # the attention is trained: its gradient too
    grads = []
    for reference in (False, True):
        aug.zero_grad()
        xs.grad = att.grad = None
        out = aug(xs, att, reference=reference)
        (out * torch.arange(5)).sum().backward()
        grads.append([out, xs.grad, att.grad] + [p.grad for p in aug.parameters()])
    for fast, ref in zip(*grads):
        assert torch.allclose(fast, ref, atol=1e-6), (fast - ref).abs().max()
    assert grads[0][2][1, 4:].abs().max() > 0  # a zero attention still gets a gradient


@pytest.mark.parametrize("attention,final_only", [(False, False), (True, False), (True, True)])
def test_gated_recurrence_backward_passes_gradcheck(attention, final_only):
    from lifelong.models.recurrent import GatedRecurrence

    torch.manual_seed(0)
    T, B, H = 4, 3, 2
    gi = torch.randn(T, B, 3 * H, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3 * H, H, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3 * H, dtype=torch.float64, requires_grad=True)
    a = torch.rand(T, B, 1, dtype=torch.float64, requires_grad=True) if attention else None
    assert torch.autograd.gradcheck(GatedRecurrence.apply, (gi, w, b, a, final_only))
    states = GatedRecurrence.apply(gi, w, b, a, False)
    assert torch.equal(GatedRecurrence.apply(gi, w, b, a, True), states[-1])


def test_gru_states_equal_nn_gru_forward_and_backward():
    from lifelong.models.recurrent import gru_states

    torch.manual_seed(0)
    gru = torch.nn.GRU(6, 5, batch_first=True)
    xs = torch.randn(4, 7, 6, requires_grad=True)
    weight = torch.randn(4, 7, 5)  # every state reaches the loss, as DIEN's aux loss and attention read them
    grads = []
    for fast in (True, False):
        gru.zero_grad()
        xs.grad = None
        out = gru_states(gru, xs) if fast else gru(xs)[0]
        (out * weight).sum().backward()
        grads.append([out, xs.grad] + [p.grad for p in gru.parameters()])
    assert grads[0][0].shape == (4, 7, 5)
    for fast, ref in zip(*grads):
        assert torch.allclose(fast, ref, atol=1e-6), (fast - ref).abs().max()
    with pytest.raises(ValueError, match="one-layer"):
        gru_states(torch.nn.GRU(6, 5, num_layers=2, batch_first=True), xs)


def test_dien_auxiliary_loss_matches_the_formula():
    torch.manual_seed(0)
    B, T, D = 3, 4, 5
    h, seq = torch.randn(B, T, D), torch.randn(B, T, D)
    items = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0], [1, 6, 3, 4]])
    mask = items > 0
    perm = torch.tensor([1, 2, 0])
    got = auxiliary_loss(h, seq, items, mask, perm)
    pos, neg = [], []
    for b in range(B):
        for t in range(T - 1):
            if mask[b, t + 1]:
                pos.append(math.log(torch.sigmoid(h[b, t] @ seq[b, t + 1])))
                p = perm[b]
                if mask[p, t + 1] and items[p, t + 1] != items[b, t + 1]:
                    neg.append(math.log(1 - torch.sigmoid(h[b, t] @ seq[p, t + 1])))
    assert len(neg) < len(pos)  # row 2 borrows row 0's identical items at t = 2, 3: skipped
    # the paper's L_aux: summed over steps, averaged over the N = B rows
    assert math.isclose(got.item(), -(sum(pos) + sum(neg)) / B, rel_tol=1e-5)


def test_dien_adds_its_auxiliary_loss_only_in_training():
    samples, meta = tiny_samples()
    job = tiny_job("dien", meta)
    torch.manual_seed(0)
    model = plain_model(job)
    batch = make_collator(job)(samples.slice(0, 32))
    ctr = torch.nn.functional.binary_cross_entropy_with_logits
    out = model(batch)
    assert out.aux > 1e-3 and torch.allclose(ctr_loss(batch, out), ctr(out.logits, batch.labels) + out.aux)
    model.eval()
    out = model(batch)
    assert out.aux == 0 and torch.allclose(ctr_loss(batch, out), ctr(out.logits, batch.labels))


# --- DSIN -------------------------------------------------------------------------------------

def test_dsin_splits_sessions_at_30_minute_gaps():
    m = 60
    ts = torch.tensor([[0, 10 * m, 39 * m, 70 * m, 71 * m, 72 * m, 73 * m, 200 * m, 0, 0]])
    mask = torch.tensor([[True] * 8 + [False] * 2])
    # gaps: 10, 29 (same session), 31 (new), 1, 1, 1, 127 (new)
    slot, pos = split_sessions(ts, mask, 30 * 60, max_sessions=5, session_len=10)
    assert slot[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, -1, -1]
    assert pos[0].tolist() == [0, 1, 2, 0, 1, 2, 3, 0, -1, -1]
    slot, pos = split_sessions(ts, mask, 30 * 60, max_sessions=2, session_len=2)
    # the two most recent sessions, each with its two most recent behaviours
    assert slot[0].tolist() == [-1, -1, -1, -1, -1, 0, 0, 1, -1, -1]
    assert pos[0].tolist() == [-1, -1, -1, -1, -1, 0, 1, 0, -1, -1]


def _dsin_sessions():
    """A DSIN model in eval mode and random sessions (B, K, T, E) with masks, every session non-empty."""
    samples, meta = tiny_samples()
    job = tiny_job("dsin", meta)
    torch.manual_seed(0)
    model = plain_model(job).eval()
    B, K, T, E = 2, 5, 10, model.spec.behaviour_dim
    x, mask = torch.randn(B, K, T, E), torch.rand(B, K, T) > 0.3
    mask[:, :, 0] = True
    return job, model, x, mask


def test_dsin_session_block_is_a_transformer_encoder_layer_on_each_session():
    job, model, x, mask = _dsin_sessions()
    B, K, T, E = x.shape
    mask[1, 4] = False  # an empty session
    with torch.no_grad():
        model.bias_session.normal_()
        model.bias_position.normal_()
        got, present = model.session_interests(x, mask)
    ref = torch.nn.TransformerEncoderLayer(E, job.arch().heads, dim_feedforward=job.arch().ffn_mult * E,
                                           dropout=0.0, batch_first=True).eval()
    ref.load_state_dict(model.encoder.state_dict())
    biased = x + model.bias_session + model.bias_position + model.bias_unit  # (B, K, T, E)
    for b in range(B):
        for k in range(K):
            if not mask[b, k].any():
                assert not present[b, k] and got[b, k].abs().max() == 0
                continue
            keep = mask[b, k]
            with torch.no_grad():
                out = ref(biased[b, k][keep].unsqueeze(0))[0]  # the session's behaviours only: (n, E)
            assert torch.allclose(got[b, k], out.mean(0), atol=1e-5), (b, k)


def test_dsin_self_attention_stays_inside_sessions_and_the_bilstm_runs_both_ways():
    _, model, x, mask = _dsin_sessions()
    B, K, T, E = x.shape
    base, _ = model.session_interests(x, mask)
    x2 = x.clone()
    x2[:, 3] += 1.0  # change session 3 only
    moved, _ = model.session_interests(x2, mask)
    change = (moved - base).abs().amax(-1)  # (B, K)
    assert (change[:, 3] > 1e-4).all() and (change[:, [0, 1, 2, 4]] < 1e-6).all()
    present = torch.ones(B, K, dtype=torch.bool)
    h1, _ = model.lstm(base)
    h2, _ = model.lstm(moved)
    half = E // 2
    assert ((h1 - h2)[:, 0, half:].abs().amax() > 1e-4) and ((h1 - h2)[:, :3, :half].abs().amax() < 1e-6)
    assert present.all()


# --- SIM soft ---------------------------------------------------------------------------------

def test_sim_soft_search_table_is_separate_trained_only_by_the_auxiliary_head():
    samples, meta = tiny_samples()
    job = tiny_job("sim_soft", meta, {"k": 6, "search_dim": 4})
    torch.manual_seed(0)
    model = plain_model(job)
    tables = dict(model.sparse.embeddings.named_parameters()) | dict(model.sparse.side_embeddings.named_parameters())
    assert tables["embeddings.search_item.weight"].shape[1] == 4 and tables["embeddings.item.weight"].shape[1] == 8
    assert all(any(p is q for q in model.sparse_parameters()) for p in tables.values())
    batch = make_collator(job)(samples.slice(0, 48))
    out = model(batch)
    ctr = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels)
    search = [tables["embeddings.search_item.weight"], model.relevance.w_a.weight]
    g_ctr = torch.autograd.grad(ctr, search, retain_graph=True, allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in g_ctr)  # top-k passes no gradient
    g_all = torch.autograd.grad(ctr_loss(batch, out), search)
    assert all(g.abs().max() > 0 for g in g_all)  # the auxiliary CTR head trains them


def test_inner_product_gsu_is_top_k_by_inner_product():
    torch.manual_seed(0)
    rel = InnerProduct(6, 6, 4)
    q, c, mask = torch.randn(3, 6), torch.randn(3, 20, 6), torch.ones(3, 20, dtype=torch.bool)
    idx, _ = RelevanceGSU(rel, 5)(q, c, mask)
    r = (rel.w_b(c) @ rel.w_a(q).unsqueeze(-1)).squeeze(-1)  # (B, L)
    assert torch.equal(idx, r.topk(5, dim=1).indices.sort(1).values)


# --- ETA --------------------------------------------------------------------------------------

def test_simhash_packs_64_bits_per_int64_and_hamming_counts_differing_bits():
    h = SimHash(16, 100, seed=1)
    x, y = torch.randn(7, 16), torch.randn(7, 16)
    sx, sy = h.signature(x), h.signature(y)
    assert sx.dtype == torch.int64 and sx.shape == (7, 2)
    bits = h.sign_bits(x)
    manual = sum(int(bits[0, j]) << j for j in range(64))
    assert int(sx[0, 0]) & (2**64 - 1) == manual  # two's complement view of the first word
    assert torch.equal(hamming(sx, sy), (h.sign_bits(x) != h.sign_bits(y)).sum(-1))


def test_hamming_topk_recall_against_inner_product_topk_rises_with_bits():
    torch.manual_seed(0)
    B, L, D, k = 16, 500, 32, 50
    q, c = torch.randn(B, D), torch.randn(B, L, D)
    c = c / c.norm(dim=-1, keepdim=True)  # unit keys: inner-product order = angle order
    mask = torch.ones(B, L, dtype=torch.bool)
    exact, _ = masked_topk(torch.einsum("bd,bld->bl", q, c), mask, k)
    recalls = []
    for bits in (4, 16, 64, 256, 1024):
        h = SimHash(D, bits, seed=3)
        got, _ = SimHashGSU(k)(h.signature(q), h.signature(c), mask)
        hit = [len(set(got[b].tolist()) & set(exact[b].tolist())) / k for b in range(B)]
        recalls.append(sum(hit) / B)
    assert all(a < b for a, b in zip(recalls, recalls[1:])), recalls
    assert recalls[0] < 0.35 and recalls[-1] > 0.7, recalls


# --- SDIM -------------------------------------------------------------------------------------

def test_sdim_bucket_form_equals_collision_gather_forward_and_backward_with_padding_masked():
    torch.manual_seed(0)
    B, L, E, m, tau = 4, 30, 8, 12, 3
    h = SimHash(E, m * tau, seed=0)
    q = torch.randn(B, E)
    seq = torch.randn(B, L, E, requires_grad=True)
    mask = torch.arange(L).expand(B, L) < torch.tensor([[30], [10], [1], [0]])
    cq, cb = h.codes(q, tau), h.codes(seq, tau)
    direct = collision_gather(cq, cb, seq, mask)
    bucket = bucket_read(bucket_sums(cb, seq, mask, 2**tau), cq)
    assert torch.allclose(direct, bucket, atol=1e-5)
    g1, = torch.autograd.grad(direct.square().sum(), seq)
    g2, = torch.autograd.grad(bucket.square().sum(), seq)
    assert torch.allclose(g1, g2, atol=1e-5)
    assert (g1[~mask] == 0).all()  # padded behaviours never collide
    assert direct[3].abs().max() == 0  # empty history: nothing


@pytest.mark.parametrize("n", [1, 16, 63, 64, 100, 128])
def test_simhash_pack_and_hamming_fast_paths_equal_their_references(n):
    from lifelong.models.gsu.simhash import hamming, hamming_reference

    h = SimHash(8, 64)
    bits = torch.rand(3, 5, n) > 0.5  # (B, L, n)
    bits[0, 0] = True  # all ones: the sign bit of every full word is set
    fast, ref = h.pack(bits), h.pack_reference(bits)
    assert fast.dtype == torch.int64 and fast.shape == (3, 5, -(-n // 64)) and torch.equal(fast, ref)
    words = torch.randint(-2**63, 2**63 - 1, (4, 6, 3), dtype=torch.int64)  # negative words included
    q = words[:, :1]  # (B, 1, W) broadcast against (B, L, W), as the GSU calls it
    assert torch.equal(hamming(q, words), hamming_reference(q, words))
    assert torch.equal(hamming(fast[:, :1], fast), hamming_reference(fast[:, :1], fast))
    assert hamming(torch.tensor([-1]), torch.tensor([0])).item() == 64


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_simhash_sign_bits_by_blocks_equal_the_whole_product(blocks):
    h = SimHash(16, 64, seed=4, blocks=blocks)
    x = torch.randn(3, 50, 16)
    x[0, 0] = 0.0  # a zero embedding (padding): x R = 0 is not > 0 in either form
    got = h.sign_bits(x)
    assert got.shape == (3, 50, 64) and torch.equal(got, h.sign_bits_reference(x))
    assert not got[0, 0].any()


@pytest.mark.parametrize("rows", [1, 4, 15, 16, 1000])
def test_simhash_signature_by_chunks_of_rows_equals_the_plain_one(rows):
    h = SimHash(16, 128, seed=2, blocks=2)
    x = torch.randn(3, 5, 16)  # 15 rows: chunks of 1, 4 (one short), 15 (one), 16 and 1000 (all in one)
    want = h.pack_reference(h.sign_bits(x))  # (3, 5, 2)
    assert torch.equal(h.signature(x, rows=rows), want)
    assert torch.equal(h.signature(x[1, 2], rows=rows), want[1, 2])  # one vector, no batch dims


@pytest.mark.parametrize("tau", [1, 3, 4, 8])
def test_simhash_codes_fast_path_equals_the_plain_arithmetic(tau):
    h = SimHash(16, 48, seed=3)
    x = torch.randn(5, 7, 16)  # (B, L, E)
    fast, ref = h.codes(x, tau), h.codes_reference(x, tau)
    assert fast.dtype == ref.dtype == torch.int64 and fast.shape == (5, 7, 48 // tau)
    assert torch.equal(fast, ref) and int(fast.max()) < 2**tau
    assert torch.equal(h.codes(x[0, 0], tau), ref[0, 0])  # one vector, no batch dims
    with pytest.raises(ValueError, match="tau 9"):
        h.codes(x, 9)


def test_sdim_collision_rate_is_one_minus_angle_over_pi_to_the_tau():
    torch.manual_seed(0)
    tau, m = 3, 4000
    h = SimHash(2, m * tau, seed=5)
    for theta in (0.3, 1.0, 2.0):
        x, y = torch.tensor([1.0, 0.0]), torch.tensor([math.cos(theta), math.sin(theta)])
        rate = (h.codes(x, tau) == h.codes(y, tau)).float().mean().item()
        assert abs(rate - (1 - theta / math.pi) ** tau) < 0.03, (theta, rate)


# --- TWIN -------------------------------------------------------------------------------------

def test_twin_gsu_topk_equals_topk_of_the_esu_logits_even_after_training():
    samples, meta = tiny_samples()
    job = tiny_job("twin", meta, {"k": 6})
    torch.manual_seed(0)
    model = plain_model(job)
    assert model.attention.heads == 4
    batch = make_collator(job)(samples.slice(0, 48))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):  # the GSU must follow the live ESU parameters, not a copy
        emb = model.lookup(batch)
        idx, _ = model.gsu(*model.gsu_inputs(batch, emb), emb.long_mask)
        keys = model.all_keys(batch, emb)
        esu_logits = model.attention(emb.target, keys)  # what the ESU's softmax reads, (B, H, L)
        want, _ = masked_topk(esu_logits.mean(1), emb.long_mask, 6)
        assert torch.equal(idx, want)
        opt.zero_grad()
        ctr_loss(batch, model(batch)).backward()
        opt.step()


FOLDED = [("twin", {}), ("twin", {"match": True}), ("cain", {}),
          ("lic", {}), ("lic", {"match": True}), ("lic", {"gsu_form": "head_mean", "match": True})]


@pytest.mark.parametrize("name,config", FOLDED)
def test_folded_gsu_scores_and_selects_as_its_gsu_module_on_the_built_keys(name, config):
    """TWIN / CAIN / LIC's `gsu_scores` (no keys built) against their GSU module on the built keys."""
    samples, meta = tiny_samples()
    job = tiny_job(name, meta, {"k": 6, **config})
    torch.manual_seed(0)
    model = plain_model(job)
    if name == "lic":
        if model.clock.m is not None:
            torch.nn.init.normal_(model.clock.m)  # the match term in play (0 at init)
    else:
        torch.nn.init.normal_(model.attention.beta)  # every term of α in play (β starts at 1)
        for t in model.cross.tables():
            torch.nn.init.normal_(t.data)
    batch = make_collator(job)(samples.slice(0, 48))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        emb = model.lookup(batch)
        assert emb.long_mask.sum(1).max() > 6  # the top-k has to choose
        want = model.gsu.score(*model.gsu_inputs(batch, emb))  # (B, L) the reference: keys built, projected
        assert torch.allclose(model.gsu_scores(batch, emb), want, atol=1e-5)
        if name != "lic":  # the cross features' part alone, against its per-feature buckets
            match = model.match_of(batch, emb)
            assert torch.equal(model.mean_cross_relevance(batch, match),
                               model.mean_cross_relevance(batch, match, reference=True))
        fast, ref = model.select(batch, emb), model.select(batch, emb, reference=True)
        assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])
        opt.zero_grad()
        ctr_loss(batch, model(batch)).backward()  # the trained path selects with the folded scores
        opt.step()


def test_twin_cross_features_are_scalar_biases_with_their_own_projection_per_head():
    torch.manual_seed(0)
    att = TwinAttention(8, 8, n_cross=2, cross_dim=4, heads=4, head_dim=3)
    torch.nn.init.normal_(att.beta)  # β starts at 1; any values will do for the form
    q1, q2 = torch.randn(2, 8), torch.randn(2, 8)
    kh, kc = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    kc2 = torch.randn(2, 10, 8)
    a = lambda q, c: att(q, torch.cat([kh, c], -1))  # noqa: E731
    # changing the cross features shifts every query's logits by the same per-(behaviour, head) scalar
    assert torch.allclose(a(q1, kc) - a(q1, kc2), a(q2, kc) - a(q2, kc2), atol=1e-5)
    assert att.w_c.shape == (4, 2, 4) and att.beta.shape == (4, 2)  # w^a_j and β_a for each head a
    diff = a(q1, kc) - a(q1, kc2)  # (B, H, L): head a's shift is sum_j β_{a,j} (K_{c,j} w^a_j)
    for h in range(4):
        scal = torch.einsum("bljc,jc->blj", (kc - kc2).view(2, 10, 2, 4), att.w_c[h])
        assert torch.allclose(diff[:, h], scal @ att.beta[h], atol=1e-5)
    # The heads' cross projections are independent: each head's loss moves only its own w^a.
    for h in range(4):
        att.zero_grad()
        a(q1, kc)[:, h].sum().backward()
        grads = att.w_c.grad.abs().sum((1, 2))  # (H,)
        assert grads[h] > 0 and (grads[torch.arange(4) != h] == 0).all(), grads


def test_match_buckets_and_the_twin_match_cross_feature():
    from lifelong.models.layers import match_buckets

    items, cats = torch.tensor([[5, 7, 5, 0]]), torch.tensor([[2, 2, 3, 0]])
    assert match_buckets(torch.tensor([5]), torch.tensor([2]), items, cats).tolist() == [[3, 1, 2, 0]]
    samples, meta = tiny_samples()
    for match in (False, True):
        torch.manual_seed(0)
        model = plain_model(tiny_job("twin", meta, {"k": 6, "match": match}))
        assert model.cross.n_features == 2 + match and model.attention.n_cross == 2 + match
        batch = make_collator(tiny_job("twin", meta, {"k": 6, "match": match}))(samples.slice(0, 8))
        emb = model.lookup(batch)
        if match:  # the match table's rows reach the relevance: changing one moves exactly its behaviours
            torch.nn.init.normal_(model.attention.beta)
            buckets = model.long_match(batch)  # (B, L)
            b = int(buckets[emb.long_mask].max())
            assert b > 0  # some behaviour shares the target's category
            before = model.attention(emb.target, model.all_keys(batch, emb))
            with torch.no_grad():
                model.cross.match.weight[b] += 1.0
            emb = model.lookup(batch)
            hit = (buckets == b).unsqueeze(1).expand_as(before)  # (B, H, L)
            moved = (model.attention(emb.target, model.all_keys(batch, emb)) - before).abs() > 1e-6
            assert hit.any() and torch.equal(moved & emb.long_mask.unsqueeze(1), hit & emb.long_mask.unsqueeze(1))


@pytest.mark.parametrize("match", [False, True])
def test_cross_feature_bucket_sum_equals_each_bucket_read_forward_and_backward(match):
    """The fast sum (position term tabled per distance, `index_select` reads) against the buckets
    read one by one: gaps from the future to decades, unsorted positions, counts beyond the width."""
    from lifelong.models.layers import CrossFeatures

    g = torch.Generator().manual_seed(0)
    B, T, now = 6, 300, 2_000_000_000
    cross = CrossFeatures(4, 24, match=match)
    ts = now - torch.randint(-3600, 10**9, (B, T), generator=g)  # up to ~32 years back, some ahead
    ts[0, :60] = now - 60 * (2 ** torch.arange(60) % 2**23)  # gaps at the bucket edges
    count = torch.tensor([T, 5, 1, 70_000, 300_000, 0])  # (B,) with long_count: beyond the width
    pos = torch.stack([torch.randperm(max(int(c), T), generator=g)[:T] for c in count])  # (B, T)
    m = torch.randint(0, MATCH_BUCKETS, (B, T), generator=g) if match else None
    request = torch.full((B,), now)
    arange = torch.arange(T).expand(B, T)
    within = torch.tensor([T, 5, 1, 0, 17, 64])  # the longest row within the width: its window starts at 0
    for c, p, given in ((count, pos, pos), (count, arange, arange), (count, arange, None), (within, arange, None)):
        # None: positions 0..T-1, read by windows
        scalars = [torch.randn(len(t), requires_grad=True) for t in cross.tables()]
        want = sum(sc[b] for sc, b in zip(scalars, cross.buckets_of(request, ts, c, p, m)))
        got = cross.bucket_sum(scalars, request, ts, c, given, m)
        assert torch.equal(got, want)
        w = torch.randn(B, T)
        grads = torch.autograd.grad((got * w).sum(), scalars)
        for a, b in zip(grads, torch.autograd.grad((want * w).sum(), scalars)):
            assert torch.allclose(a, b, atol=1e-5)
    assert cross.buckets_of(request, ts, count, pos, m)[1].max() > 15  # far positions reached high buckets


@pytest.mark.parametrize("name,k", [("sim_hard", 6), ("sim_soft", 64), ("eta", 6)])  # SIM-soft's untrained
def test_gap_search_esu_reads_the_match_of_exactly_the_selected_behaviours(name, k):  # GSU: take them all
    samples, meta = tiny_samples()
    job = tiny_job(name, meta, {"k": k, "match": True})
    torch.manual_seed(0)
    model = plain_model(job)
    batch = make_collator(job)(samples.slice(0, 8))
    emb = model.lookup(batch)
    idx, valid = model.select(batch, emb)
    buckets = model.gather(model.long_match(batch), idx)  # (B, k) of the selected behaviours
    b = int(buckets[valid].max())
    assert b > 0  # some selected behaviour shares the target's category
    before = model(batch).logits
    with torch.no_grad():  # move one match bucket's row: only rows that selected such a behaviour change
        model.esu.match.weight[b] += 1.0
    moved = (model(batch).logits - before).abs() > 1e-6
    assert torch.equal(moved, ((buckets == b) & valid).any(1))
    plain = plain_model(tiny_job(name, meta, {"k": k}))
    assert plain.esu.match is None and plain.esu.attention.k.in_features + 8 == model.esu.attention.k.in_features


# --- CAIN -------------------------------------------------------------------------------------

def test_cain_tcn_lengths_kernel_and_zero_padding():
    cfg = model_config("cain", {"context": 2, "msia_kernels": [3, 5], "msia_strides": [2, 3]})
    assert cfg.kernels == (5, 3, 5) and cfg.strides == (1, 2, 3)
    torch.manual_seed(0)
    layer = TCNLayer(4, 3, kernel=5, stride=1)
    x, mask = torch.randn(2, 11, 4), torch.ones(2, 11, dtype=torch.bool)
    y, m = layer(x, mask)
    assert y.shape == (2, 11, 3) and m.shape == (2, 11)  # layer 1: one output per behaviour
    w = layer.weight[0]  # (5, 4, 3)
    xpad = torch.cat([torch.zeros(2, 2, 4), x, torch.zeros(2, 2, 4)], 1)
    for t in (0, 5, 10):  # cr_t = concat(x_{t-2..t+2}) W + b, zeros beyond the ends
        want = torch.einsum("bkd,kde->be", xpad[:, t:t + 5], w) + layer.bias
        assert torch.allclose(y[:, t], want, atol=1e-5)
    y2, m2 = TCNLayer(3, 3, kernel=3, stride=2)(y, m)
    assert y2.shape[1] == 6 and m2.shape[1] == 6


def test_cain_receptive_field_follows_the_formula():
    torch.manual_seed(0)
    kernels, strides = (5, 3, 5), (1, 2, 3)
    layers = [TCNLayer(2, 2, k, s) for k, s in zip(kernels, strides)]
    L, centre = 101, 48
    rf = receptive_fields(kernels, strides)
    assert rf == [5, 7, 15]  # layer 3 reads 5 layer-2 outputs, 2 inputs apart
    assert receptive_fields((5, 3, 3), (1, 1, 1)) == [5, 7, 9]  # cl_{n+1} = cl_n + fs_{n+1} - 1
    x = torch.randn(1, L, 2, requires_grad=True)
    mask = torch.ones(1, L, dtype=torch.bool)
    h, m = x, mask
    for n, layer in enumerate(layers):
        h, m = layer(h, m)
        j = centre // math.prod(strides[:n + 1])
        g, = torch.autograd.grad(h[0, j].sum(), x, retain_graph=True)
        seen = (g[0].abs().sum(-1) > 0).nonzero().flatten()
        assert seen.max() - seen.min() + 1 == rf[n], (n, seen)


def test_cain_peg_filters_differ_per_user_and_replace_the_global_filter():
    samples, meta = tiny_samples()
    job = tiny_job("cain", meta, {"k": 6})
    torch.manual_seed(0)
    model: CAIN = plain_model(job)
    assert all(layer.weight is None for layer in model.tcn)  # no global W_C when PEG is on
    batch = make_collator(job)(samples.take(list(range(0, 16 * 9, 9))))  # rows of several users
    emb = model.lookup(batch)
    profile = model.profile(emb)
    filters = model.tcn[0].filters(profile)  # (B, kernel, E, D)
    assert filters.shape[:2] == (16, 5)
    users = batch.user_ids
    other = int((users != users[0]).nonzero()[0])  # a row of another user (rows of one user may share a history)
    assert (filters[0] - filters[other]).abs().max() > 1e-4
    assert len(model.layer_attention) == 2 and [p[0].shape[1] for p in model.pyramid(emb)] == [64, 32, 16]


@pytest.mark.parametrize("activation", [True, False])
def test_cain_tcn_stack_is_not_one_affine_map(activation):
    """With the filters fixed (no PEG), a stack without activations maps the midpoint of two inputs
    to the midpoint of their outputs; the ReLU between layers (the default) breaks that."""
    samples, meta = tiny_samples()
    job = tiny_job("cain", meta, {"k": 6, "use_peg": False, "tcn_activation": activation})
    torch.manual_seed(0)
    model: CAIN = plain_model(job)
    emb = model.lookup(make_collator(job)(samples.slice(0, 8)))

    def deepest(long: torch.Tensor) -> torch.Tensor:
        emb.long, emb.cache = long, {}
        return model.pyramid(emb)[-1][0]  # (B, L_3, D)

    a, b = emb.long.clone(), torch.randn_like(emb.long)
    gap = (deepest((a + b) / 2) - (deepest(a) + deepest(b)) / 2).abs().max()
    assert gap > 1e-3 if activation else gap < 1e-5, gap


def test_msia_reads_with_raw_scaled_dot_product_weights_as_in_eq_9():
    att = RawTargetAttention(2, 2, 2)
    with torch.no_grad():
        for lin in (att.q, att.k, att.v):
            lin.weight.copy_(torch.eye(2))
    q = torch.tensor([[1.0, 2.0]])
    keys = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, False]])
    # sa_1 = (1*1 + 2*0) / sqrt(2), sa_2 = (1*0 + 2*3) / sqrt(2); IR = (sa_1 k_1 + sa_2 k_2) / 2 valid
    s1, s2 = 1 / math.sqrt(2), 6 / math.sqrt(2)
    want = torch.tensor([[s1 * 1 + s2 * 0, s1 * 0 + s2 * 3]]) / 2
    assert torch.allclose(att(q, keys, mask), want)
    assert torch.allclose(att(2 * q, keys, mask), 2 * want)  # no softmax: the match strength is kept


# --- LIC --------------------------------------------------------------------------------------

def test_lic_time_of_day_gap_is_circular():
    at = lambda h, mi=0: torch.tensor(1_700_000_000 // 86400 * 86400 + h * 3600 + mi * 60)  # noqa: E731
    assert minute_of_day(at(23)).item() == 23 * 60
    assert circular_gap(minute_of_day(at(23)), minute_of_day(at(1))).item() == 120
    assert circular_gap(minute_of_day(at(11)), minute_of_day(at(17))).item() == 360
    assert circular_gap(minute_of_day(at(0)), minute_of_day(at(12))).item() == 720
    assert minute_of_day(at(23), tz_offset_min=120).item() == 60  # a local clock two hours ahead
    g = torch.Generator().manual_seed(0)
    ts = torch.cat([torch.randint(-2**40, 2**40, (20000,), generator=g),  # any day, before 1970 too
                    torch.arange(-200, 200) + 1_700_006_400, torch.arange(-200, 200) * 60 + 86400 * 19000 - 1])
    for tz in (0, -300, 330, 1439):  # whole days, minute and day boundaries
        assert torch.equal(minute_of_day(ts, tz), minute_of_day_reference(ts, tz)), tz
    f = gap_features(torch.tensor([0, 120, 720]))
    assert f.shape == (3, 4) and torch.allclose(f[2], torch.ones(4)) and torch.allclose(f[0], torch.zeros(4))
    assert torch.allclose(f[1], torch.tensor([1 / 6, math.sqrt(1 / 6), 1 / 36, math.log(121) / math.log(721)]))


def test_lic_clock_relevance_uses_the_gap_mlp_and_four_heads():
    samples, meta = tiny_samples()
    job = tiny_job("lic", meta, {"k": 6})
    torch.manual_seed(0)
    model = plain_model(job)
    assert model.clock.heads == 4 and model.clock.s[0].in_features == 4
    batch = make_collator(job)(samples.slice(0, 8))
    emb = model.lookup(batch)
    q, keys = model.gsu_inputs(batch, emb)
    shifted = keys.clone()
    shifted[..., -4:] = gap_features(torch.full(keys.shape[:2], 360))  # same behaviours, another time of day
    delta = model.clock(q, keys) - model.clock(q, shifted)  # (B, H, L): only s(Δ) moved
    E = model.spec.behaviour_dim
    s_diff = (model.clock.s(keys[..., E:]) - model.clock.s(shifted[..., E:])).transpose(1, 2)
    assert torch.allclose(delta, s_diff, atol=1e-5) and delta.abs().max() > 1e-4


@pytest.mark.parametrize("match", [False, True])
def test_lic_lookup_free_terms_per_minute_of_day_equal_the_per_behaviour_gap_forward_and_backward(match):
    samples, meta = tiny_samples()
    job = tiny_job("lic", meta, {"k": 6, "match": match, "tz_offset_min": 90})
    torch.manual_seed(0)
    model = plain_model(job)
    if match:
        torch.nn.init.normal_(model.clock.m)
    batch = make_collator(job)(samples.slice(0, 16))
    got, want = model.extra_relevance(batch), model.extra_relevance(batch, reference=True)  # (B, L)
    assert got.shape == batch.long_ts.shape and torch.equal(got, want)
    params = [p for p in model.clock.parameters() if p.requires_grad]
    w = torch.randn_like(got)
    fast = torch.autograd.grad((got * w).sum(), params, allow_unused=True)
    ref = torch.autograd.grad((want * w).sum(), params, allow_unused=True)
    for a, b in zip(fast, ref):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-6))
    assert any(a is not None and a.abs().sum() > 0 for a in fast)


def test_lic_gsu_forms_equal_the_head_mean_and_the_seeds_concatenated_heads():
    samples, meta = tiny_samples()
    for form in ("head_mean", "concat"):
        job = tiny_job("lic", meta, {"k": 6, "match": True, "gsu_form": form})
        torch.manual_seed(0)
        model = plain_model(job)
        torch.nn.init.normal_(model.clock.m)  # the match bias (0 at init) counts too
        batch = make_collator(job)(samples.slice(0, 8))
        q, keys = model.gsu_inputs(batch, model.lookup(batch))
        H, d, E = model.clock.heads, model.clock.head_dim, model.spec.behaviour_dim
        kb = model.clock.w_b(keys[..., :E]).view(*keys.shape[:2], H, d)  # (B, L, H, d)
        qh = model.clock.w_q(q).view(-1, H, d)  # (B, H, d)
        dots = torch.einsum("blhd,bhd->bhl", kb, qh)  # (B, H, L)
        extra = keys[..., E:]
        time_and_match = (model.clock.s(extra[..., :4]) + extra[..., 4:] @ model.clock.m).mean(-1)  # (B, L)
        if form == "concat":  # eq. 2: the heads' projections concatenated, one s
            want = dots.sum(1) / math.sqrt(H * d) + time_and_match
        else:
            want = model.clock(q, keys).mean(1)
        assert torch.allclose(model.gsu.score(q, keys), want, atol=1e-5), form
        assert torch.allclose(model.esu_relevance(batch, model.lookup(batch)), model.clock(q, keys).mean(1))
    with pytest.raises(ValueError, match="gsu_form 'sum' not in"):
        model_config("lic", {"gsu_form": "sum"})


def test_din_match_features_reach_exactly_the_matching_behaviours_weights():
    samples, meta = tiny_samples(short_len=64)  # the planted log keeps targets out of the last 40 events
    for name in ("din", "din_full"):
        job = tiny_job(name, meta, {"match": True}, short_len=64)
        torch.manual_seed(0)
        model = plain_model(job)
        batch = make_collator(job)(samples.slice(0, 8))
        emb = model.lookup(batch)
        group = "long" if name == "din_full" else "short"
        keys, mask = (emb.long, emb.long_mask) if group == "long" else (emb.short, emb.short_mask)
        width = keys.shape[1]
        match = model.target_match(batch, group, width)  # (B, T)
        b = int(match[mask].max())
        assert b > 0
        weights = []
        model.unit.net[-1].register_forward_hook(lambda mod, args, out: weights.append(out.squeeze(-1).detach()))
        model.unit(emb.target, keys, mask, match)
        with torch.no_grad():
            model.unit.match.weight[b] += 1.0
        model.unit(emb.target, keys, mask, match)
        moved = (weights[1] - weights[0]).abs() > 1e-7  # (B, T)
        assert torch.equal(moved & mask, (match == b) & mask), name


def test_hit_similarity_unit_channels_sink_and_padding():
    torch.manual_seed(0)
    B, T, D = 4, 9, 8
    unit = HitSimilarityUnit(D, 6, 4, (8,))
    q, keys = torch.randn(B, D), torch.randn(B, T, D)
    match = torch.randint(0, MATCH_BUCKETS, (B, T))
    mask = torch.rand(B, T) > 0.3
    mask[0] = False
    out = unit(q, keys, mask, match)  # (B, 2)
    assert out.shape == (B, 2) and torch.equal(out[0], torch.zeros(2))  # nothing but the sink: no mass
    garbage = torch.where(mask.unsqueeze(-1), keys, torch.randn(B, T, D) * 100)
    assert torch.allclose(unit(q, garbage, mask, torch.where(mask, match, 3 - match)), out, atol=1e-5)
    other_keys = unit(q, torch.randn(B, T, D), mask, match)  # the hit channel reads only the match buckets
    assert torch.allclose(other_keys[:, 0], out[:, 0]) and not torch.allclose(other_keys[:, 1], out[:, 1])
    with torch.no_grad():
        unit.match.weight.add_(1.0)  # the similarity channel reads only the embeddings
    other_match = unit(q, keys, mask, match)
    assert torch.allclose(other_match[:, 1], out[:, 1]) and not torch.allclose(other_match[:, 0], out[:, 0])
    cos = unit.similarity(q, torch.stack([q, -q], 1))  # (B, 2): the target itself, its opposite
    assert torch.allclose(cos, torch.tensor([1.0, -1.0]).expand(B, 2), atol=1e-5)
    # mass = 10 * n e^r / (1 + n e^r) for n behaviours of equal logit r: monotone in n, below 10
    same = q.unsqueeze(1).expand(B, T, D)
    hits = torch.zeros(B, T, dtype=torch.long)
    masses = [unit(q, same, torch.arange(T).expand(B, T) < n, hits)[0] for n in (1, 4, 9)]
    r = (unit.scale + unit.bias[1]).item()
    for n, m in zip((1, 4, 9), masses):
        assert m[1].item() == pytest.approx(10 * n * math.exp(r) / (1 + n * math.exp(r)), rel=1e-4)
    assert masses[0][0] < masses[1][0] < masses[2][0] < 10


def test_hit_similarity_keeps_a_gradient_for_related_categories_when_hits_saturate():
    """The reason for two channels: once an exact hit has a high logit, one softmax over hit +
    similarity logits sends ~0 weight, and ~0 gradient, to every other behaviour; the separate
    similarity channel still sends each of them a gradient."""
    torch.manual_seed(0)
    B, T, D = 2, 6, 8
    unit = HitSimilarityUnit(D, 6, 4, (8,))
    with torch.no_grad():
        unit.match.weight.zero_()
        unit.hit[-1].bias.fill_(0.0)
    q = torch.randn(B, D)
    keys = torch.randn(B, T, D).requires_grad_()
    hit_logit = torch.zeros(B, T)
    hit_logit[:, 0] = 40.0  # behaviour 0 is an exact hit, learned to saturation
    sim = unit.scale * unit.similarity(q, keys) + unit.bias[1]  # (B, T)
    one = torch.softmax(torch.cat([hit_logit + sim, torch.zeros(B, 1)], 1), 1)[:, :-1].sum()
    (one_grad,) = torch.autograd.grad(one, keys)
    match = torch.zeros(B, T, dtype=torch.long)
    unit(q, keys, torch.ones(B, T, dtype=torch.bool), match)[:, 1].sum().backward()
    assert one_grad[:, 1:].abs().max() < 1e-8
    assert (keys.grad[:, 1:].abs().sum(-1) > 1e-3).all()


def test_din_hit_similarity_config_and_a_target_free_head():
    with pytest.raises(ValueError, match="set match: true"):
        model_config("din_full", {"unit": "hit_similarity"})
    with pytest.raises(ValueError, match="unit 'mlp' not in"):
        model_config("din_full", {"unit": "mlp"})
    samples, meta = tiny_samples()
    job = tiny_job("din_full", meta, {"match": True, "unit": "hit_similarity", "head_target": False})
    torch.manual_seed(0)
    model = plain_model(job)
    batch = make_collator(job)(samples.slice(0, 8))
    emb = model.lookup(batch)
    assert model.interest(batch, emb).shape == (8, 2)  # only the two channels' masses reach the head
    with torch.no_grad():
        emb.target[:, :model.spec.dim] += 5.0  # the target's item columns: read by neither channel nor the head
    assert torch.equal(model.interest(batch, emb), model.interest(batch, model.lookup(batch)))
    model(batch).logits.sum().backward()
    assert model.unit.proj.weight.grad.abs().sum() > 0 and model.unit.hit[0].weight.grad.abs().sum() > 0


def test_cain_tcn_gaps_reach_layer_one_and_only_with_the_option():
    t0 = 1_700_000_000
    ts = torch.tensor([[t0, t0 + 3600, 0]])
    got = gap_inputs(torch.tensor([t0 + 7200]), ts, torch.tensor([[True, True, False]]))  # (1, 3, 2)
    s = math.log1p(24 * 365 * 5)
    want = torch.tensor([[[math.log(3) / s, 0.0], [math.log(2) / s, math.log(2) / s], [0.0, 0.0]]])
    assert torch.allclose(got, want, atol=1e-6)
    samples, meta = tiny_samples()
    for gaps in (False, True):
        job = tiny_job("cain", meta, {"k": 6, "tcn_gaps": gaps})
        torch.manual_seed(0)
        model = plain_model(job)
        batch = make_collator(job)(samples.slice(0, 8))
        later = dataclasses.replace(batch, target_ts=batch.target_ts + 86_400 * 30)  # the same behaviours, asked later
        keys = [model.item_keys(model.lookup(b)) for b in (batch, later)]  # layer-1 context (B, L, D)
        assert torch.allclose(keys[0], keys[1]) != gaps, gaps
