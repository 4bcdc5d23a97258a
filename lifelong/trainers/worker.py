"""The Ray Train worker function: shards -> DMP model -> train/eval epochs -> report + checkpoint."""
from __future__ import annotations

import logging
import resource
import tempfile
import time

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from lifelong.embeddings.collate import Collator
from lifelong.embeddings.plan import describe
from lifelong.models import entry
from lifelong.trainers import checkpoint
from lifelong.trainers.config import JobSpec
from lifelong.trainers.loop import evaluate, gsu_consistency, train_epoch
from lifelong.trainers.model_setup import sharded_model


class _NoTBEArgumentDump(logging.Filter):
    """fbgemm logs every TBE constructor argument at INFO through the root logger; drop those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("[TBE=")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the most loaded worker: resident set size on CPU, allocated memory on GPU."""
    if device.type == "cuda":
        mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    t = torch.tensor([mb], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def worker_nodes() -> int:
    """How many distinct Ray nodes this run's workers sit on."""
    node = ray.get_runtime_context().get_node_id()
    nodes = [node]
    if dist.is_initialized():
        nodes = [None] * dist.get_world_size()
        dist.all_gather_object(nodes, node)
    return len(set(nodes))


def make_collator(job: JobSpec, full_history: bool = False) -> Collator:
    """The collator for the job's model; `full_history` skips any collate-time GSU (diagnostics)."""
    inputs = entry(job.model).module.inputs(job.arch())
    return Collator(job.features, job.samples.short_len, job.samples.max_len, inputs.use_long,
                    None if full_history else inputs.prefilter, inputs.side_tables)


def train_loop_per_worker(config: dict) -> None:
    job = JobSpec.from_dict(config["job"])
    started = time.perf_counter()
    logging.getLogger().addFilter(_NoTBEArgumentDump())
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(job.train.seed)
    model, optimizer, plan = sharded_model(job, device, dist.group.WORLD)
    plan_text = describe(plan)
    if rank == 0:
        print(f"[lifelong] model={job.model} world={ctx.get_world_size()} device={device}\n"
              f"[lifelong] sharding plan:\n{plan_text}", flush=True)
    collate, full_collate = make_collator(job), make_collator(job, full_history=True)
    t = job.train
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    metrics: dict = {}
    epoch_losses: list[float] = []
    for epoch in range(t.epochs):
        shuffle = {"local_shuffle_buffer_size": t.local_shuffle_buffer, "local_shuffle_seed": t.seed + epoch} \
            if t.shuffle == "local" else {}
        batches = train_shard.iter_torch_batches(batch_size=t.batch_size, collate_fn=collate, drop_last=True,
                                                 prefetch_batches=t.prefetch_batches, device="cpu", **shuffle)
        stats = train_epoch(model, optimizer, batches, device, t.max_steps, t.log_every, show=rank == 0)
        valid_batches = lambda fn: valid_shard.iter_torch_batches(  # noqa: E731
            batch_size=t.eval_batch_size, collate_fn=fn, prefetch_batches=t.prefetch_batches, device="cpu")
        valid = evaluate(model, valid_batches(collate), device)
        valid.update(gsu_consistency(model, valid_batches(full_collate), device, t.diagnostic_batches))
        epoch_losses.append(stats["loss"])
        metrics = {"epoch": epoch, "train_loss_epochs": list(epoch_losses),
                   **{f"train_{k}": v for k, v in stats.items()}, **{f"valid_{k}": v for k, v in valid.items()}}
        if rank == 0:
            print(f"[lifelong] epoch {epoch} at {time.perf_counter() - started:.1f}s: " + " ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()), flush=True)
        if epoch < t.epochs - 1:
            ray.train.report(metrics)
    metrics["train_peak_rss_mb"] = peak_memory_mb(device)
    metrics.update(train_world_size=ctx.get_world_size(), train_nodes=worker_nodes())
    checkpoint.assert_finite(model)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save(model, tmp, config["job"], plan_text, metrics)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
