"""Temporal convolution along a behaviour sequence (CAIN's TCN), with global or per-sample filters.

Output j is centred on input j * stride and reads `kernel` inputs around it, zero padded at both
ends: `cr_j = concat(x_{js-h .. js+h}) W + b`, h = (kernel - 1) / 2. Padded behaviours are zeroed
first, so trailing padding never changes a valid output. Per-sample filters (CAIN's PEG) have
shape (B, kernel, in, out); global ones (1, kernel, in, out).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn


class TCNLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int,
                 profile_dim: Optional[int] = None, profile_hidden: int = 32) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"TCN kernel {kernel} must be odd (centred on its item)")
        self.in_dim, self.out_dim, self.kernel, self.stride = in_dim, out_dim, kernel, stride
        n = kernel * in_dim * out_dim
        if profile_dim is None:  # one filter for everyone
            self.weight = nn.Parameter(torch.randn(1, kernel, in_dim, out_dim) / math.sqrt(kernel * in_dim))
            self.peg = None
        else:  # PEG: W^PC = reshape(W^P2 ReLU(W^P1 I + b^P1) + b^P2)
            self.weight = None
            self.peg = nn.Sequential(nn.Linear(profile_dim, profile_hidden), nn.ReLU(), nn.Linear(profile_hidden, n))
            nn.init.normal_(self.peg[2].weight, std=1 / math.sqrt(kernel * in_dim * profile_hidden))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def filters(self, profile: Optional[torch.Tensor]) -> torch.Tensor:
        """(B or 1, kernel, in, out)."""
        if self.peg is None:
            return self.weight
        return self.peg(profile).view(-1, self.kernel, self.in_dim, self.out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, profile: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, in), mask (B, L) -> (B, ceil(L / stride), out) and its mask."""
        B, L, _ = x.shape
        half, s = self.kernel // 2, self.stride
        out_len = -(-L // s)
        xp = nn.functional.pad(x * mask.unsqueeze(-1), (0, 0, half, half))  # (B, L + 2h, in)
        w = self.filters(profile).expand(B, -1, -1, -1)  # (B, kernel, in, out)
        y = self.bias.expand(B, out_len, self.out_dim)
        for o in range(self.kernel):  # one (B, L', in) x (B, in, out) product per tap: O(B L D) memory
            y = y + torch.bmm(xp[:, o:o + (out_len - 1) * s + 1:s], w[:, o])  # (B, L', out)
        return y, mask[:, ::s]


def receptive_fields(kernels: Sequence[int], strides: Sequence[int]) -> list[int]:
    """Input items each layer's output sees: RF_1 = k_1; RF_n = RF_{n-1} + (k_n - 1) * (s_1 ... s_{n-1}).
    With stride 1 this is CAIN's cl_{n+1} = cl_n + fs_{n+1} - 1."""
    out, jump, rf = [], 1, 1
    for k, s in zip(kernels, strides):
        rf += (k - 1) * jump
        jump *= s
        out.append(rf)
    return out
