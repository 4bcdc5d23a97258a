"""The Ray Train worker function: shards -> DMP model -> train/eval epochs -> report + checkpoint."""
from __future__ import annotations

import gc
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Optional

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from lifelong.cluster import logs
from lifelong.embeddings.collate import Batches
from lifelong.embeddings.plan import describe
from lifelong.trainers import checkpoint
from lifelong.trainers.affinity import bind_worker
from lifelong.trainers.allocator import freeze_long_lived, keep_freed_memory
from lifelong.trainers.config import JobSpec
from lifelong.trainers.curves import TB_DIR, Curves
from lifelong.trainers.ingest import static_steps
from lifelong.trainers.inputs import load_store, make_collator, make_eval_collator
from lifelong.trainers.core import TrainCore
from lifelong.trainers.metrics import peak_rss_mb, reset_peak_rss
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
        mb = peak_rss_mb()
    t = torch.tensor([mb], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def reset_peak_memory() -> None:
    """Start `peak_memory_mb`'s count again (a worker about to train its next run)."""
    reset_peak_rss()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def worker_placement(cores: Optional[list[int]]) -> tuple[int, list]:
    """How many distinct Ray nodes this run's workers sit on, and each rank's `cores` where bound
    (`affinity.bind_worker`; None for a rank that is not)."""
    here = (ray.get_runtime_context().get_node_id(), cores)
    ranks = [here]
    if dist.is_initialized():
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, here)
    return len({node for node, _ in ranks}), [cores for _, cores in ranks]


def resume(model, optimizer, job_dict: dict, rank: int, run_dir: Optional[str],
           registered: Optional[ray.train.Checkpoint]) -> dict:
    """Trainer state of the run's newest complete checkpoint, loaded into model and optimiser ({} if
    none); rank 0 chooses it (from the run directory, else the checkpoint Ray Train `registered`) and
    every rank loads the same one. A checkpoint of another job (model, its config, features or
    samples differ) under the same run name is an error, never loaded; training settings and the
    sharding plan may change."""
    chosen = [None]
    if rank == 0:
        chosen[0], line = checkpoint.choose(run_dir, registered.path if registered else None)
        logs.say(line)
    if dist.is_initialized():
        dist.broadcast_object_list(chosen, src=0)
    if chosen[0] is None:
        return {}
    path = Path(chosen[0])
    if not path.is_dir():  # remote storage: Ray's registered checkpoint, fetched
        with registered.as_directory() as d:
            return _load(model, optimizer, job_dict, Path(d), rank, chosen[0])
    return _load(model, optimizer, job_dict, path, rank, chosen[0])


def _load(model, optimizer, job_dict: dict, d: Path, rank: int, name: str) -> dict:
    checkpoint.check_same_job(d, job_dict, name)
    state = checkpoint.load(model, d, optimizer)
    state["metrics"] = json.loads((d / checkpoint.METRICS_FILE).read_text())
    state["resumed_from"] = name
    if rank == 0:
        logs.say(f"[lifelong] resumed from {name}: epoch {state.get('epoch')} step {state.get('step_in_epoch')} "
                 f"(global step {state.get('global_step')})")
    return state


EPOCH_METRICS = ("train_loss", "valid_auc", "valid_gauc", "valid_logloss", "valid_gsu_recall",
                 "train_samples_per_s", "key_cache_refreshes")


def epoch_line(epoch: int, elapsed: float, metrics: dict) -> str:
    """The one console line per epoch: the metrics people watch (every metric is in the checkpoint's
    metrics.json and the run's summary.json)."""
    cells = [f"{k}={logs.short(metrics[k])}" for k in EPOCH_METRICS if metrics.get(k) is not None]
    return f"[lifelong] epoch {epoch} ({elapsed:.0f} s, step {metrics.get('global_step')}): " + " ".join(cells)


PROGRESS_EVERY_S = 5.0
BEST_DIR = "best"  # inside the run directory: the best epoch's weights under early stopping


def _start(config: dict) -> tuple:
    """Worker set-up shared by both loops: the relay, fbgemm's argument dump filtered, malloc's
    thresholds and the imports' objects frozen (`allocator`), the worker bound to its share of the
    node's cores when `config["bind_cores"]` (`affinity`); returns the sequence store, the dataset shards
    and the cores bound (None if not)."""
    logs.use(config.get("relay"))
    logging.getLogger().addFilter(_NoTBEArgumentDump())
    keep_freed_memory()
    freeze_long_lived()  # the imports' objects: no full collection rescans them (`allocator`)
    cores = None
    if config.get("bind_cores"):
        ctx = ray.train.get_context()
        cores = bind_worker(ctx.get_local_rank(), ctx.get_local_world_size())
    return load_store(config), ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("valid"), cores


