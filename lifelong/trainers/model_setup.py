"""Build a model under DistributedModelParallel: planner plan, fused sparse optimiser, dense one."""
from __future__ import annotations

from functools import partial
from types import MappingProxyType
from typing import Mapping, Optional

import torch
import torch.distributed as dist
import torchrec.optim as trec_optim
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from lifelong.embeddings.key_cache import CacheTable, cache_collection
from lifelong.embeddings.sparse_arch import SparseArch
from lifelong.embeddings.plan import make_plan
from lifelong.embeddings.replicated import ReplicatedTablesOptimizer
from lifelong.models import build_model, entry
from lifelong.models.base import CTRModel
from lifelong.trainers.comm import use_exchange
from lifelong.trainers.config import JobSpec

SPARSE = {
    "sgd": (torch.optim.SGD, {}),
    "rowwise_adagrad": (trec_optim.RowWiseAdagrad, {"eps": 1e-8}),
    "adagrad": (torch.optim.Adagrad, {"eps": 1e-8}),
    "adam": (torch.optim.Adam, {}),
}
# Adam fused: one kernel for every dense tensor (CPU and CUDA), ~4x faster a step than the
# per-tensor loop, a few percent of a small model's step (DIEN on MovieLens)
DENSE = {"adam": partial(torch.optim.Adam, fused=True), "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}


def cache_tables(job: JobSpec) -> tuple[CacheTable, ...]:
    """The key cache's tables: the model's, when `train.key_cache_every` > 0; else none."""
    return entry(job.model).module.cache_tables(job.arch()) if job.train.key_cache_every else ()


def sparse_arch(job: JobSpec, device: torch.device | str,
                devices: Mapping[str, torch.device] = MappingProxyType({})) -> SparseArch:
    """The job's `SparseArch` over fresh collections on `device` (or on `devices[path]` for a
    collection's path in the model, e.g. "sparse.embeddings"): main tables, the model's side tables
    if any, the GSU key cache when `train.key_cache_every` > 0 and the model has one, and the
    trainer's lookup settings (`train.dedup_ids`, `train.embedding_l2`)."""
    side, cache = entry(job.model).module.inputs(job.arch()).side_tables, cache_tables(job)
    on = lambda name: devices.get(f"sparse.{name}", device)  # noqa: E731
    return SparseArch(job.features, job.features.collection(on("embeddings")),
                      job.features.side_collection(side, on("side_embeddings")), side,
                      cache_collection(job.features, cache, on("key_cache")) if cache else None, cache,
                      dedup_ids=job.train.dedup_ids, embedding_l2=job.train.embedding_l2)


def build(job: JobSpec, device: torch.device | str,
          devices: Mapping[str, torch.device] = MappingProxyType({})) -> CTRModel:
    """The job's model over its `sparse_arch` on `device` (`devices`: see `sparse_arch`)."""
    return build_model(job.model, job.arch(), sparse_arch(job, device, devices))


def cache_constraints(job: JobSpec) -> dict[str, list[str]]:
    """The run file's sharding constraints, with each cache table sharded like its source table."""
    out = dict(job.sharding)
    for t in cache_tables(job):
        if t.source in job.sharding:
            out.setdefault(t.name, list(job.sharding[t.source]))
    return out


def plain_model(job: JobSpec, device: torch.device | str = "cpu") -> CTRModel:
    """The unsharded model (unit tests, reference runs); seeded by the caller."""
    return build(job, device)


def sharded_model(job: JobSpec, device: torch.device, pg: dist.ProcessGroup,
                  plan: Optional[ShardingPlan] = None
                  ) -> tuple[DistributedModelParallel, CombinedOptimizer, ShardingPlan]:
    """DMP over the model's EmbeddingCollections, with the plan from TorchRec's planner
    (per-table constraints from `job.sharding`; on CPU, small unconstrained collections replicated:
    `train.replicate_mb`), the sparse optimiser fused into the sharded
    tables' backward, the same optimiser class stepping any replicated tables (`Plan.replicated`,
    whose gradients DDP averages; on gloo, through shared memory or one all-to-all, `comm.use_exchange`) and
    `train.dense_optimizer` for the dense parameters."""
    if plan is None:
        plan = make_plan(build(job, "meta"), dist.get_world_size(pg), device.type, job.train.batch_size,
                         cache_constraints(job), pg, job.train.replicate_mb)
    paths = getattr(plan, "replicated", {})
    replicated = tuple(f"{path}." for path in paths)
    # replicated collections are built where they run, initialised as configured: DMP would make their
    # meta parameters plain nn.Embedding ones (N(0, 1)); DDP then broadcasts rank 0's values
    model = build(job, "meta", {path: device for path in paths})
    cls, extra = SPARSE[job.train.sparse_optimizer]
    name = {id(p): n for n, p in model.named_parameters()}
    tables = {name[id(p)]: p for p in model.sparse_parameters()}
    apply_optimizer_in_backward(cls, [p for n, p in tables.items() if not n.startswith(replicated)],
                                {"lr": job.train.sparse_lr, **extra})
    dmp = DistributedModelParallel(module=model, device=device, plan=plan,
                                   env=ShardingEnv.from_process_group(pg))
    use_exchange(dmp, pg)
    # dense: neither fused nor in a replicated collection (whose key cache is refreshed, not trained)
    dense = KeyedOptimizerWrapper({n: p for n, p in in_backward_optimizer_filter(dmp.named_parameters())
                                   if not n.startswith(replicated)},
                                  lambda params: DENSE[job.train.dense_optimizer](params, lr=job.train.dense_lr))
    parts = [dmp.fused_optimizer, dense]
    own = {n: p for n, p in tables.items() if n.startswith(replicated)}
    if own:
        parts.append(ReplicatedTablesOptimizer(own, lambda params: cls(params, lr=job.train.sparse_lr, **extra)))
    return dmp, CombinedOptimizer(parts), plan
