"""Properties every model of the zoo must have: masking, brute-force equality of the two-stage
models at k >= L (forward and backward), GSU/ESU consistency recall, and a falling loss."""
from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest
import torch

from lifelong.embeddings.collate import FeatureRangeError
from lifelong.models import entry, names
from lifelong.models.gsu.base import valid_slots
from lifelong.models.two_stage import TwoStage
from lifelong.trainers.inputs import make_collator
from lifelong.trainers.local import batches, eval_batches, fit_local
from lifelong.trainers.loop import evaluate, validate
from lifelong.trainers.model_setup import plain_model
from tests.helpers import tiny_job, tiny_samples

ALL = ["din", "din_full", "dien", "dsin", "sim_hard", "sim_soft", "eta", "sdim", "twin", "cain", "lic"]
TWO_STAGE = ["sim_hard", "sim_soft", "eta", "twin", "cain", "lic"]
K = 6  # well below the tiny histories' 64


def cfg(name: str, **extra) -> dict:
    base = {"k": K} if name in TWO_STAGE else {}
    if name == "sim_hard":
        base["gsu_in_collate"] = False  # the full history reaches the model
    return {**base, **extra}


def _widen(batch, extra_short: int, extra_long: int):
    """Same batch with more padding slots (the KJT is unchanged; dense tensors get zero columns)."""
    pad = lambda t, n: torch.cat([t, torch.zeros(t.shape[0], n, dtype=t.dtype)], 1)  # noqa: E731
    return dataclasses.replace(batch, short_ts=pad(batch.short_ts, extra_short), long_ts=pad(batch.long_ts, extra_long),
                               short_len=batch.short_len + extra_short,
                               long_len=batch.long_len + extra_long if batch.long_len else 0)


def test_every_model_is_registered():
    assert sorted(names()) == sorted(ALL)
    assert {n for n in ALL if issubclass(entry(n).module, TwoStage)} == set(TWO_STAGE)


@pytest.mark.parametrize("name", ALL + ["sim_hard@collate"])
def test_padding_changes_nothing(name):
    samples, meta = tiny_samples()
    job = tiny_job("sim_hard", meta, {"k": K}) if name == "sim_hard@collate" else tiny_job(name, meta, cfg(name))
    torch.manual_seed(0)
    model = plain_model(job).eval()
    batch = make_collator(job)(samples.slice(0, 48))
    with torch.no_grad():
        a, b = model(batch).logits, model(_widen(batch, 9, 5)).logits
    assert torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("name", ["din", "twin", "sim_soft"])
def test_user_table_feeds_the_head_and_only_its_row(name):
    samples, meta = tiny_samples()
    job = tiny_job(name, meta, cfg(name), users=True)
    torch.manual_seed(0)
    model = plain_model(job).eval()
    table = samples.slice(0, 24)
    batch = make_collator(job)(table)
    assert batch.sparse["user"].values().tolist() == table.column("user_id").to_pylist()
    users = table.column("user_id").to_numpy().copy()
    users[3] = users[3] % meta.n_users + 1  # another user for row 3 only
    moved = table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(users))
    with torch.no_grad():
        a, b = model(batch).logits, model(make_collator(job)(moved)).logits
        assert torch.allclose(model(_widen(batch, 9, 5)).logits, a, atol=1e-5)
    changed = (a - b).abs() > 1e-6
    assert changed.tolist() == [i == 3 for i in range(24)]
    users[0] = meta.n_users + 1
    bad = table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(users))
    with pytest.raises(FeatureRangeError, match="feature 'user'"):
        make_collator(job)(bad)


