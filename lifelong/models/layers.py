"""Shared layers: MLP, DIN's activation unit, the hit/similarity unit, multi-head target attention, time-gap buckets."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

MASK_FILL = -1e9  # exp underflows to exactly 0, so padded slots get exactly zero weight


class _LeakyWithSlopeGrad(torch.autograd.Function):
    """PReLU with one slope as leaky ReLU at that slope, plus the slope's gradient
    sum(grad * min(x, 0)): ATen's leaky-ReLU kernels, not its slower PReLU ones."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.slope = float(weight)
        ctx.save_for_backward(x)
        return nn.functional.leaky_relu(x, ctx.slope)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (x,) = ctx.saved_tensors
        grad_x = torch.ops.aten.leaky_relu_backward(grad, x, ctx.slope, False)
        grad_w = torch.dot(grad.reshape(-1), x.clamp(max=0).reshape(-1)).reshape(1)
        return grad_x, grad_w


class PReLU(nn.PReLU):
    """`nn.PReLU` (one slope, the same parameter) whose CPU forward and backward run as leaky ReLU
    (`_LeakyWithSlopeGrad`, ~4x faster here at (5120, 64)); elsewhere, or with one slope per
    channel, `nn.PReLU`'s own (reading the slope on a GPU would sync every call)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self.num_parameters == 1:
            return _LeakyWithSlopeGrad.apply(x, self.weight)
        return super().forward(x)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None = None) -> nn.Sequential:
    """Linear + PReLU stack; a final linear layer to out_dim if given."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), PReLU()]
        in_dim = h
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim with padded slots at exactly 0 (all-padded rows give all 0)."""
    return torch.softmax(logits.masked_fill(~mask, MASK_FILL), dim=-1) * mask


MATCH_BUCKETS = 4  # (item equal to the target's) x (category equal to the target's)


def match_buckets(target_item: torch.Tensor, target_cat: torch.Tensor, items: torch.Tensor, cats: torch.Tensor
                  ) -> torch.Tensor:
    """Per behaviour: 2 * (item == target item) + (category == target category); ids (B,) and
    (B, T) -> (B, T) in 0..3. Padding (id 0) never matches a target (ids start at 1)."""
    return 2 * (items == target_item.unsqueeze(1)).long() + (cats == target_cat.unsqueeze(1)).long()


class ActivationUnit(nn.Module):
    """DIN: w_j = MLP([e_j, q, e_j - q, e_j * q]), no softmax; interest = sum_j w_j e_j. With
    `match_dim` > 0 (our addition) the MLP also reads an embedding of whether behaviour j's item and
    category are the target's (`match_buckets`), so a weight can single out repeats of the target."""

    def __init__(self, dim: int, hidden: Sequence[int], match_dim: int = 0) -> None:
        super().__init__()
        self.match = nn.Embedding(MATCH_BUCKETS, match_dim) if match_dim else None
        self.net = mlp(4 * dim + match_dim, hidden, 1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                match: torch.Tensor | None = None, reference: bool = False) -> torch.Tensor:
        """query (B, D), keys (B, T, D), mask (B, T) -> (B, D). The MLP's first layer runs on the
        blocks of its input: W [e, q, e - q, e * q] = (W_e + W_d) e + W_p (e * q) + (W_q - W_d) q, the
        last term once per row, not per behaviour, and no (B, T, 4 D) input is built; `reference`
        builds it (the plain form, parity-tested)."""
        if self.match is not None and match is None:
            raise ValueError("ActivationUnit(match_dim > 0) needs the behaviours' match buckets")
        if reference:
            q = query.unsqueeze(1).expand_as(keys)  # (B, T, D)
            parts = [keys, q, keys - q, keys * q] + ([self.match(match)] if self.match is not None else [])
            w = self.net(torch.cat(parts, dim=-1)).squeeze(-1)  # (B, T)
        else:
            first, D = self.net[0], keys.shape[-1]
            w_e, w_q, w_d, w_p, w_m = first.weight.split([D, D, D, D, first.in_features - 4 * D], dim=1)
            h = nn.functional.linear(keys, w_e + w_d) + nn.functional.linear(keys * query.unsqueeze(1), w_p)
            h = h + nn.functional.linear(query, w_q - w_d, first.bias).unsqueeze(1)  # (B, T, hidden)
            if self.match is not None:
                h = h + nn.functional.linear(self.match(match), w_m)
            w = self.net[1:](h).squeeze(-1)  # (B, T)
        w = w * mask
        return torch.einsum("bt,btd->bd", w, keys)  # (B, D)


