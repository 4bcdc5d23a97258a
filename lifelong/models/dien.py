"""DIEN: Deep Interest Evolution Network (Zhou et al., AAAI 2019), on the short history.

Interest extractor: a GRU over behaviour embeddings gives hidden states h_t. Auxiliary loss: h_t
must score the next behaviour e_{t+1} above a negative ê_{t+1}, the paper's
`L_aux = -(1/N) sum_i sum_t (log σ(<h_t, e_{t+1}>) + log(1 - σ(<h_t, ê_{t+1}>)))`: summed over the
steps, averaged over the N rows; total `L_ctr + α L_aux`.
Negatives are sampled in-batch: the behaviour at the same step of another (random) row, skipped
where it is padding or the same item as the positive (the paper samples from the item pool; in
batch needs no extra lookup and follows the item frequency). Interest evolving: AUGRU, whose
update gate is scaled by the attention `a_t = softmax_t(h_t W q)`; its final state is the
interest. Head: MLP over [target, interest, mean of the short history].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.sparse_arch import SparseArch
from lifelong.models.base import CTRModel, Embedded
from lifelong.models.layers import masked_softmax
from lifelong.models.recurrent import gru_states, run_gated
from lifelong.models.registry import register


@dataclass(frozen=True)
class DIENConfig:
    aux_weight: float = 0.05  # α; the paper's L_aux sums over the steps: at α = 1 it outweighs the CTR loss
    #                           (MovieLens, S = 20: valid AUC 0.680 vs 0.690 at 0.05, BENCHMARKS.md)
    head_hidden: tuple[int, ...] = (128, 64)


class AUGRU(nn.Module):
    """GRU with attentional update gate. Gate layout (r, z, n) as `nn.GRUCell`, whose keep gate z
    makes the update u = 1 - z; AUGRU uses u' = a_t u, so a_t = 1 is exactly a GRU step and
    a_t = 0 keeps the state (padding)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(dim, hidden)  # holds the weights; the step is written out below

    def step(self, x: torch.Tensor, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        c = self.cell
        gi = nn.functional.linear(x, c.weight_ih, c.bias_ih).chunk(3, -1)  # 3 x (B, H)
        gh = nn.functional.linear(h, c.weight_hh, c.bias_hh).chunk(3, -1)
        r = torch.sigmoid(gi[0] + gh[0])
        u = (1 - torch.sigmoid(gi[1] + gh[1])) * a.unsqueeze(-1)  # attentional update gate
        n = torch.tanh(gi[2] + r * gh[2])
        return (1 - u) * h + u * n

    def forward(self, xs: torch.Tensor, att: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """xs (B, T, D), att (B, T) -> final state (B, H): the steps as one autograd node with a
        written-out backward (`recurrent.run_gated`); `reference` runs `step` T times
        (parity-tested forward and backward)."""
        if reference:
            h = xs.new_zeros(xs.shape[0], self.cell.hidden_size)
            for t in range(xs.shape[1]):
                h = self.step(xs[:, t], h, att[:, t])
            return h
        c = self.cell
        return run_gated(xs, c.weight_ih, c.bias_ih, c.weight_hh, c.bias_hh, att, final_only=True)


def auxiliary_loss(h: torch.Tensor, seq: torch.Tensor, items: torch.Tensor, mask: torch.Tensor,
                   perm: torch.Tensor) -> torch.Tensor:
    """DIEN's next-behaviour loss with in-batch negatives (rows `perm` supply ê_{t+1}), summed over
    steps and averaged over rows. h (B, T, D) states, seq (B, T, D) embeddings, items (B, T) ids,
    mask (B, T); a step without a valid negative contributes its positive term only."""
    pos, neg = seq[:, 1:], seq[perm, 1:]  # (B, T-1, D)
    ok = mask[:, 1:]
    ok_neg = ok & mask[perm, 1:] & (items[perm, 1:] != items[:, 1:])
    logit_pos = (h[:, :-1] * pos).sum(-1)  # (B, T-1)
    logit_neg = (h[:, :-1] * neg).sum(-1)
    lp = nn.functional.logsigmoid(logit_pos) * ok
    ln = nn.functional.logsigmoid(-logit_neg) * ok_neg
    return -(lp.sum() + ln.sum()) / h.shape[0]


@register("dien", DIENConfig)
class DIEN(CTRModel):
    def __init__(self, config: DIENConfig, sparse: SparseArch) -> None:
        super().__init__(config, sparse)
        spec = sparse.spec
        E = spec.behaviour_dim
        self.extractor = nn.GRU(E, E, batch_first=True)  # hidden = E so <h_t, e_{t+1}> is defined
        self.attention = nn.Linear(E, E, bias=False)  # W in a_t = softmax(h_t W q)
        self.evolution = AUGRU(E, E)
        self.head = self.make_head(3 * E, config.head_hidden)

    def interest(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        seq, mask = emb.short * emb.short_mask.unsqueeze(-1), emb.short_mask  # (B, S, E), (B, S)
        h = gru_states(self.extractor, seq)  # (B, S, E); left-aligned, so padding after a row never reaches it
        if self.training and self.config.aux_weight:
            items = batch.sparse["short_item"].to_padded_dense(desired_length=batch.short_len)  # (B, S)
            perm = torch.randperm(seq.shape[0]).to(seq.device)  # the host RNG: same seed, same negatives on any device
            emb.aux.append(self.config.aux_weight * auxiliary_loss(h, seq, items, mask, perm))
        # h_t W q as a product and a sum: an einsum here is a batched matrix-vector product, ~5x slower on CPU
        a = masked_softmax((h * self.attention(emb.target).unsqueeze(1)).sum(-1), mask)  # (B, S)
        final = self.evolution(h, a)
        mean = seq.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return torch.cat([emb.target, final, mean], -1)
