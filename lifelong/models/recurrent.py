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
    a (T, B, 1) attention or None -> every state h_1..h_T (T, B, H) from h_0 = 0, or h_T (B, H)
    alone when `final_only`."""

    @staticmethod
    def forward(ctx, gi: torch.Tensor, w: torch.Tensor, b: torch.Tensor, a: Optional[torch.Tensor],
                final_only: bool) -> torch.Tensor:
        T, B, H3 = gi.shape
        H = H3 // 3
        one = gi.new_ones(())  # 0-dim: an op with a Python number pays ~3 us to wrap it on CPU
        HS = gi.new_empty(T + 1, B, H)  # states, h_0 first
        HS[0].zero_()
        RZ, GHn, N = gi.new_empty(T, B, 2 * H), gi.new_empty(T, B, H), gi.new_empty(T, B, H)
        U = None if a is None else gi.new_empty(T, B, H)
        pre_rz = (gi[..., :2 * H] + b[:2 * H]).unbind(0)  # (B, 2H) per step: the rz gates' input part and bias
        gi_n = gi[..., 2 * H:].unbind(0)
        w_rz, w_n, b_n = w[:2 * H].t(), w[2 * H:].t(), b[2 * H:]
        hs, rz, r, k, ghn, n = (HS.unbind(0), RZ.unbind(0), RZ[..., :H].unbind(0), RZ[..., H:].unbind(0),
                                GHn.unbind(0), N.unbind(0))  # per-step views, made once
        for t in range(T):
            torch.addmm(pre_rz[t], hs[t], w_rz, out=rz[t]).sigmoid_()  # [r, k]
            torch.addmm(b_n, hs[t], w_n, out=ghn[t])  # h W_n^T + b_n
            torch.addcmul(gi_n[t], r[t], ghn[t], out=n[t]).sigmoid_()
            torch.add(n[t], n[t], out=n[t]).sub_(one)  # 2 s - 1
            u = k[t] if a is None else torch.mul(k[t], a[t], out=U[t])
            torch.lerp(hs[t], n[t], u, out=hs[t + 1])
        ctx.save_for_backward(w, a, HS, GHn, RZ, N, U)
        ctx.final_only = final_only
        return HS[T] if final_only else HS[1:]

    @staticmethod
    def backward(ctx, d_states: torch.Tensor):
        w, a, HS, GHn, RZ, N, U = ctx.saved_tensors
        T, B, H = N.shape
        d_n_pre = N.square().sub_(1).mul_(-0.5)  # dn / dn_pre = (1 - n^2) / 2, all steps at once
        d_rz_pre = RZ - RZ.square()  # sigmoid' = s (1 - s)
        DG = d_states.new_empty(T, B, 3 * H)  # d (h W^T + b): [d rz_pre, d gh_n]
        DN = d_states.new_empty(T, B, H)  # d n_pre (= d gi_n)
        want_a = a is not None and ctx.needs_input_grad[3]
        da = d_states.new_empty(T, B, 1) if want_a else None
        hs, r, k, ghn, n = HS.unbind(0), RZ[..., :H].unbind(0), RZ[..., H:].unbind(0), GHn.unbind(0), N.unbind(0)
        dg, dg_rz, dg_r, dg_k, dg_n, dn_pre = (DG.unbind(0), DG[..., :2 * H].unbind(0), DG[..., :H].unbind(0),
                                               DG[..., H:2 * H].unbind(0), DG[..., 2 * H:].unbind(0), DN.unbind(0))
        f_n, f_rz = d_n_pre.unbind(0), d_rz_pre.unbind(0)
        dh = (d_states if ctx.final_only else d_states[T - 1]).clone()  # (B, H)
        dn, du = torch.empty_like(dh), torch.empty_like(dh)
        for t in range(T - 1, -1, -1):
            d_u = dg_k[t] if a is None else du  # a GRU: dk = du, written in place
            torch.sub(n[t], hs[t], out=d_u).mul_(dh)  # dL/du = dh (n - h)
            torch.mul(dh, k[t] if a is None else U[t], out=dn)  # dL/dn = dh u
            dh.sub_(dn)  # the direct path: dh (1 - u)
            torch.mul(dn, f_n[t], out=dn_pre[t])
            torch.mul(dn_pre[t], r[t], out=dg_n[t])  # d gh_n
            torch.mul(dn_pre[t], ghn[t], out=dg_r[t])  # dr
            if a is not None:
                torch.mul(du, a[t], out=dg_k[t])  # dk = du a
                if want_a:
                    torch.sum(du * k[t], 1, keepdim=True, out=da[t])  # da = sum du k
            dg_rz[t].mul_(f_rz[t])
            dh.addmm_(dg[t], w)  # through h W^T
            if t and not ctx.final_only:
                dh.add_(d_states[t - 1])
        d_gi = torch.cat([DG[..., :2 * H], DN], -1)  # (T, B, 3H)
        d_w = DG.view(T * B, 3 * H).t() @ HS[:-1].reshape(T * B, H)  # (3H, H): all steps in one product
        return d_gi, d_w, DG.sum((0, 1)), da, None


def gate_scale(H: int, like: torch.Tensor) -> torch.Tensor:
    """(3H,) row scales of `nn.GRU`'s weights for `GatedRecurrence`: 1 (r), -1 (z: sigmoid(-x) is
    1 - sigmoid(x)), 2 (n: tanh x = 2 sigmoid(2 x) - 1)."""
    return torch.tensor([1.0, -1.0, 2.0], dtype=like.dtype, device=like.device).repeat_interleave(H)


def run_gated(xs: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
              att: Optional[torch.Tensor] = None, final_only: bool = False) -> torch.Tensor:
    """xs (B, T, D) batch-first, `nn.GRU`-layout weights, att (B, T) or None -> states (T, B, H),
    or the last state (B, H) when `final_only`."""
    H = w_hh.shape[1]
    scale = gate_scale(H, xs)
    gi = nn.functional.linear(xs.transpose(0, 1).contiguous(), w_ih * scale[:, None], b_ih * scale)  # (T, B, 3H)
    a = None if att is None else att.t().unsqueeze(-1).contiguous()  # (T, B, 1)
    return GatedRecurrence.apply(gi, w_hh * scale[:, None], b_hh * scale, a, final_only)


def gru_states(gru: nn.GRU, xs: torch.Tensor) -> torch.Tensor:
    """A one-layer batch-first `nn.GRU`'s outputs (B, T, H) from h_0 = 0: its weights, this file's
    recurrence (a strided view of the time-major states)."""
    if gru.num_layers != 1 or gru.bidirectional or not gru.batch_first or not gru.bias:
        raise ValueError("gru_states: a one-layer, one-way, batch-first GRU with biases only")
    return run_gated(xs, gru.weight_ih_l0, gru.bias_ih_l0, gru.weight_hh_l0, gru.bias_hh_l0).transpose(0, 1)