class HitSimilarityUnit(nn.Module):
    """Two readouts of a sequence for one target (our addition, issue 16), each a softmax over the
    behaviours plus a sink of logit 0, returning the mass the behaviours take from the sink (x10):
    it grows with the number of relevant behaviours and does not dilute a few among thousands.
    - hit: logit_j = MLP(embedding of behaviour j's match bucket with the target);
    - similarity: logit_j = s * cos(P c_t, P c_j) + b over category embeddings, P shared by
      target and behaviours, s and b learned.
    The channels are separate so that exact hits, which the hit channel explains at once, do not
    starve the similarity channel's gradient: it learns the rest, such as related but unequal
    categories. Inputs: target (B, D), keys (B, T, D), mask (B, T), match (B, T); out (B, 2)."""

    def __init__(self, dim: int, sim_dim: int, match_dim: int, hidden: Sequence[int],
                 scale: float = 5.0, bias: float = -6.0) -> None:
        super().__init__()
        self.match = nn.Embedding(MATCH_BUCKETS, match_dim)
        self.hit = mlp(match_dim, hidden, 1)
        self.proj = nn.Linear(dim, sim_dim, bias=False)
        self.scale = nn.Parameter(torch.tensor(scale))
        self.bias = nn.Parameter(torch.full((2,), bias))

    def similarity(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Cosine of the shared projections, (B, D) x (B, T, D) -> (B, T)."""
        q = nn.functional.normalize(self.proj(query), dim=-1)  # (B, R)
        k = nn.functional.normalize(self.proj(keys), dim=-1)  # (B, T, R)
        return torch.einsum("br,btr->bt", q, k)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, match: torch.Tensor
                ) -> torch.Tensor:
        hit = self.hit(self.match(match)).squeeze(-1) + self.bias[0]  # (B, T)
        sim = self.scale * self.similarity(query, keys) + self.bias[1]  # (B, T)
        logits = torch.stack([hit, sim], 1)  # (B, 2, T)
        sink = logits.new_zeros(*logits.shape[:2], 1)  # (B, 2, 1)
        keep = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], -1).unsqueeze(1)  # (B, 1, T + 1): the sink is real
        return 10 * masked_softmax(torch.cat([logits, sink], -1), keep)[..., :-1].sum(-1)  # (B, 2)


class TargetAttention(nn.Module):
    """Multi-head target attention: the target is the only query; returns (B, out_dim)."""

    def __init__(self, query_dim: int, key_dim: int, model_dim: int, heads: int) -> None:
        super().__init__()
        if model_dim % heads:
            raise ValueError(f"model_dim {model_dim} not divisible by heads {heads}")
        self.heads, self.head_dim = heads, model_dim // heads
        self.q = nn.Linear(query_dim, model_dim)
        self.k = nn.Linear(key_dim, model_dim)
        self.v = nn.Linear(key_dim, model_dim)
        self.o = nn.Linear(model_dim, model_dim)

    def logits(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Per-head attention logits (B, H, T)."""
        B, T, _ = keys.shape
        q = self.q(query).view(B, self.heads, self.head_dim)  # (B, H, dh)
        k = self.k(keys).view(B, T, self.heads, self.head_dim)  # (B, T, H, dh)
        return torch.einsum("bhd,bthd->bht", q, k) / math.sqrt(self.head_dim)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = keys.shape
        w = masked_softmax(self.logits(query, keys), mask.unsqueeze(1))  # (B, H, T)
        v = self.v(keys).view(B, T, self.heads, self.head_dim)  # (B, T, H, dh)
        out = torch.einsum("bht,bthd->bhd", w, v).reshape(B, self.heads * self.head_dim)  # (B, H*dh)
        return self.o(out)


class RawTargetAttention(nn.Module):
    """Single-head target attention with raw weights (CAIN's MSIA read, the seed's eq. 9):
    `IR = sum_t sa_t W^V k_t`, `sa_t = <W^Q q, W^K k_t> / sqrt(d)`, no softmax, so the output keeps
    how strongly the context matches the target. The sum is divided by the number of valid t (our
    scaling: a raw sum over hundreds of positions grows with the sequence length); (B, dim)."""

    def __init__(self, query_dim: int, key_dim: int, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(query_dim, dim, bias=False)
        self.k = nn.Linear(key_dim, dim, bias=False)
        self.v = nn.Linear(key_dim, dim, bias=False)
        self.dim = dim

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        sa = torch.einsum("bd,btd->bt", self.q(query), self.k(keys)) / math.sqrt(self.dim) * mask  # (B, T)
        return torch.einsum("bt,btd->bd", sa, self.v(keys)) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, dim)


class TimeGapEmbedding(nn.Module):
    """Embedding of log2-bucketed gaps in minutes between the request and each behaviour."""

    def __init__(self, dim: int, buckets: int = 24) -> None:
        super().__init__()
        self.buckets = buckets
        self.emb = nn.Embedding(buckets, dim)

    def bucket(self, request_ts: torch.Tensor, ts: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """floor(log2(gap in minutes + 1)), capped at the last bucket: (B, T) of `dtype`. In float32
        after the subtraction (the same values as clamping the int64 gap first: the sign survives
        the conversion); floor(log2(x)) of x >= 1 is x's binary exponent, read from its bits (exact,
        where a float32 log2 rounds up just below a power of two; 1.5 -> 0.8 ms at (64, 10^4))."""
        x = (request_ts.unsqueeze(1) - ts).float().clamp_(min=0).div_(60.0).add_(1)  # (B, T) gap in minutes + 1
        return (x.view(torch.int32) >> 23).sub_(127).clamp_(max=self.buckets - 1).to(dtype)

    def forward(self, request_ts: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        return self.emb(self.bucket(request_ts, ts))  # (B, T, dim)


class GapAttention(nn.Module):
    """SIM's ESU (also SIM-soft's and ETA's): each behaviour concatenated with the embedding of its
    log-bucketed time gap to the request, then multi-head target attention. With `match_dim` > 0
    (our addition) each behaviour also carries an embedding of its match with the target
    (`match_buckets`), in its attention key and its value."""

    def __init__(self, dim: int, gap_dim: int, gap_buckets: int, model_dim: int, heads: int, match_dim: int = 0
                 ) -> None:
        super().__init__()
        self.gap = TimeGapEmbedding(gap_dim, gap_buckets)
        self.match = nn.Embedding(MATCH_BUCKETS, match_dim) if match_dim else None
        self.attention = TargetAttention(dim, dim + gap_dim + match_dim, model_dim, heads)
        self.out_dim = model_dim

    def keys(self, request_ts: torch.Tensor, seq: torch.Tensor, ts: torch.Tensor,
             match: Optional[torch.Tensor] = None) -> torch.Tensor:
        parts = [seq, self.gap(request_ts, ts)]
        if self.match is not None:
            if match is None:
                raise ValueError("GapAttention(match_dim > 0) needs the behaviours' match buckets")
            parts.append(self.match(match))  # (B, T, match_dim)
        return torch.cat(parts, -1)  # (B, T, D + gap_dim [+ match_dim])

    def logits(self, query: torch.Tensor, request_ts: torch.Tensor, seq: torch.Tensor, ts: torch.Tensor,
               match: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.attention.logits(query, self.keys(request_ts, seq, ts, match))  # (B, H, T)

    def forward(self, query: torch.Tensor, request_ts: torch.Tensor, seq: torch.Tensor, ts: torch.Tensor,
                mask: torch.Tensor, match: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.attention(query, self.keys(request_ts, seq, ts, match), mask)  # (B, model_dim)


class CrossFeatures(nn.Module):
    """User-item cross features of lifelong behaviours (TWIN's K_c, also CAIN's): embeddings of the
    log-bucketed time gap to the request and of the log-bucketed distance from the newest
    behaviour and, with `match`, of whether the behaviour's item / category is the target's
    (`match_buckets`; our addition, see `models/twin.py`) -> (B, T, n_features * dim)."""

    def __init__(self, dim: int, buckets: int = 24, match: bool = False) -> None:
        super().__init__()
        self.gap = TimeGapEmbedding(dim, buckets)
        self.position = nn.Embedding(buckets, dim)
        self.match = nn.Embedding(MATCH_BUCKETS, dim) if match else None
        self.buckets = buckets
        self.n_features = 3 if match else 2

    def position_bucket(self, from_newest: torch.Tensor) -> torch.Tensor:
        """floor(log2(distance from the newest behaviour + 1)), capped at the last bucket."""
        return torch.log2(from_newest.float() + 1).floor().long().clamp(max=self.buckets - 1)

    def buckets_of(self, request_ts: torch.Tensor, ts: torch.Tensor, count: torch.Tensor, pos: torch.Tensor,
                   match: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Bucket ids of each feature (each (B, T)) for behaviours at positions pos (B, T) of
        histories with count (B,) behaviours; ts (B, T); match (B, T) when the module has it."""
        from_newest = (count.unsqueeze(1) - 1 - pos).clamp(min=0)  # (B, T)
        out = [self.gap.bucket(request_ts, ts), self.position_bucket(from_newest)]
        return out + ([self._match(match)] if self.match is not None else [])

    def _match(self, match: torch.Tensor | None) -> torch.Tensor:
        if match is None:
            raise ValueError("CrossFeatures(match=True) needs the behaviours' match buckets")
        return match

    def bucket_sum(self, scalars: list[torch.Tensor], request_ts: torch.Tensor, ts: torch.Tensor, count: torch.Tensor,
                   pos: Optional[torch.Tensor], match: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_j scalars[j][bucket_j] (B, T) for one scalar per bucket of each feature (`tables()` order):
        `sum(s[b] for s, b in zip(scalars, buckets_of(...)))` with pos None meaning positions 0..T-1.
        The position term comes from a table per distance (the same bucket formula on 0..max
        distance): with pos None each row's terms are one window of that table reversed, else one
        read per behaviour; every read an `index_select`."""
        take = lambda s, b: s.index_select(0, b.reshape(-1)).view(b.shape)  # noqa: E731  (B, T)
        B, T = ts.shape
        if T == 0:
            return ts.new_zeros((B, 0), dtype=scalars[0].dtype)
        if pos is None:  # row b, position t: distance count_b - 1 - t, clamped at 0
            longest = max(int(count.max()) if len(count) else 0, 1)
        else:
            from_newest = (count.unsqueeze(1) - 1 - pos).clamp_(min=0)  # (B, T)
            longest = int(from_newest.max()) + 1 if from_newest.numel() else 1
        per_distance = scalars[1][self.position_bucket(torch.arange(longest, device=ts.device))]  # (D,)
        if pos is None:
            rev = torch.cat([per_distance.flip(0), per_distance[:1].expand(T)])  # (D + T,): distance D-1 .. 0, 0...
            by_position = rev.unfold(0, T, 1).index_select(0, longest - count)  # (B, T): row b from D - count_b
        else:
            by_position = take(per_distance, from_newest)
        out = take(scalars[0], self.gap.bucket(request_ts, ts, torch.int32)).add_(by_position)
        return out.add_(take(scalars[2], self._match(match))) if self.match is not None else out

    def tables(self) -> list[torch.Tensor]:
        """Each feature's embedding table (buckets, dim), in output order."""
        return [self.gap.emb.weight, self.position.weight] + ([self.match.weight] if self.match is not None else [])

    def forward(self, request_ts: torch.Tensor, ts: torch.Tensor, count: torch.Tensor, pos: torch.Tensor,
                match: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, n_features * dim) for behaviours at positions pos (B, T) of histories with count (B,)
        behaviours."""
        buckets = self.buckets_of(request_ts, ts, count, pos, match)
        return torch.cat([nn.functional.embedding(b, w) for b, w in zip(buckets, self.tables())], -1)
