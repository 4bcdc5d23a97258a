"""DSIN: Deep Session Interest Network (Feng et al., IJCAI 2019), on the short history.

The history is split into sessions wherever two consecutive behaviours are more than
`session_gap_min` minutes apart; the `max_sessions` most recent sessions are kept, each with
its `session_len` most recent behaviours. Bias encoding (session + position + embedding-unit
biases) then a Transformer encoder block inside each session (PyTorch's `TransformerEncoderLayer`:
multi-head self-attention and a feed-forward layer, each with a residual and LayerNorm, as the
paper's "self-attention following the Transformer"; dropout 0, feed-forward width `ffn_mult` x E:
our choices), averaged -> session interests I_k.
A Bi-LSTM over I_1..I_K gives H_k. Against the target, two softmax activations (the paper's
bilinear `a_k = softmax(I_k W q)`) give U^I and U^H; head: MLP over [target, U^I, U^H].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.sparse_arch import SparseArch
from lifelong.models.base import CTRModel, Embedded
from lifelong.models.layers import masked_softmax
from lifelong.models.registry import register


@dataclass(frozen=True)
class DSINConfig:
    session_gap_min: float = 30.0
    max_sessions: int = 5
    session_len: int = 10
    heads: int = 2
    ffn_mult: int = 4  # the encoder block's feed-forward width, in multiples of the behaviour dim
    head_hidden: tuple[int, ...] = (128, 64)


def split_sessions(ts: torch.Tensor, mask: torch.Tensor, gap_s: float, max_sessions: int, session_len: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Session slot (0 = oldest kept) and position in session of each behaviour, -1 where dropped.

    ts, mask (B, S), left-aligned, oldest first. A session starts at the first behaviour and at
    every gap > gap_s seconds; the last `max_sessions` sessions and the last `session_len`
    behaviours of each are kept."""
    B, S = ts.shape
    t = torch.arange(S, device=ts.device).expand(B, S)
    prev = torch.cat([ts[:, :1], ts[:, :-1]], 1)
    new = mask & ((t == 0) | (ts - prev > gap_s))  # (B, S) session starts
    sid = new.long().cumsum(1) - 1  # (B, S) session index, oldest = 0
    n = new.long().sum(1, keepdim=True)  # (B, 1)
    slot = sid - (n - max_sessions).clamp(min=0)
    start = torch.where(new, t, torch.zeros_like(t)).cummax(1).values  # (B, S)
    sizes = torch.zeros_like(t).scatter_add(1, sid.clamp(min=0), mask.long())  # (B, S) per session
    end = start + sizes.gather(1, sid.clamp(min=0)) - 1
    pos = t - torch.maximum(start, end - session_len + 1)
    keep = mask & (slot >= 0) & (pos >= 0)
    return torch.where(keep, slot, -1), torch.where(keep, pos, -1)


@register("dsin", DSINConfig)
class DSIN(CTRModel):
    def __init__(self, config: DSINConfig, sparse: SparseArch) -> None:
        super().__init__(config, sparse)
        spec = sparse.spec
        E, K, T = spec.behaviour_dim, config.max_sessions, config.session_len
        self.bias_session = nn.Parameter(torch.zeros(K, 1, 1))
        self.bias_position = nn.Parameter(torch.zeros(1, T, 1))
        self.bias_unit = nn.Parameter(torch.zeros(1, 1, E))
        self.encoder = nn.TransformerEncoderLayer(E, config.heads, dim_feedforward=config.ffn_mult * E,
                                                  dropout=0.0, batch_first=True)
        self.lstm = nn.LSTM(E, E // 2, batch_first=True, bidirectional=True)
        self.w_i = nn.Linear(E, E, bias=False)
        self.w_h = nn.Linear(2 * (E // 2), E, bias=False)
        self.head = self.make_head(E + E + 2 * (E // 2), config.head_hidden)

    def session_tensor(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        """Behaviours laid out per session: (B, K, T, E) and mask (B, K, T)."""
        c = self.config
        slot, pos = split_sessions(batch.short_ts, emb.short_mask, c.session_gap_min * 60, c.max_sessions,
                                   c.session_len)
        b, t = (slot >= 0).nonzero(as_tuple=True)
        B, E = emb.short.shape[0], emb.short.shape[-1]
        where = (b, slot[b, t], pos[b, t])
        x = emb.short.new_zeros(B, c.max_sessions, c.session_len, E).index_put(where, emb.short[b, t])
        mask = torch.zeros(B, c.max_sessions, c.session_len, dtype=torch.bool, device=x.device)
        mask[where] = True
        return x, mask

    def session_interests(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bias encoding + in-session Transformer block, averaged: (B, K, E) and session mask (B, K)."""
        B, K, T, E = x.shape
        x = (x + self.bias_session + self.bias_position + self.bias_unit) * mask.unsqueeze(-1)
        flat, fmask = x.reshape(B * K, T, E), mask.reshape(B * K, T)  # sessions attend only within themselves
        present = fmask.any(1)
        pad = ~fmask & present.unsqueeze(1)  # empty sessions attend to zeros (no NaN), then are zeroed
        out = self.encoder(flat, src_key_padding_mask=pad)  # (B*K, T, E)
        out = out * fmask.unsqueeze(-1)
        interests = out.sum(1) / fmask.sum(1, keepdim=True).clamp(min=1)  # (B*K, E)
        return interests.view(B, K, E), present.view(B, K)

    def interest(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        x, mask = self.session_tensor(batch, emb)
        sessions, present = self.session_interests(x, mask)  # (B, K, E), (B, K) left-aligned
        lengths = present.sum(1)
        packed = pack_padded_sequence(sessions, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=sessions.shape[1])  # (B, K, 2 * (E // 2))
        q = emb.target
        a_i = masked_softmax(torch.einsum("bke,be->bk", sessions, self.w_i(q)), present)  # (B, K)
        a_h = masked_softmax(torch.einsum("bke,be->bk", self.w_h(h), q), present)
        u_i, u_h = torch.einsum("bk,bke->be", a_i, sessions), torch.einsum("bk,bke->be", a_h, h)
        return torch.cat([q, u_i, u_h], -1)
