"""Model properties: masking, registry validation, SIM-hard's collate-time GSU vs its reference."""
from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest
import torch

from lifelong.models import entry, model_config
from lifelong.models.layers import ActivationUnit, PReLU, TargetAttention
from lifelong.trainers.inputs import make_collator
from lifelong.trainers.model_setup import plain_model
from tests.helpers import tiny_job, tiny_samples


def test_layers_ignore_padded_values():
    torch.manual_seed(0)
    B, T, E = 5, 7, 12
    q, keys = torch.randn(B, E), torch.randn(B, T, E)
    mask = torch.rand(B, T) > 0.4
    mask[0] = False  # an empty history gives a zero interest, not NaN
    garbage = torch.where(mask.unsqueeze(-1), keys, torch.randn(B, T, E) * 100)
    for layer in (ActivationUnit(E, (8,)), TargetAttention(E, E, 8, 2)):
        clean = layer(q, keys * mask.unsqueeze(-1), mask)
        noisy = layer(q, garbage, mask)
        assert torch.allclose(clean, noisy, atol=1e-5) and torch.isfinite(noisy).all()
    assert torch.allclose(ActivationUnit(E, (8,))(q, keys, mask)[0], torch.zeros(E))


def test_prelu_fast_path_equals_nn_prelu_forward_and_backward():
    torch.manual_seed(0)
    fast, ref = PReLU(), torch.nn.PReLU()
    for slope in (0.25, -0.3, 1.5):
        for m in (fast, ref):
            torch.nn.init.constant_(m.weight, slope)
            m.zero_grad()
        x = torch.randn(64, 33)
        x[0, :5] = 0.0  # the kink: both take the slope's side (grad slope * g, no slope gradient)
        outs = []
        for m in (fast, ref):
            xi = x.clone().requires_grad_()
            y = m(xi)
            (y * torch.linspace(-1, 2, 33)).sum().backward()
            outs.append((y, xi.grad, m.weight.grad))
        for a, b in zip(*outs):
            assert torch.allclose(a, b, atol=1e-5), (slope, (a - b).abs().max())


@pytest.mark.parametrize("match_dim", [0, 4])
def test_activation_unit_on_first_layer_blocks_equals_the_concatenated_input_forward_and_backward(match_dim):
    torch.manual_seed(0)
    B, T, E = 6, 9, 12
    unit = ActivationUnit(E, (16, 8), match_dim)
    for p in unit.parameters():  # PReLU slopes and biases away from their inits
        torch.nn.init.normal_(p)
    q, keys = torch.randn(B, E, requires_grad=True), torch.randn(B, T, E, requires_grad=True)
    mask, match = torch.rand(B, T) > 0.3, torch.randint(0, 4, (B, T)) if match_dim else None
    grads = []
    for reference in (False, True):
        unit.zero_grad()
        q.grad = keys.grad = None
        out = unit(q, keys, mask, match, reference=reference)
        (out * torch.arange(E)).sum().backward()
        grads.append([out, q.grad, keys.grad] + [p.grad for p in unit.parameters()])
    assert len(grads[0]) == 3 + len(list(unit.parameters()))
    for fast, ref in zip(*grads):
        assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-4), (fast - ref).abs().max()


def test_sim_hard_collate_gsu_equals_in_model_gsu_forward_and_backward():
    samples, meta = tiny_samples()
    table = samples.slice(0, 64)
    fast, ref = tiny_job("sim_hard", meta, {"k": 5}), tiny_job("sim_hard", meta, {"k": 5, "gsu_in_collate": False})
    torch.manual_seed(0)
    m_fast = plain_model(fast)
    m_ref = plain_model(ref)
    m_ref.load_state_dict(m_fast.state_dict())
    b_fast, b_ref = make_collator(fast)(table), make_collator(ref)(table)
    assert b_fast.long_len == 5 and b_ref.long_len == 64  # only k ids reach the lookup on the fast path
    assert b_fast.sparse["long_item"].values().numel() < b_ref.sparse["long_item"].values().numel()
    out_fast, out_ref = m_fast(b_fast).logits, m_ref(b_ref).logits
    assert torch.allclose(out_fast, out_ref, atol=1e-6)
    out_fast.sum().backward()
    out_ref.sum().backward()
    for (n, p), (_, r) in zip(m_fast.named_parameters(), m_ref.named_parameters()):
        assert torch.allclose(p.grad, r.grad, atol=1e-6), n


def test_registry_validates_configs():
    assert model_config("sim_hard", {"k": 7, "head_hidden": [16]}).head_hidden == (16,)
    with pytest.raises(ValueError, match=r"model 'sim_hard' config: unknown key\(s\) \['topk'\]"):
        model_config("sim_hard", {"topk": 7})
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        entry("nope")
    with pytest.raises(dataclasses.FrozenInstanceError):
        model_config("din").head_hidden = (1,)


def test_din_full_reads_the_whole_history_and_din_only_the_tail():
    samples, meta = tiny_samples()
    table = samples.slice(0, 32)
    for name, width in (("din", 8), ("din_full", 64)):
        job = tiny_job(name, meta)
        torch.manual_seed(0)
        model = plain_model(job).eval()
        batch = make_collator(job)(table)
        with torch.no_grad():
            base = model(batch).logits
            # Change the oldest history event of every row: only din_full may react.
            old = table.column("hist_item").combine_chunks()
            items = old.values.to_numpy().copy()
            items[old.offsets.to_numpy()[:-1]] = 1
            changed = table.set_column(table.schema.get_field_index("hist_item"), "hist_item",
                                       pa.ListArray.from_arrays(old.offsets, pa.array(items)))
            moved = (model(make_collator(job)(changed)).logits - base).abs().max().item()
        assert (moved > 1e-6) == (name == "din_full"), (name, moved)
