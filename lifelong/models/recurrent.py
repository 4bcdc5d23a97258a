"""DIEN's recurrences (its GRU and AUGRU) as one autograd node with a written-out backward.

One gated step, `nn.GRUCell`'s gate layout (r, z, n) with the keep gate's rows negated so one
sigmoid gives r and k = 1 - z, and the candidate's rows doubled so that a sigmoid gives its tanh
(tanh x = 2 sigmoid(2 x) - 1; ATen's CPU tanh is ~6x slower than its sigmoid at (256, 32)):

    [r, k] = sigmoid(gi_rz + h W_rz^T + b_rz),  n = 2 sigmoid(gi_n + r (h W_n^T + b_n)) - 1,
    h' = lerp(h, n, u),  u = k (a GRU) or u = a k (an AUGRU, attention a).

Autograd over these steps pays for ~10 nodes a step and a weight-gradient product a step; here
the forward writes every step's gates into (T, B, .) buffers, the backward runs the steps in
reverse with in-place ops and forms the hidden weights' gradient as one product over all steps.
`nn.GRU` (DIEN's extractor) and `AUGRU.step` are the plain forms, parity-tested forward and
backward (tests/test_mechanics.py).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class GatedRecurrence(torch.autograd.Function):
    """gi (T, B, 3H) input projections (time-major), w (3H, H), b (3H) the hidden projection,
    a (T, B, 1) attention or None -> every state h_1..h_T (T, B, H), from h_0 = 0."""

    @staticmethod
    def forward(ctx, gi: torch.Tensor, w: torch.Tensor, b: torch.Tensor, a: Optional[torch.Tensor]) -> torch.Tensor:
        T, B, H3 = gi.shape
        H = H3 // 3
        HS = gi.new_empty(T + 1, B, H)  # states, h_0 first
        HS[0].zero_()
        GH, RZ, N = gi.new_empty(T, B, H3), gi.new_empty(T, B, 2 * H), gi.new_empty(T, B, H)
        U = None if a is None else gi.new_empty(T, B, H)
        hs, gh, rz, n = HS.unbind(0), GH.unbind(0), RZ.unbind(0), N.unbind(0)
        wt = w.t()
        for t, g in enumerate(gi.unbind(0)):
            torch.addmm(b, hs[t], wt, out=gh[t])  # (B, 3H)
            torch.add(g[:, :2 * H], gh[t][:, :2 * H], out=rz[t]).sigmoid_()  # [r, k]
            torch.addcmul(g[:, 2 * H:], rz[t][:, :H], gh[t][:, 2 * H:], out=n[t]).sigmoid_().mul_(2).sub_(1)
            u = rz[t][:, H:] if a is None else torch.mul(rz[t][:, H:], a[t], out=U[t])
            torch.lerp(hs[t], n[t], u, out=hs[t + 1])
        ctx.save_for_backward(w, a, HS, GH, RZ, N, U)
        return HS[1:]

    @staticmethod
    def backward(ctx, d_states: torch.Tensor):
        w, a, HS, GH, RZ, N, U = ctx.saved_tensors
        T, B, H = N.shape
        DG = d_states.new_empty(T, B, 3 * H)  # d (h W^T + b): [d rz_pre, d gh_n]
        DN = d_states.new_empty(T, B, H)  # d n_pre (= d gi_n)
        want_a = a is not None and ctx.needs_input_grad[3]
        da = d_states.new_empty(T, B, 1) if want_a else None
        hs, gh, rz, n, dg, dn_pre = HS.unbind(0), GH.unbind(0), RZ.unbind(0), N.unbind(0), DG.unbind(0), DN.unbind(0)
        dh = d_states[T - 1].clone()  # (B, H)
        dn, du, sig = torch.empty_like(dh), torch.empty_like(dh), d_states.new_empty(B, 2 * H)
        for t in range(T - 1, -1, -1):
            r, k, g = rz[t][:, :H], rz[t][:, H:], dg[t]
            d_u = g[:, H:2 * H] if a is None else du  # a GRU: dk = du, written in place
            torch.sub(n[t], hs[t], out=d_u).mul_(dh)  # dL/du = dh (n - h)
            torch.mul(dh, k if a is None else U[t], out=dn)  # dL/dn = dh u
            dh.sub_(dn)  # the direct path: dh (1 - u)
            torch.addcmul(dn, dn * n[t], n[t], value=-1, out=dn_pre[t]).mul_(0.5)  # dn (1 - n^2) / 2
            torch.mul(dn_pre[t], r, out=g[:, 2 * H:])  # d gh_n
            torch.mul(dn_pre[t], gh[t][:, 2 * H:], out=g[:, :H])  # dr
            if a is not None:
                torch.mul(du, a[t], out=g[:, H:2 * H])  # dk = du a
                if want_a:
                    torch.sum(du * k, 1, keepdim=True, out=da[t])  # da = sum du k
            torch.addcmul(rz[t], rz[t], rz[t], value=-1, out=sig)  # sigmoid': s (1 - s)
            g[:, :2 * H].mul_(sig)
            dh.addmm_(g, w)  # through h W^T
            if t:
                dh.add_(d_states[t - 1])
        d_gi = torch.cat([DG[..., :2 * H], DN], -1)  # (T, B, 3H)
        d_w = DG.view(T * B, 3 * H).t() @ HS[:-1].reshape(T * B, H)  # (3H, H): all steps in one product
        return d_gi, d_w, DG.sum((0, 1)), da


def gate_scale(H: int, like: torch.Tensor) -> torch.Tensor:
    """(3H,) row scales of `nn.GRU`'s weights for `GatedRecurrence`: 1 (r), -1 (z: sigmoid(-x) is
    1 - sigmoid(x)), 2 (n: tanh x = 2 sigmoid(2 x) - 1)."""
    return torch.tensor([1.0, -1.0, 2.0], dtype=like.dtype, device=like.device).repeat_interleave(H)


def run_gated(xs: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
              att: Optional[torch.Tensor] = None) -> torch.Tensor:
    """xs (B, T, D) batch-first, `nn.GRU`-layout weights, att (B, T) or None -> states (T, B, H)."""
    H = w_hh.shape[1]
    scale = gate_scale(H, xs)
    gi = nn.functional.linear(xs.transpose(0, 1).contiguous(), w_ih * scale[:, None], b_ih * scale)  # (T, B, 3H)
    a = None if att is None else att.t().unsqueeze(-1).contiguous()  # (T, B, 1)
    return GatedRecurrence.apply(gi, w_hh * scale[:, None], b_hh * scale, a)


def gru_states(gru: nn.GRU, xs: torch.Tensor) -> torch.Tensor:
    """A one-layer batch-first `nn.GRU`'s outputs (B, T, H) from h_0 = 0: its weights, this file's
    recurrence (a strided view of the time-major states)."""
    if gru.num_layers != 1 or gru.bidirectional or not gru.batch_first or not gru.bias:
        raise ValueError("gru_states: a one-layer, one-way, batch-first GRU with biases only")
    return run_gated(xs, gru.weight_ih_l0, gru.bias_ih_l0, gru.weight_hh_l0, gru.bias_hh_l0).transpose(0, 1)
