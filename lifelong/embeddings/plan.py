"""Sharding plans from TorchRec's planner, with per-table constraints from config."""
from __future__ import annotations

import logging
from typing import Optional

import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingPlan

# TorchRec 1.8 warns that Topology should come from TopologyFactory, whose configs cannot set
# the compute device (cpu/cuda) we need; the direct constructor is still supported.
logging.getLogger("torchrec.distributed.planner.types").setLevel(logging.ERROR)

SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel", "table_row_wise", "table_column_wise")


def sharders() -> list:
    return [EmbeddingCollectionSharder()]


def constraints_from_config(tables: dict[str, list[str]] | None) -> dict[str, ParameterConstraints]:
    """{'item': ['row_wise'], ...} -> TorchRec constraints; unknown sharding types are errors."""
    out = {}
    for table, types in (tables or {}).items():
        bad = [t for t in types if t not in SHARDING_TYPES]
        if bad:
            raise ValueError(f"table '{table}': unknown sharding type(s) {bad}; choose from {SHARDING_TYPES}")
        out[table] = ParameterConstraints(sharding_types=list(types))
    return out


def make_plan(module: nn.Module, world_size: int, device_type: str, batch_size: int,
              constraints: dict[str, list[str]] | None = None,
              pg: Optional[dist.ProcessGroup] = None) -> ShardingPlan:
    """Planner-built plan; with a process group, rank 0 plans and broadcasts (collective_plan)."""
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world_size, compute_device=device_type,
                          local_world_size=world_size),
        batch_size=batch_size,
        constraints=constraints_from_config(constraints),
    )
    if pg is not None:
        return planner.collective_plan(module, sharders(), pg)
    return planner.plan(module, sharders())


def describe(plan: ShardingPlan) -> str:
    """One line per table: sharding type, compute kernel and ranks."""
    lines = []
    for module_path, params in plan.plan.items():
        for table, p in params.items():
            ranks = sorted(set(p.ranks or []))
            lines.append(f"{module_path or '<root>'}.{table}: {p.sharding_type} ({p.compute_kernel}) ranks={ranks}")
    return "\n".join(lines)
