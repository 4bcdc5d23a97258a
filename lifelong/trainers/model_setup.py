"""Build a model under DistributedModelParallel: planner plan, fused sparse optimiser, dense one."""
from __future__ import annotations

from functools import partial
from typing import Optional

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
from lifelong.models import build_model, entry
from lifelong.models.base import CTRModel
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


def sparse_arch(job: JobSpec, device: torch.device | str) -> SparseArch:
    """The job's `SparseArch` over fresh collections on `device`: main tables, the model's side tables
    if any, the GSU key cache when `train.key_cache_every` > 0 and the model has one, and the
    trainer's lookup settings (`train.dedup_ids`, `train.embedding_l2`)."""
    side, cache = entry(job.model).module.inputs(job.arch()).side_tables, cache_tables(job)
    return SparseArch(job.features, job.features.collection(device),
                      job.features.side_collection(side, device), side,
                      cache_collection(job.features, cache, device) if cache else None, cache,
                      dedup_ids=job.train.dedup_ids, embedding_l2=job.train.embedding_l2)


def build(job: JobSpec, device: torch.device | str) -> CTRModel:
    """The job's model over its `sparse_arch` on `device`."""
    return build_model(job.model, job.arch(), sparse_arch(job, device))


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
    """DMP over the model's EmbeddingCollection, with the plan from TorchRec's planner
    (per-table constraints from `job.sharding`), a fused in-backward sparse optimiser and
    `train.dense_optimizer` for the dense parameters."""
    model = build(job, "meta")
    cls, extra = SPARSE[job.train.sparse_optimizer]
    apply_optimizer_in_backward(cls, model.sparse_parameters(), {"lr": job.train.sparse_lr, **extra})
    if plan is None:
        plan = make_plan(model, dist.get_world_size(pg), device.type, job.train.batch_size,
                         cache_constraints(job), pg)
    dmp = DistributedModelParallel(module=model, device=device, plan=plan,
                                   env=ShardingEnv.from_process_group(pg))
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda params: DENSE[job.train.dense_optimizer](params, lr=job.train.dense_lr))
    return dmp, CombinedOptimizer([dmp.fused_optimizer, dense]), plan
