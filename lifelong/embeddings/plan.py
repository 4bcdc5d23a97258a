"""Sharding plans from TorchRec's planner, with per-table constraints from config; on CPU, a
collection asked for data_parallel, or a small one left to the planner, is replicated (left
unsharded, under DDP)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Collection, Optional

import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingCollection
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_configs import data_type_to_dtype

from lifelong.embeddings.spec import CPU_DP_LIMIT, replicated_on_cpu

# TorchRec 1.8 warns that Topology should come from TopologyFactory, whose configs cannot set
# the compute device (cpu/cuda) we need; the direct constructor is still supported.
logging.getLogger("torchrec.distributed.planner.types").setLevel(logging.ERROR)

SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel", "table_row_wise", "table_column_wise")


def sharders() -> list:
    return [EmbeddingCollectionSharder()]


def allowed_types(device_type: str) -> list[str]:
    """Sharding types TorchRec's EmbeddingCollection sharder offers on this device type."""
    return list(EmbeddingCollectionSharder().sharding_types(device_type))


@dataclass
class Plan(ShardingPlan):
    """TorchRec's plan plus the collections it leaves replicated: collection path -> its tables. A
    replicated collection is not in `plan`, so DMP keeps it a plain EmbeddingCollection and its
    DDP wrapper averages the tables' gradients, and the sparse optimiser's class steps them after
    that (`replicated.ReplicatedTablesOptimizer`), as TorchRec's own data_parallel tables are
    stepped after DDP's all-reduce on CUDA."""

    replicated: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def replicated_tables(self) -> list[str]:
        return [t for tables in self.replicated.values() for t in tables]


def collections(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """Path -> table names of every EmbeddingCollection in `module`."""
    return {path: tuple(c.name for c in m.embedding_configs()) for path, m in module.named_modules()
            if isinstance(m, EmbeddingCollection)}


def weight_mb(collection: EmbeddingCollection) -> float:
    """MB of the collection's table weights (one copy)."""
    return sum(c.num_embeddings * c.embedding_dim * data_type_to_dtype(c.data_type).itemsize
               for c in collection.embedding_configs()) / 2**20


def replicated_collections(module: nn.Module, constraints: dict[str, list[str]] | None,
                           device_type: str, replicate_mb: float = 0.0) -> dict[str, tuple[str, ...]]:
    """On CPU, the collections (path -> tables) to replicate: those whose every table is constrained
    to data_parallel alone (a collection where only some are is an error naming them: the CPU
    stand-in replicates whole collections); failing any, every collection when no table is
    constrained and their weights total at most `replicate_mb` MB (`TrainConfig.replicate_mb`; all
    or none, so a key cache is never split from its source table). Elsewhere none: TorchRec shards
    data_parallel tables itself, and its planner chooses them."""
    if device_type != "cpu":
        return {}
    tables = collections(module)
    asked = {path: names for path, names in tables.items() if replicated_on_cpu(path, names, constraints)}
    named = set(constraints or {}) & {t for names in tables.values() for t in names}
    if asked or named or not replicate_mb:
        return asked
    size = sum(weight_mb(module.get_submodule(path)) for path in tables)
    return tables if size <= replicate_mb else {}


def table_names(module: nn.Module) -> list[str]:
    """Names of every EmbeddingCollection table in `module`."""
    return [t for tables in collections(module).values() for t in tables]


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


def plan_module(module: nn.Module, world_size: int, device_type: str, batch_size: int,
                constraints: dict[str, list[str]] | None = None, min_partition: Optional[int] = None,
                pg: Optional[dist.ProcessGroup] = None,
                replicate_mb: float = 0.0) -> tuple[Plan, EmbeddingShardingPlanner]:
    """The planner's plan for `module` (with a process group, rank 0 plans and broadcasts:
    collective_plan) with the replicated collections (`replicated_collections`) taken out of it,
    and the planner."""
    replicated = replicated_collections(module, constraints, device_type, replicate_mb)
    kept = {t for tables in replicated.values() for t in tables}
    rest = {t: types for t, types in (constraints or {}).items() if t not in kept}
    # the replicated tables are planned like any other (the planner plans every collection) and then dropped
    p = planner(world_size, device_type, batch_size, rest, min_partition, table_names(module))
    plan = p.collective_plan(module, sharders(), pg) if pg is not None else p.plan(module, sharders())
    return Plan(plan={k: v for k, v in plan.plan.items() if k not in replicated}, replicated=replicated), p


def make_plan(module: nn.Module, world_size: int, device_type: str, batch_size: int,
              constraints: dict[str, list[str]] | None = None,
              pg: Optional[dist.ProcessGroup] = None, replicate_mb: float = 0.0) -> Plan:
    """Planner-built plan (`plan_module`)."""
    return plan_module(module, world_size, device_type, batch_size, constraints, pg=pg, replicate_mb=replicate_mb)[0]


def estimates(p: EmbeddingShardingPlanner, world_size: int, device_type: str,
              skip: Collection[str] = ()) -> dict[str, list[float]]:
    """The planner's own per-rank estimates for its last plan, without the tables in `skip` (e.g.
    replicated ones, which it planned as sharded): storage in MB (HBM on cuda, DDR on cpu: weights,
    optimiser state and I/O buffers) and step time in ms (fwd + bwd compute and comms)."""
    mb, ms = [0.0] * world_size, [0.0] * world_size
    for option in p._best_plan or []:  # the planner keeps its chosen ShardingOptions here (TorchRec 1.8)
        if option.name in skip:
            continue
        for shard in option.shards:
            if shard.rank is None:
                continue
            mb[shard.rank] += (shard.storage.hbm if device_type == "cuda" else shard.storage.ddr) / 2**20
            ms[shard.rank] += shard.perf.total
    return {"est_mb": mb, "est_ms": ms}


def describe(plan: ShardingPlan) -> str:
    """One line per table: sharding type, compute kernel and ranks (replicated tables: on every rank)."""
    lines = []
    for module_path, params in plan.plan.items():
        for table, p in params.items():
            ranks = sorted(set(p.ranks or []))
            lines.append(f"{module_path or '<root>'}.{table}: {p.sharding_type} ({p.compute_kernel}) ranks={ranks}")
    for module_path, tables in getattr(plan, "replicated", {}).items():
        lines += [f"{module_path}.{t}: data_parallel (replicated, plain EmbeddingCollection under DDP) ranks=all"
                  for t in tables]
    return "\n".join(lines)
