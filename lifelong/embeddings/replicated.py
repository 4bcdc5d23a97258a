"""The optimiser of replicated (data-parallel on CPU) tables, keyed and named like the fused ones."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer

# torch optimisers' state -> the names TorchRec's fused table optimisers give the same quantity
MOMENTA = {"sum": "momentum1", "exp_avg": "momentum1", "exp_avg_sq": "momentum2"}


def fused_names(table: str, weight: torch.Tensor, state: dict, group: dict) -> dict[str, torch.Tensor]:
    """One table's optimiser state under TorchRec's fused names (`<table>.momentum1`, ...), as views
    of the optimiser's own tensors (loading writes through them). Row-wise state (rows, 1) is one
    value per row, as the fused kernel keeps it. An Adagrad's step count is left out: it only decays
    the rate (`lr_decay`), and is kept when that is set."""
    out = {}
    for key, value in state.items():
        if key == "step" and "sum" in state and not group.get("lr_decay", 0.0):
            continue
        if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == 1 < weight.shape[1]:
            value = value.view(-1)  # (rows,)
        out[f"{table}.{MOMENTA.get(key, key)}"] = value
    return out


class ReplicatedTablesOptimizer(KeyedOptimizer):
    """The sparse optimiser (`make(params)`, e.g. TorchRec's RowWiseAdagrad) over replicated
    tables, stepped with the dense one after DDP has averaged their gradients. Its state is keyed
    by parameter name and named as the fused optimisers name theirs, so a checkpoint moves between
    sharded and replicated plans. `params`: name -> table weight (`...embeddings.<table>.weight`)."""

    def __init__(self, params: dict[str, nn.Parameter], make: Callable[[list], torch.optim.Optimizer]) -> None:
        self._optim = make(list(params.values()))
        self._group = {id(p): g for g in self._optim.param_groups for p in g["params"]}
        super().__init__(params, self._views(params), self._optim.param_groups)

    def _views(self, params: dict[str, nn.Parameter]) -> dict:
        state = self._optim.state
        return {p: fused_names(n.split(".")[-2], p, state[p], self._group[id(p)])
                for n, p in params.items() if state.get(p)}

    def step(self, closure=None) -> None:
        self._optim.step()
        if len(self.state) != len(self.params):  # lazily made state (e.g. Adam's) now exists
            self.state = self._views(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optim.zero_grad(set_to_none)
