"""Sharding plans from TorchRec's planner, with per-table constraints from config."""
from __future__ import annotations

import logging
from typing import Collection, Optional

import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingCollection
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingPlan

# TorchRec 1.8 warns that Topology should come from TopologyFactory, whose configs cannot set
# the compute device (cpu/cuda) we need; the direct constructor is still supported.
logging.getLogger("torchrec.distributed.planner.types").setLevel(logging.ERROR)

SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel", "table_row_wise", "table_column_wise")


def sharders() -> list:
    return [EmbeddingCollectionSharder()]


def allowed_types(device_type: str) -> list[str]:
    """Sharding types TorchRec's EmbeddingCollection sharder offers on this device type."""
    return list(EmbeddingCollectionSharder().sharding_types(device_type))


# TorchRec 1.8 on CPU: a data-parallel EmbeddingCollection table looks ids up with fbgemm's dense
# kernel, which returns one row per bag instead of one per id, so any sequence feature fails
# (split_with_sizes in construct_jagged_tensors). There data_parallel is never planned.
CPU_DP_LIMIT = ("TorchRec 1.8's CPU data-parallel EmbeddingCollection returns one row per bag, not per id, "
                "so sequence features fail")


def table_names(module: nn.Module) -> list[str]:
    """Names of every EmbeddingCollection table in `module`."""
    return [c.name for m in module.modules() if isinstance(m, EmbeddingCollection) for c in m.embedding_configs()]


def constraints_from_config(tables: dict[str, list[str]] | None, device_type: Optional[str] = None,
                            min_partition: Optional[int] = None,
                            every_table: Collection[str] = ()) -> dict[str, ParameterConstraints]:
    """{'item': ['row_wise'], ...} -> TorchRec constraints. Unknown sharding types are errors, and
    so (given the device type) is a table none of whose types the sharder allows there. On CPU no
    table (of those named or in `every_table`) is planned data_parallel; asking only for it is an error."""
    out = {}
    allowed = allowed_types(device_type) if device_type else list(SHARDING_TYPES)
    usable = [t for t in allowed if not (device_type == "cpu" and t == "data_parallel")]
    for table, types in (tables or {}).items():
        bad = [t for t in types if t not in SHARDING_TYPES]
        if bad:
            raise ValueError(f"table '{table}': unknown sharding type(s) {bad}; choose from {SHARDING_TYPES}")
        if not set(types) & set(allowed):
            raise ValueError(f"table '{table}': none of {list(types)} is offered for sequence tables on "
                             f"{device_type}; EmbeddingCollection allows {allowed}")
        types = [t for t in types if t in usable or t not in allowed]
        if not set(types) & set(usable):
            raise ValueError(f"table '{table}': data_parallel cannot be used on cpu: {CPU_DP_LIMIT}; "
                             f"choose from {usable}")
        out[table] = ParameterConstraints(sharding_types=list(types), min_partition=min_partition)
    if usable != allowed:  # the planner must not pick data_parallel on its own either
        for table in every_table:
            out.setdefault(table, ParameterConstraints(sharding_types=list(usable), min_partition=min_partition))
    return out


def planner(world_size: int, device_type: str, batch_size: int,
            constraints: dict[str, list[str]] | None = None,
            min_partition: Optional[int] = None, every_table: Collection[str] = ()) -> EmbeddingShardingPlanner:
    """TorchRec's planner for one host of `world_size` devices, with per-table constraints
    (`min_partition`: the column-wise shard width; `every_table`: the module's tables, see
    `constraints_from_config`)."""
    return EmbeddingShardingPlanner(
        topology=Topology(world_size=world_size, compute_device=device_type, local_world_size=world_size),
        batch_size=batch_size,
        constraints=constraints_from_config(constraints, device_type, min_partition, every_table),
    )


def make_plan(module: nn.Module, world_size: int, device_type: str, batch_size: int,
              constraints: dict[str, list[str]] | None = None,
              pg: Optional[dist.ProcessGroup] = None) -> ShardingPlan:
    """Planner-built plan; with a process group, rank 0 plans and broadcasts (collective_plan)."""
    p = planner(world_size, device_type, batch_size, constraints, every_table=table_names(module))
    if pg is not None:
        return p.collective_plan(module, sharders(), pg)
    return p.plan(module, sharders())


def estimates(p: EmbeddingShardingPlanner, world_size: int, device_type: str) -> dict[str, list[float]]:
    """The planner's own per-rank estimates for its last plan: storage in MB (HBM on cuda, DDR on
    cpu: weights, optimiser state and I/O buffers) and step time in ms (fwd + bwd compute and comms)."""
    mb, ms = [0.0] * world_size, [0.0] * world_size
    for option in p._best_plan or []:  # the planner keeps its chosen ShardingOptions here (TorchRec 1.8)
        for shard in option.shards:
            if shard.rank is None:
                continue
            mb[shard.rank] += (shard.storage.hbm if device_type == "cuda" else shard.storage.ddr) / 2**20
            ms[shard.rank] += shard.perf.total
    return {"est_mb": mb, "est_ms": ms}


def describe(plan: ShardingPlan) -> str:
    """One line per table: sharding type, compute kernel and ranks."""
    lines = []
    for module_path, params in plan.plan.items():
        for table, p in params.items():
            ranks = sorted(set(p.ranks or []))
            lines.append(f"{module_path or '<root>'}.{table}: {p.sharding_type} ({p.compute_kernel}) ranks={ranks}")
    return "\n".join(lines)
