"""Per-worker sharding benchmark: the same batches through one DMP model per sharding plan.

For each plan: per-rank embedding memory (weights + fused optimiser state of this rank's shards),
bytes this rank sends to other ranks per step through TorchRec's all-to-alls (input KJTs, output
embeddings, and their backward), the dense all-reduce payload per step (DDP buckets: dense
weights plus any data-parallel table), samples/s, and the planner's per-rank estimates.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.nn.parallel import DistributedDataParallel

from lifelong.cluster import logs
from lifelong.embeddings.plan import allowed_types, describe, estimates, plan_module
from lifelong.models.base import loss as ctr_loss
from lifelong.trainers.allocator import keep_freed_memory
from lifelong.trainers.config import JobSpec
from lifelong.trainers.inputs import load_store, make_collator
from lifelong.trainers.loop import in_lockstep
from lifelong.trainers.model_setup import build, sharded_model

ROWS_FILE = "shard_bench_rows.json"


class CommCounter:
    """Counts bytes sent to other ranks by `dist.all_to_all_single` and by DDP's all-reduce."""

    def __init__(self) -> None:
        self.a2a = 0
        self.allreduce_per_step = 0

    @contextlib.contextmanager
    def all_to_all(self) -> Iterator[None]:
        """Patch `torch.distributed.all_to_all_single` (TorchRec calls it through the module)."""
        original = dist.all_to_all_single

        def counted(output, input, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
            world, rank = dist.get_world_size(group), dist.get_rank(group)
            row = input.element_size() * (input[0].numel() if input.dim() and input.shape[0] else 0)
            if input_split_sizes:
                self.a2a += row * (sum(input_split_sizes) - input_split_sizes[rank])
            else:
                self.a2a += input.numel() * input.element_size() * (world - 1) // world
            return original(output, input, output_split_sizes, input_split_sizes, group, async_op)

        dist.all_to_all_single = counted
        try:
            yield
        finally:
            dist.all_to_all_single = original

    def count_ddp(self, model: torch.nn.Module, pg: dist.ProcessGroup) -> None:
        """DDP's all-reduce payload per step: every gradient it manages, each step (a static graph
        reduces every bucket; `comm`'s exchanges share the same bytes)."""
        if dist.get_world_size(pg) == 1:
            return  # nothing leaves the rank
        for m in model.modules():
            if isinstance(m, DistributedDataParallel):
                self.allreduce_per_step += sum(p.numel() * p.element_size() for p in m._module_parameters
                                               if p.requires_grad)


def _local_bytes(t) -> int:
    if isinstance(t, ShardedTensor):
        return sum(s.tensor.numel() * s.tensor.element_size() for s in t.local_shards())
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def embedding_bytes(model: torch.nn.Module, optimizer) -> int:
    """This rank's bytes of embedding weights and sparse optimiser state (fused, and that of the
    replicated tables: `optimizer`'s keys of the embeddings)."""
    weights = sum(_local_bytes(t) for k, t in model.state_dict().items() if "embeddings." in k)
    state = {k: v for k, v in optimizer.state_dict()["state"].items() if "embeddings." in k}
    return weights + sum(_local_bytes(t) for per_param in state.values() for t in per_param.values())


def plan_specs(job: JobSpec, device_type: str, world: int) -> list[tuple[str, Optional[dict], Optional[int]]]:
    """(name, constraints, column-wise shard width): the planner's own choice under the job's
    constraints, then each sharding type the device allows, forced on every table."""
    model = build(job, "meta")
    tables = [c.name for ec in (model.sparse.embeddings, model.sparse.side_embeddings) if ec is not None
              for c in ec.embedding_configs()]
    dim = job.features.dim
    return [("planner", dict(job.sharding), None)] + [
        (t, {name: [t] for name in tables}, max(dim // world, 1) if t == "column_wise" else None)
        for t in allowed_types(device_type)]


def _plan(job: JobSpec, constraints, min_partition, device: torch.device, pg, replicate_mb: float):
    """Rank 0 plans (keeping the planner's estimates) and broadcasts both; `replicate_mb`: see
    `plan.replicated_collections`."""
    world = dist.get_world_size(pg)
    box: list = [None]
    if dist.get_rank(pg) == 0:
        try:
            plan, p = plan_module(build(job, "meta"), world, device.type, job.train.batch_size, constraints,
                                  min_partition, replicate_mb=replicate_mb)
            box = [(plan, estimates(p, world, device.type, skip=plan.replicated_tables), None)]
        except Exception as e:  # the planner can refuse a forced plan (e.g. no fit): reported, not fatal
            why = str(e).splitlines()[0][:200]
            box = [(None, None, why if isinstance(e, ValueError) else f"{type(e).__name__}: {why}")]
    dist.broadcast_object_list(box, src=0, group=pg)
    return box[0]


def bench_plan(job: JobSpec, plan, batches: list, device: torch.device, pg, warmup: int) -> dict:
    """Train on `batches` under `plan`; returns this rank's measurements."""
    torch.manual_seed(job.train.seed)
    model, optimizer, _ = sharded_model(job, device, pg, plan)
    counter = CommCounter()
    counter.count_ddp(model, pg)
    model.train()
    steps, t0 = 0, 0.0
    with counter.all_to_all():
        for i, batch in enumerate(batches):
            if i == warmup:
                dist.barrier(group=pg)
                counter.a2a = 0
                t0 = time.perf_counter()
            batch = batch.to(device)
            loss = ctr_loss(batch, model(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += i >= warmup
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier(group=pg)
    elapsed = time.perf_counter() - t0
    return {"emb_mb": embedding_bytes(model, optimizer) / 2**20, "a2a_mb_per_step": counter.a2a / steps / 2**20,
            "allreduce_mb_per_step": counter.allreduce_per_step / 2**20, "step_ms": 1000 * elapsed / steps,
            "samples_per_s": dist.get_world_size(pg) * job.train.batch_size * steps / elapsed,
            "loss": float(loss.item())}


def bench_world(job: JobSpec, batches: list, device: torch.device, pg, warmup: int) -> list[dict]:
    """Rows of every plan at the world size of `pg` (this rank is in it)."""
    world, rank = dist.get_world_size(pg), dist.get_rank(pg)
    rows = []
    for name, constraints, min_partition in plan_specs(job, device.type, world):
        # the planner's row is the plan training would use (small collections replicated on CPU:
        # `train.replicate_mb`); a forced row is that sharding type on every table
        plan, est, error = _plan(job, constraints, min_partition, device, pg,
                                 job.train.replicate_mb if name == "planner" else 0.0)
        row = {"plan": name, "world_size": world, "device": device.type, "steps": len(batches) - warmup}
        if plan is not None and plan.replicated:
            row["note"] = (f"replicated on {device.type} (data_parallel): "
                           f"{', '.join(plan.replicated_tables)}; the planner's "
                           "estimates leave them out")
        if error:
            rows.append({**row, "error": error})
            continue
        try:
            mine = bench_plan(job, plan, batches, device, pg, warmup)
        except RuntimeError as e:  # e.g. a kernel the device lacks; every rank fails alike, before any collective
            mine = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine, group=pg)
        failed = [g["error"] for g in gathered if "error" in g]
        if failed:
            rows.append({**row, "plan_text": describe(plan), **est, "error": failed[0]})
            continue
        rows.append({**row, "plan_text": describe(plan), **est,
                     "emb_mb": [g["emb_mb"] for g in gathered],
                     "a2a_mb_per_step": [g["a2a_mb_per_step"] for g in gathered],
                     "allreduce_mb_per_step": gathered[0]["allreduce_mb_per_step"],
                     "step_ms": max(g["step_ms"] for g in gathered),
                     "samples_per_s": min(g["samples_per_s"] for g in gathered),
                     "loss": gathered[0]["loss"]})
        if rank == 0:
            if name == "planner":
                logs.say(f"[shard-bench] world={world}: the planner's plan\n{rows[-1]['plan_text']}")
            logs.say(f"[shard-bench] world={world} {name}: {rows[-1]['samples_per_s']:.0f} samples/s "
                     f"emb MB/rank {['%.2f' % x for x in rows[-1]['emb_mb']]}")
    return rows


def bench_loop_per_worker(config: dict) -> None:
    """Ray Train worker (one worker group of the largest world size): read warmup + steps batches
    once, then for each world size w the first w ranks run every plan in a process group of their
    own while the others wait (one worker-group start for all world sizes)."""
    job = JobSpec.from_dict(config["job"])
    logs.use(config.get("relay"))
    keep_freed_memory()
    warmup, steps = config["warmup"], config["steps"]
    device = ray.train.torch.get_device()
    world, rank = dist.get_world_size(), dist.get_rank()
    shard = ray.train.get_dataset_shard("train")
    collate = make_collator(job, store=load_store(config))
    it = shard.iter_torch_batches(batch_size=job.train.batch_size, collate_fn=collate,
                                  drop_last=True, device="cpu")
    skipped: list[int] = []
    batches = []
    for b in in_lockstep(it, device, skipped):
        batches.append(b)
        if len(batches) == warmup + steps:
            break
    if len(batches) <= warmup:
        raise ValueError(f"shard-bench needs {warmup + 1}+ batches per worker, the data gives {len(batches)}")
    rows = []
    for w in config["world_sizes"]:
        # every rank takes part in creating each group, members or not (torch.distributed's rule)
        pg = dist.group.WORLD if w == world else dist.new_group(list(range(w)))
        if rank < w:
            rows += bench_world(job, batches, device, pg, warmup)
        dist.barrier()
    # Ray Train keeps a result's metrics with its checkpoint: the rows travel as a file in one.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ROWS_FILE).write_text(json.dumps(rows))
        ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
        ray.train.report({"plans": len(rows)}, checkpoint=ckpt)
