"""CAIN: Context-Aware Interest Network ("Context-Aware Lifelong Sequential Modeling for Online
Click-Through Rate Prediction", WeChat Channels, 2025, arXiv:2502.12634): TCN context, MSIA, PEG.

TCN (`tcn.py`): layer 1, kernel 2·context+1 and stride 1, turns each lifelong behaviour into a
context representation cr_t of its neighbours. MSIA: further TCN layers with stride > 1
(`msia_kernels`, `msia_strides`) give shorter sequences with wider context. Layer 1 feeds the
main two-stage attention (our default: TWIN-style CP-GSU/ESU on [cr_t, cross features]); each
later layer n feeds its own single-head target attention -> IR_n; all IR_n are concatenated.
Two departures from the seed are our defaults, chosen on valid AUC (MovieLens, L = 256, one
epoch, 2 seeds; BENCHMARKS.md): the TCN stack has no activation between layers (the seed credits
the deeper layers to the TCN's nonlinearity: `tcn_activation: true` puts a ReLU after every layer;
0.682 vs 0.686), and MSIA's weights are softmax-normalised with an output projection
(`msia_weights: raw` is the seed's eq. 9 `IR_n = sum_t sa_t W^V_n cr^n_t` with raw scaled dot
products, `layers.RawTargetAttention`, the sum divided by the valid length: 0.678; both seed forms
together 0.675). By default the TCN reads item and category embeddings only and time gaps enter
after it, in the main attention's cross features (our choice, same budget: 0.6863 ± 0.0047 valid
without gaps in the TCN, 0.6847 ± 0.0068 with them, a tie); `tcn_gaps: true` also feeds layer 1
each behaviour's log gap to the request and to its neighbour in the sequence (`gap_inputs`).
PEG: every TCN layer's filter is generated per user from profile features
`I` by a two-layer MLP. Our logs carry no demographics, so `I` holds the paper's second group,
behaviour statistics: log history lengths and the mean short and lifelong behaviour embeddings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.sparse_arch import SparseArch
from lifelong.models.base import Embedded, InputSpec
from lifelong.models.gsu.relevance import RelevanceGSU
from lifelong.models.gsu.twin import TwinAttention
from lifelong.models.layers import ActivationUnit, CrossFeatures, RawTargetAttention, TargetAttention
from lifelong.models.registry import register
from lifelong.models.tcn import TCNLayer
from lifelong.models.two_stage import TwinFrame

N_TCN_GAPS = 2
GAP_SCALE = math.log1p(24 * 365 * 5)  # log1p(hours) of five years -> 1


def gap_inputs(request_ts: torch.Tensor, ts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per behaviour at ts (B, L): [log1p(hours to the request), log1p(hours to the previous
    behaviour in the sequence)] / log1p(5 years), 0 for the first behaviour and padded slots: (B, L, 2)."""
    hours = lambda d: torch.log1p(d.clamp(min=0).float() / 3600) / GAP_SCALE  # noqa: E731
    to_request = hours(request_ts.unsqueeze(1) - ts)  # (B, L)
    to_previous = torch.cat([torch.zeros_like(to_request[:, :1]), hours((ts[:, 1:] - ts[:, :-1]).abs())], 1)
    has_previous = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], 1) & mask  # (B, L)
    return torch.stack([to_request * mask, to_previous * has_previous], -1)  # (B, L, 2)


@dataclass(frozen=True)
class CAINConfig:
    k: int = 100
    context: int = 2  # cl: layer 1 reads 2 cl + 1 behaviours
    tcn_dim: int = 32
    msia_kernels: tuple[int, ...] = (3, 3)
    msia_strides: tuple[int, ...] = (2, 2)
    use_peg: bool = True
    peg_hidden: int = 32
    heads: int = 4
    head_dim: int = 8
    cross_dim: int = 8
    cross_buckets: int = 24
    use_short: bool = True
    tcn_activation: bool = False  # True: a ReLU after every TCN layer (the seed); False: a linear stack
    msia_weights: str = "softmax"  # "raw": the seed's eq. 9 scaled dot products; "softmax": normalised, with
    #                                an output projection (`layers.TargetAttention`, one head)
    tcn_gaps: bool = False  # layer 1 also reads each behaviour's log time gaps (to the request, to its neighbour)
    attention_hidden: tuple[int, ...] = (64, 32)
    head_hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:
        if len(self.msia_kernels) != len(self.msia_strides):
            raise ValueError("cain: msia_kernels and msia_strides must have the same length")
        if any(s < 2 for s in self.msia_strides):
            raise ValueError("cain: MSIA layers after the first need stride > 1")
        if self.msia_weights not in ("raw", "softmax"):
            raise ValueError(f"cain: msia_weights '{self.msia_weights}' not in ('raw', 'softmax')")

    @property
    def kernels(self) -> tuple[int, ...]:
        return (2 * self.context + 1,) + self.msia_kernels

    @property
    def strides(self) -> tuple[int, ...]:
        return (1,) + self.msia_strides