def train_loop_per_worker(config: dict) -> None:
    """One run (`config["job"]` in `config["run_dir"]`), its checkpoints registered with Ray Train."""
    store, train_shard, valid_shard, cores = _start(config)
    run_job(config["job"], config.get("run_dir"), store, train_shard, valid_shard, config.get("step_hook"), cores,
            registered=True, train_rows=config.get("static_rows", {}).get("train"))


def train_runs_per_worker(config: dict) -> None:
    """Several runs on the same samples, one after another in one worker group (`lifelong compare`'s
    runs of one length: Ray's start-up is paid once): `config["jobs"]` holds (job, run directory)
    pairs. A run whose directory holds its finished checkpoint is passed over, any other resumes from
    its newest complete one (a restarted worker group continues where it stopped); checkpoints go
    straight into each run's directory (`checkpoint.save_in_run`), not through Ray Train."""
    store, train_shard, valid_shard, cores = _start(config)
    shown_plan: list[str] = []  # the plan is printed when it differs from the last run's
    for job_dict, run_dir in config["jobs"]:
        done = [checkpoint.finished(run_dir, job_dict) is not None if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(done, src=0)
        if not done[0]:
            reset_peak_memory()
            run_job(job_dict, run_dir, store, train_shard, valid_shard, config.get("step_hook"), cores,
                    registered=False, shown_plan=shown_plan, train_rows=config.get("static_rows", {}).get("train"))
            gc.collect()


def run_job(job_dict: dict, run_dir: Optional[str], store, train_shard, valid_shard, step_hook,
            cores: Optional[list[int]], registered: bool, shown_plan: Optional[list[str]] = None,
            train_rows: Optional[int] = None) -> None:
    """Train one job on this worker's shards: DMP model, resume, epochs with validation, early
    stopping, checkpoints (reported to Ray Train when `registered`, else written into `run_dir`)
    and, last, the final metrics (with each rank's bound `cores`, `_start`'s). `step_hook(rank,
    world, global step)` runs after every step (tests install faults). With `shown_plan` (the runs
    of one worker group) the run's first line names its directory, and the plan is printed only
    when it differs from the one held there. `train_rows`: the train split's rows when it is cut into
    static shards (`StaticSplitConfig.static_rows`): every rank then knows each epoch's step count
    (`ingest.static_steps`) and no step asks the others whether they have a batch."""
    job = JobSpec.from_dict(job_dict)
    started = time.perf_counter()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(job.train.seed)
    model, optimizer, plan = sharded_model(job, device, dist.group.WORLD)
    plan_text = describe(plan)
    if rank == 0:
        name = f"run {Path(run_dir).name}: " if shown_plan is not None else ""
        head = (f"[lifelong] {name}model={job.model} world={world} device={device} "
                f"batch={job.train.batch_size} per worker ({job.train.batch_size * world} a step)")
        if shown_plan is None or shown_plan[-1:] != [plan_text]:
            head += f"\n[lifelong] sharding plan:\n{plan_text}"
            if shown_plan is not None:
                shown_plan.append(plan_text)
        logs.say(head)
    collate, eval_collate = make_collator(job, store=store), make_eval_collator(job, store=store)
    t = job.train
    state = resume(model, optimizer, job_dict, rank, run_dir, ray.train.get_checkpoint() if registered else None)
    metrics: dict = state.get("metrics", {})
    epoch_losses: list[float] = list(metrics.get("train_loss_epochs", []))
    start_epoch, start_step = state.get("epoch", 0), state.get("step_in_epoch", 0)
    if state.get("epoch_done"):
        start_epoch, start_step = start_epoch + 1, 0
    core = TrainCore(model, optimizer, t, device, state)
    steps_known = static_steps(train_rows, world, rank, t.batch_size) if train_rows is not None else None
    best_dir = Path(run_dir) / BEST_DIR  # the best epoch's weights (DCP), beside the checkpoints

    def save(metrics: dict, epoch: int, step: int, done: bool) -> None:
        checkpoint.assert_finite(model)  # a NaN never reaches a checkpoint
        trainer_state = {"epoch": epoch, "step_in_epoch": step, "epoch_done": done, "world_size": world,
                         **core.state()}
        if not registered:
            checkpoint.save_in_run(model, run_dir, job_dict, plan_text, metrics, optimizer, trainer_state,
                                   keep=t.keep_checkpoints or 0)
            return
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint.save(model, tmp, job_dict, plan_text, metrics, optimizer, trainer_state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    shown = [time.perf_counter()]
    curves = Curves(Path(run_dir) / TB_DIR if rank == 0 and run_dir else None,
                    t.log_every, core.global_step)

    def on_step(step: int, loss: float, global_step: int) -> None:
        curves.step(global_step, loss)
        if step_hook is not None:  # e.g. a recovery test's `faults.FaultAtStep`
            step_hook(rank, world, global_step)
        if rank == 0 and time.perf_counter() - shown[0] >= PROGRESS_EVERY_S:  # a terminal's progress line
            shown[0] = time.perf_counter()
            logs.say(f"[lifelong] epoch {epoch}: step {step} (global {global_step}), "
                     f"{shown[0] - started:.0f} s", transient=True)

    for epoch in range(start_epoch, t.epochs):
        shuffle = {"local_shuffle_buffer_size": t.local_shuffle_buffer, "local_shuffle_seed": t.seed + epoch} \
            if t.shuffle == "local" else {}
        per = max(1, t.collate_rows // t.batch_size)  # training batches per Ray Data batch
        ahead = -(-t.prefetch_batches // per)  # prefetch_batches counts training batches: the Ray batches holding them
        batches = itertools.chain.from_iterable(train_shard.iter_torch_batches(
            batch_size=t.batch_size * per, collate_fn=Batches(collate, t.batch_size), drop_last=False,
            prefetch_batches=ahead, device="cpu", **shuffle))  # Batches drops a tail short of a batch, as drop_last
        valid_batches = valid_shard.iter_torch_batches(batch_size=t.eval_batch_size, collate_fn=eval_collate,
                                                       prefetch_batches=t.prefetch_batches, device="cpu")
        epoch_metrics = core.epoch(
            batches, valid_batches, on_step, log_every=t.log_every,
            show=rank == 0 and not logs.relaying(), start=start_step if epoch == start_epoch else 0,
            every=t.checkpoint_every, steps_known=steps_known,
            on_checkpoint=lambda step: save({"epoch": epoch, "step_in_epoch": step,
                                             "train_loss_epochs": list(epoch_losses)}, epoch, step, False))
        epoch_losses.append(epoch_metrics["train_loss"])
        metrics = {"epoch": epoch, "train_loss_epochs": list(epoch_losses), "global_step": core.global_step,
                   **epoch_metrics}
        curves.epoch(core.global_step, metrics)
        if rank == 0:
            logs.say(epoch_line(epoch, time.perf_counter() - started, metrics))
        best, stop = core.after_epoch(epoch, metrics)
        if best:  # every rank writes its shards of the best weights
            checkpoint.save(model, best_dir, job_dict, plan_text, metrics)
        if epoch < t.epochs - 1 and not stop:
            save(metrics, epoch, epoch_metrics["train_steps"], True)
        if stop:
            break
    stopper = core.stopper
    if stopper is not None and start_epoch < t.epochs:
        if stopper.best_epoch != epoch:  # the final checkpoint holds the best epoch's weights
            checkpoint.load(model, best_dir)
            if rank == 0:
                logs.say(f"[lifelong] early stopping: restored epoch {stopper.best_epoch}'s weights "
                         f"(valid AUC {stopper.best_auc:.4f})")
        metrics = {**stopper.best_metrics, **stopper.final(epoch, t.epochs), "global_step": core.global_step,
                   "train_loss_epochs": list(epoch_losses)}  # the best epoch's metrics, the steps really run
    curves.close()
    metrics["train_peak_rss_mb"] = peak_memory_mb(device)
    nodes, ranks_cores = worker_placement(cores)
    metrics.update(run_s=round(time.perf_counter() - started, 1),  # in this worker, without Ray's start-up
                   train_world_size=world, train_nodes=nodes, train_worker_cores=ranks_cores, resumed=bool(state),
                   resumed_from=state.get("resumed_from"), resumed_global_step=state.get("global_step"))
    if start_epoch >= t.epochs:  # a finished run rerun: report its metrics, write no new checkpoint
        if registered:
            ray.train.report(metrics)
        return
    save(metrics, t.epochs - 1, metrics.get("train_steps", 0), True)