@pytest.mark.parametrize("name", TWO_STAGE)
def test_two_stage_with_k_at_least_L_equals_brute_force(name):
    samples, meta = tiny_samples()
    table = samples.slice(0, 48)
    logits = {}
    for k in (64, K):
        job = tiny_job(name, meta, cfg(name, k=k))
        torch.manual_seed(0)
        model = plain_model(job).eval()
        batch = make_collator(job)(table)
        emb = model.lookup(batch)
        idx, scores = model.gsu(*model.gsu_inputs(batch, emb), emb.long_mask)  # the GSU itself, no shortcut
        two_stage = model.logits(model.interest_from(batch, emb, idx, valid_slots(scores)), emb)
        brute = model.brute_force(batch)
        if name == "sim_hard":  # hard search filters by category at any k: brute force over the matches
            B, L = emb.long_mask.shape
            match = emb.long_mask & (emb.long_cat == batch.sparse["target_cat"].values().unsqueeze(1))
            all_idx = torch.arange(L).expand(B, L)
            brute = model.logits(model.interest_from(batch, emb, all_idx, match), emb)
        logits[k] = (two_stage, brute)
        if k == 64:
            assert torch.allclose(two_stage, brute, atol=1e-5), (two_stage - brute).abs().max()
            assert torch.allclose(model(batch).logits, brute, atol=1e-5)  # the trained path at k >= L
            g1 = torch.autograd.grad(two_stage.sum(), list(model.parameters()), allow_unused=True, retain_graph=True)
            g2 = torch.autograd.grad(brute.sum(), list(model.parameters()), allow_unused=True)
            for (n, _), a, b in zip(model.named_parameters(), g1, g2):
                assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-5)), n
    small, brute = logits[K]
    assert not torch.allclose(small, brute, atol=1e-3)  # k < L really selects: the check above can fail


@pytest.mark.parametrize("name", TWO_STAGE)
def test_gsu_recall_is_a_fraction_and_twin_is_consistent(name):
    samples, meta = tiny_samples()
    job = tiny_job(name, meta, cfg(name))
    torch.manual_seed(0)
    model = plain_model(job).eval()
    recall, eligible = model.gsu_recall(make_collator(job, full_history=True)(samples.slice(0, 64)))
    assert eligible.all() and ((recall >= 0) & (recall <= 1)).all()
    if name in ("twin", "cain"):  # the GSU ranks by the ESU's own logits
        assert torch.allclose(recall, torch.ones_like(recall))
    elif name == "sim_hard":
        assert recall.mean() < 1  # category match is not what the untrained ESU would pick


@pytest.mark.parametrize("name", ["sim_hard", "twin"])
def test_one_validation_pass_equals_evaluate_plus_the_recall_of_the_first_batches(name):
    """`validate` reads the valid batches once: its AUC/logloss are `evaluate`'s, its GSU recall the
    eligible-row mean over the first n batches' full histories, collated for those n batches only."""
    samples, meta = tiny_samples()
    job = tiny_job(name, meta, {"k": K}, eval_batch_size=16)  # sim_hard's GSU runs in collate here
    torch.manual_seed(0)
    model = plain_model(job).eval()
    full, n = make_collator(job, full_history=True), 3
    asked = []
    items = list(eval_batches(samples, job))
    for item in items:
        item.full_history = (lambda f: lambda: asked.append(1) or f())(item.full_history)
    got = validate(model, items, torch.device("cpu"), n)
    want = evaluate(model, batches(samples, job, 16, None), torch.device("cpu"))
    assert got["auc"] == pytest.approx(want["auc"], abs=1e-12) and got["logloss"] == pytest.approx(want["logloss"])
    assert len(asked) == n and len(items) > n
    recall = [model.gsu_recall(full(samples.slice(16 * i, 16))) for i in range(n)]
    rows = sum(int(e.sum()) for _, e in recall)
    assert got["gsu_recall_rows"] == rows > 0
    assert got["gsu_recall"] == pytest.approx(sum(float((r * e).sum()) for r, e in recall) / rows)
    if name == "sim_hard":  # the model's batches are the GSU's k, not the full history
        assert items[0].batch.long_len == K < items[0].full_history().long_len
    assert "gsu_recall" not in validate(model, items, torch.device("cpu"), 0)


@pytest.mark.parametrize("name", ALL)
def test_loss_falls(name):
    samples, meta = tiny_samples(n_users=24)
    lr = 1e-3 if name == "cain" else 3e-3  # CAIN (TCN, pyramid and TWIN attention) overshoots at 3e-3 here
    job = tiny_job(name, meta, cfg(name), epochs=3, batch_size=64, dense_lr=lr, diagnostic_batches=1)
    _, history = fit_local(job, samples, samples.slice(0, 128))
    losses = [h["train_loss"] for h in history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    assert ("valid_gsu_recall" in history[-1]) == (name in TWO_STAGE)