@register("cain", CAINConfig)
class CAIN(TwinFrame):
    def __init__(self, config: CAINConfig, sparse: SparseArch) -> None:
        super().__init__(config, sparse)
        spec = sparse.spec
        E, D = spec.behaviour_dim, config.tcn_dim
        profile = 2 + 2 * E if config.use_peg else None
        first = E + (N_TCN_GAPS if config.tcn_gaps else 0)
        self.tcn = nn.ModuleList(TCNLayer(first if n == 0 else D, D, k, s, profile, config.peg_hidden)
                                 for n, (k, s) in enumerate(zip(config.kernels, config.strides)))
        self.cross = CrossFeatures(config.cross_dim, config.cross_buckets)
        self.attention = TwinAttention(E, D, self.cross.n_features, config.cross_dim, config.heads, config.head_dim)
        self.gsu = RelevanceGSU(self.attention, config.k)
        self.layer_attention = nn.ModuleList(
            RawTargetAttention(E, D, D) if config.msia_weights == "raw" else TargetAttention(E, D, D, 1)
            for _ in config.msia_kernels)
        self.unit = ActivationUnit(E, config.attention_hidden) if config.use_short else None
        width = E + self.attention.out_dim + D * len(config.msia_kernels) + (E if config.use_short else 0)
        self.head = self.make_head(width, config.head_hidden)

    @classmethod
    def inputs(cls, config: CAINConfig) -> InputSpec:
        return InputSpec(use_long=True)

    def lookup(self, batch: Batch) -> Embedded:
        emb = super().lookup(batch)
        if self.config.tcn_gaps:
            emb.cache["tcn_gaps"] = gap_inputs(batch.target_ts, batch.long_ts, emb.long_mask)
        return emb

    @staticmethod
    def profile(emb: Embedded) -> torch.Tensor:
        """Behaviour statistics per user: (B, 2 + 2E)."""
        mean = lambda x, m: (x * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1)  # noqa: E731
        n = torch.stack([emb.short_mask.sum(1), emb.long_mask.sum(1)], -1).float()  # (B, 2)
        return torch.cat([torch.log1p(n), mean(emb.short, emb.short_mask), mean(emb.long, emb.long_mask)], -1)

    def pyramid(self, emb: Embedded) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every TCN layer's (output (B, L_n, D), mask (B, L_n)); computed once per batch."""
        if "tcn" not in emb.cache:
            profile = self.profile(emb) if self.config.use_peg else None
            x, mask, out = emb.long, emb.long_mask, []
            if self.config.tcn_gaps:
                x = torch.cat([x, emb.cache["tcn_gaps"]], -1)  # (B, L, E + 2)
            for layer in self.tcn:
                x, mask = layer(x, mask, profile)
                if self.config.tcn_activation:
                    x = torch.relu(x)  # (B, L_n, D)
                out.append((x, mask))
            emb.cache["tcn"] = out
        return emb.cache["tcn"]

    def item_keys(self, emb: Embedded) -> torch.Tensor:
        return self.pyramid(emb)[0][0]  # layer-1 context cr_t, (B, L, D)

    def interest_from(self, batch: Batch, emb: Embedded, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        parts = [emb.target, self.attention.read(emb.target, self.keys(batch, emb, idx), valid)]
        for attend, (cr, mask) in zip(self.layer_attention, self.pyramid(emb)[1:]):
            parts.append(attend(emb.target, cr, mask))  # IR_n, n >= 2
        if self.unit is not None:
            parts.append(self.unit(emb.target, emb.short, emb.short_mask))
        return torch.cat(parts, -1)
