"""`Batch`, what a collator hands the model, and the collate-time GSU protocol: Ray-free, so the
models import neither Ray nor the collator."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Protocol

import numpy as np
import torch
from torchrec import KeyedJaggedTensor


class Prefilter(Protocol):
    """A collate-time GSU selecting at most k history events per row from raw ids."""

    k: int

    def __call__(self, target_cat: np.ndarray, hist_cat: np.ndarray, offsets: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(target_cat (B,), hist_cat (N,), offsets (B+1,)) -> (flat positions, new offsets)."""

    def search(self, target_cat: np.ndarray, cats: np.ndarray, starts: np.ndarray, stops: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """The same over row ranges [start, stop) of cats -> (positions into cats, new offsets)."""


@dataclass
class Batch:
    """One training batch. Dense tensors are padded (B, T) aligned with the KJT's jagged rows."""

    sparse: KeyedJaggedTensor
    target_ts: torch.Tensor  # (B,)
    short_ts: torch.Tensor  # (B, S) 0 where padded
    long_ts: torch.Tensor  # (B, K) 0 where padded
    short_len: int
    long_len: int
    labels: torch.Tensor  # (B,) float
    user_ids: torch.Tensor  # (B,)
    long_pos: Optional[torch.Tensor] = None  # (B, K) positions of the long rows in the full history; None = 0..K-1
    long_count: Optional[torch.Tensor] = None  # (B,) behaviours in the full history; None = the long lengths

    def _map(self, fn) -> "Batch":
        """The same batch with `fn` applied to the KJT and every tensor (the optional ones too)."""
        opt = lambda t: None if t is None else fn(t)  # noqa: E731
        return replace(self, sparse=fn(self.sparse), target_ts=fn(self.target_ts), short_ts=fn(self.short_ts),
                       long_ts=fn(self.long_ts), labels=fn(self.labels), user_ids=fn(self.user_ids),
                       long_pos=opt(self.long_pos), long_count=opt(self.long_count))

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device=device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.Stream) -> None:
        self.sparse.record_stream(stream)
        for t in (self.target_ts, self.short_ts, self.long_ts, self.labels, self.user_ids, self.long_pos,
                  self.long_count):
            if t is not None:
                t.record_stream(stream)

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class EvalBatch:
    """A validation batch and, on demand, the same rows with their whole lifelong history (no
    collate-time GSU): what the GSU consistency diagnostics read, in the same pass."""

    batch: Batch
    full_history: Callable[[], Batch]
