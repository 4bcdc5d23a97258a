"""Per-worker train and eval loops (plain functions; `worker.py` runs them under Ray Train).

Every step of a sharded model is a collective (embedding all-to-alls), so every rank must run the
same number of steps: on static shards every rank knows that number before the epoch (`counted`);
otherwise `in_lockstep` stops all ranks as soon as one is out of batches. Both count what a rank
skipped. Evaluation never drops rows: a rank that runs out repeats its last
batch (outputs discarded) until all are done.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from lifelong.embeddings.batch import Batch, EvalBatch
from lifelong.models.base import loss as ctr_loss
from lifelong.trainers.config import TrainConfig
from lifelong.trainers.metrics import evaluate_arrays
from lifelong.trainers.steptime import StepClock, per_step

if TYPE_CHECKING:  # the driver imports `ingest` (Ray's side), which must not load this module's models
    from lifelong.trainers.ingest import EpochSteps


class NonFiniteLoss(RuntimeError):
    """A loss or prediction is NaN/inf; raised before anything is written."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedModelParallel (or the model itself, unsharded)."""
    return model.module if hasattr(model, "module") else model


class _AnyRank:
    """`_any_rank` started now and read later: an all-reduce that runs while the caller works."""

    def __init__(self, flag: bool, device: torch.device) -> None:
        self.t = torch.tensor([int(flag)], device=device)
        self.work = dist.all_reduce(self.t, op=dist.ReduceOp.MAX, async_op=True) if dist.is_initialized() else None

    def result(self) -> bool:
        if self.work is not None:
            self.work.wait()
        return bool(self.t.item())


def _any_rank(flag: bool, device: torch.device) -> bool:
    return _AnyRank(flag, device).result()


def in_lockstep(batches: Iterable, device: torch.device, skipped: list[int]) -> Iterator:
    """Yield batches while every rank has one; append this rank's unused batch count to skipped.
    Each batch is fetched, and whether every rank has one asked, before the previous one is handed
    out: that all-reduce's round trip runs during the previous batch's step, not between steps."""
    it = iter(batches)
    nxt = next(it, None)
    asked = _AnyRank(nxt is None, device)
    while True:
        if asked.result():
            skipped.append(int(nxt is not None) + sum(1 for _ in it))
            return
        batch, nxt = nxt, next(it, None)
        asked = _AnyRank(nxt is None, device)
        yield batch


def counted(batches: Iterable, every_rank: int, own: int, skipped: list[int]) -> Iterator:
    """Yield the first `every_rank` batches, the number every rank has, so the ranks need no
    per-step collective to agree (`in_lockstep`'s all-reduce); append this rank's unused count
    (`own` - `every_rank`). A rank whose batches run out first raises at once, naming both counts
    (the other ranks would wait for it in the next step's collectives until their timeout)."""
    n = 0
    for batch in itertools.islice(batches, every_rank):
        n += 1
        yield batch
    if n < every_rank:
        raise RuntimeError(f"rank {dist.get_rank() if dist.is_initialized() else 0}: its shard gave {n} batches, "
                           f"fewer than the {every_rank} every rank was counted to have (its own: {own})")
    skipped.append(own - every_rank)


def train_epoch(model: torch.nn.Module, optimizer, batches: Iterable[Batch], device: torch.device,
                max_steps: int = 0, log_every: int = 50, show: bool = True, start: int = 0,
                every: int = 0, on_checkpoint: Optional[Callable[[int], None]] = None,
                on_step: Optional[Callable[[int, float], None]] = None,
                before_step: Optional[Callable[[Batch], None]] = None, grad_clip: float = 0.0,
                steps_known: Optional[EpochSteps] = None) -> dict:
    """One pass; returns steps, mean loss and the mean loss of the first and last quarter of the
    steps (this rank), skipped batches (this rank), and samples and samples/s summed over all
    ranks (the job's throughput: the whole pass, its wait for the first batch included). Beside
    them: `first_batch_s`, that wait (this rank: the data pipeline's start), and
    `steady_samples_per_s`, the rate from the first batch on (every batch after each rank's first),
    and `step_ms` / `step_cpu_ms`: each phase's mean wall and training-thread CPU milliseconds per
    step, over ranks (`steptime.PHASES`; the wait for the first batch left out).

    Resuming: the first `start` batches are passed over (they were trained before the checkpoint).
    `on_checkpoint(step_in_epoch)` runs every `every` steps; `on_step(step_in_epoch, loss)` after each,
    `before_step(batch)` before each (e.g. `KeyCacheRefresh.step`). `grad_clip` > 0 clips the global
    norm of the dense gradients (in-process too: under DMP the fused sparse optimiser has stepped
    the tables in backward already, so both paths clip the same gradients). `steps_known`: the
    epoch's batch counts when every rank knows them up front (static shards, `ingest.static_steps`;
    counted from the epoch's start, resumed batches included): the ranks then stop together by count
    (`counted`), without `in_lockstep`'s all-reduce a step."""
    model.train()
    batches = itertools.islice(batches, start, None)
    skipped: list[int] = []
    steps = samples = 0
    losses: list[float] = []
    loss_sum, t0 = 0.0, time.perf_counter()
    bar = tqdm(desc="train", unit="batch", disable=not show, mininterval=5)
    rank = dist.get_rank() if dist.is_initialized() else 0
    sparse = {id(p) for p in unwrap(model).sparse_parameters()}
    first = math.nan  # seconds to this rank's first batch; the steady rate is counted from then
    clock = StepClock()
    if steps_known is not None:
        stream = counted(batches, max(steps_known.every_rank - start, 0), max(steps_known.own - start, 0), skipped)
    else:
        stream = in_lockstep(batches, device, skipped)
    for batch in stream:
        if steps:
            clock.lap("data")
        else:
            first, first_size = time.perf_counter() - t0, batch.size
            clock.restart()
        batch = batch.to(device, non_blocking=True)
        if before_step is not None:
            before_step(batch)
            clock.lap("other")
        loss = ctr_loss(batch, model(batch))
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"rank {rank}: non-finite loss {loss.item()} at step {steps}")
        clock.lap("forward")
        optimizer.zero_grad()
        loss.backward()
        clock.lap("backward")
        if grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None
                                            and id(p) not in sparse], grad_clip)
        optimizer.step()
        clock.lap("optimizer")
        steps += 1
        samples += batch.size
        losses.append(loss.item())
        loss_sum += losses[-1]
        if on_step is not None:
            on_step(start + steps, losses[-1])
        bar.update(1)
        if log_every and steps % log_every == 0:
            bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
        last = bool(max_steps) and start + steps >= max_steps  # the epoch-end checkpoint follows
        if every and on_checkpoint is not None and (start + steps) % every == 0 and not last:
            on_checkpoint(start + steps)
        clock.lap("other")
        if max_steps and start + steps >= max_steps:
            skipped.append(-1)  # stopped by max_steps, not by data
            break
    if steps:
        clock.lap("data")  # the last wait: for the end of every rank's data
    bar.close()
    elapsed = time.perf_counter() - t0
    after_first = samples - first_size if steps else 0
    times, ranks = clock.totals(), 1
    if dist.is_initialized():
        total = torch.tensor([samples, after_first, *times], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        samples, after_first, times = int(total[0].item()), int(total[1].item()), total[2:].tolist()
        ranks = dist.get_world_size()
    q = max(1, steps // 4)
    steady = elapsed - first if steps > 1 else 0.0
    return {"steps": steps, "samples": samples, "loss": loss_sum / max(steps, 1),
            "loss_start": float(np.mean(losses[:q])) if losses else math.nan,
            "loss_end": float(np.mean(losses[-q:])) if losses else math.nan,
            "samples_per_s": samples / elapsed if elapsed else math.nan,
            "first_batch_s": round(first, 3), "steady_samples_per_s": after_first / steady if steady else math.nan,
            "skipped_batches": max(skipped[0], 0) if skipped else 0, **per_step(times, steps, ranks)}


def fit_epoch(model: torch.nn.Module, optimizer, t: TrainConfig, device: torch.device, batches: Iterable[Batch],
              valid: Iterable[EvalBatch], keys: Optional["KeyCacheRefresh"] = None, **hooks) -> dict:
    """One epoch of the training core, the same in-process, on a Ray worker and in tests: a training
    pass (`train_epoch`; `hooks` are its start / every / on_checkpoint / on_step / log_every / show /
    steps_known), the key cache refreshed so evaluation reads fresh keys, then one pass over the `valid` batches
    (the first `t.max_eval_batches` when set; `validate`: AUC / GAUC / logloss and the GSU
    consistency diagnostics). Returns flat `train_*`, `valid_*` and `key_cache_*` metrics."""
    hooks.setdefault("log_every", 0)
    hooks.setdefault("show", False)
    stats = train_epoch(model, optimizer, batches, device, t.max_steps, before_step=keys.step if keys else None,
                        grad_clip=t.grad_clip, **hooks)
    if keys is not None:
        keys.refresh()
    valid = itertools.islice(valid, t.max_eval_batches) if t.max_eval_batches else valid  # this rank's first N
    metrics = validate(model, valid, device, t.diagnostic_batches)
    return {**{f"train_{k}": v for k, v in stats.items()}, **{f"valid_{k}": v for k, v in metrics.items()},
            **(keys.metrics() if keys is not None else {})}


class EarlyStopping:
    """Early stopping on valid AUC, with learning-rate decay on a plateau: `update` after each epoch
    says whether it is the best so far; `stop` once `patience` epochs in a row were not; each such
    epoch that does not stop the run multiplies the learning rates by `lr_decay` (`lr_scale` is the
    product so far; 1 = off). Its `state()` travels in checkpoints, so a resumed run keeps counting."""

    def __init__(self, patience: int, state: Optional[dict] = None, lr_decay: float = 1.0) -> None:
        self.patience = patience
        self.lr_decay = lr_decay
        s = state or {}
        self.best_auc: float = s.get("best_auc", -math.inf)
        self.best_epoch: int = s.get("best_epoch", -1)
        self.bad_epochs: int = s.get("bad_epochs", 0)
        self.decays: int = s.get("decays", 0)
        self.best_metrics: dict = s.get("best_metrics", {})

    def update(self, epoch: int, metrics: dict) -> bool:
        auc = metrics["valid_auc"]
        if auc > self.best_auc:  # NaN never improves
            self.best_auc, self.best_epoch, self.bad_epochs, self.best_metrics = auc, epoch, 0, dict(metrics)
            return True
        self.bad_epochs += 1
        if self.lr_decay < 1 and not self.stop:
            self.decays += 1
        return False

    @property
    def lr_scale(self) -> float:
        return self.lr_decay ** self.decays

    @property
    def stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state(self) -> dict:
        return {"best_auc": self.best_auc, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "decays": self.decays, "best_metrics": self.best_metrics}

    def set_lr(self, model: torch.nn.Module, optimizer, base: list[float]) -> None:
        """Set each of the model's param groups (`lr_groups`) to its base rate times `lr_scale`, in
        effect from the next forward pass: TorchRec's fused table optimisers copy their group's rate
        into the kernel at `zero_grad`/`step`, and a step updates the tables at the rate its forward
        pass saw, so this calls `zero_grad` (between steps it discards nothing)."""
        groups = lr_groups(model, optimizer)
        if len(groups) != len(base):
            raise ValueError(f"{len(base)} base learning rates for {len(groups)} param groups")
        for g, lr in zip(groups, base):
            g["lr"] = lr * self.lr_scale
        optimizer.zero_grad()

    def after_epoch(self, epoch: int, metrics: dict, model: torch.nn.Module, optimizer, base_lr: list[float]
                    ) -> tuple[bool, bool]:
        """(best, stop) for this epoch's metrics; unless stopping, the learning rates are set for the
        next epoch and `metrics["lr_scale"]` says the rate it trains at."""
        best = self.update(epoch, metrics)
        if not self.stop:
            self.set_lr(model, optimizer, base_lr)
            metrics["lr_scale"] = self.lr_scale
        return best, self.stop

    def final(self, last_epoch: int, epochs: int) -> dict:
        """What the run reports about it: the best epoch, and whether it stopped before `epochs`."""
        return {"best_epoch": self.best_epoch, "stopped_early": last_epoch < epochs - 1,
                "epochs_trained": last_epoch + 1}


def lr_groups(model: torch.nn.Module, optimizer) -> list[dict]:
    """Every param group that sets a learning rate of the model: the optimiser's (TorchRec's fused
    table optimisers read their group's rate at each `zero_grad`/`step`) and, under DMP, the
    in-backward optimisers TorchRec attaches to data-parallel tables, which no optimiser wraps."""
    groups, seen = list(optimizer.param_groups), set()
    for p in model.parameters():
        for o in getattr(p, "_in_backward_optimizers", ()):
            if id(o) not in seen:
                seen.add(id(o))
                groups += o.param_groups
    return groups


class KeyCacheRefresh:
    """Refreshes a model's cached GSU keys every `every` training steps (counted from the job's
    `global_step`, so a resumed run refreshes on the same steps) and before each evaluation, and
    reports how stale the keys had become: their drift (relative L2 change, share of rows changed)
    and, on the step's batch, the share of the stale cache's top-k that the fresh cache also picks.
    Does nothing for a model without a key cache."""

    def __init__(self, model: torch.nn.Module, every: int, global_step: int = 0) -> None:
        self.module = unwrap(model)
        self.every = every if self.module.sparse.key_cache is not None else 0
        self.global_step = global_step
        self.drift: list[dict] = []
        self.overlap: list[float] = []

    def step(self, batch: Optional[Batch] = None) -> None:
        if self.every and self.global_step % self.every == 0:
            scored = batch is not None and bool(self.drift)  # the same on every rank: select_cached is collective
            stale = self.module.select_cached(batch) if scored else None
            self.refresh()
            if scored:
                self.overlap.append(topk_overlap(stale, self.module.select_cached(batch)))
        self.global_step += 1

    def refresh(self) -> None:
        if self.every:
            self.drift.append(self.module.refresh_keys())

    def metrics(self) -> dict:
        """Refresh count and mean staleness at refresh, the first refresh (of the empty cache) left out."""
        if not self.every:
            return {}
        later = self.drift[1:]
        mean = lambda xs: float(np.mean(xs)) if xs else math.nan  # noqa: E731
        return {"key_cache_every": self.every, "key_cache_refreshes": len(self.drift),
                "key_cache_rel_change": mean([d["rel_change"] for d in later]),
                "key_cache_rows_changed": mean([d["rows_changed"] for d in later]),
                "key_cache_topk_overlap": mean(self.overlap)}


def topk_overlap(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Share of selection b's valid positions that selection a also holds; each is
    (indices (B, k), valid (B, k)). Over this rank's rows."""
    (ia, va), (ib, vb) = a, b
    hit = (ib.unsqueeze(2) == ia.unsqueeze(1)) & va.unsqueeze(1)  # (B, k, k)
    return float((hit.any(2) & vb).sum() / vb.sum().clamp(min=1))


def _eval_lockstep(items: Iterable, device: torch.device) -> Iterator[tuple]:
    """(item, real) while any rank has items left; a rank that ran out repeats its last item with
    real=False, so the sharded lookups stay in step."""
    it = iter(items)
    last = None
    while True:
        nxt = next(it, None)
        if not _any_rank(nxt is not None, device):
            return
        item = nxt if nxt is not None else last
        if item is None:
            raise RuntimeError("a rank has no evaluation data at all; use fewer workers")
        last = item
        yield item, nxt is not None


@torch.no_grad()
def _scores(model: torch.nn.Module, pairs: Iterable[tuple[Batch, bool]], device: torch.device
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, users) of the real batches of lockstep (batch, real) pairs."""
    model.eval()
    out_s, out_l, out_u = [], [], []
    for batch, real in pairs:
        logits = model(batch.to(device)).logits
        if real:
            out_s.append(logits.float().cpu().numpy())
            out_l.append(batch.labels.numpy())
            out_u.append(batch.user_ids.numpy())
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return cat(out_s, np.float64), cat(out_l, np.float64), cat(out_u, np.int64)


def predict(model: torch.nn.Module, batches: Iterable[Batch], device: torch.device
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, users) of this rank's batches, running in step with the other ranks."""
    return _scores(model, _eval_lockstep(batches, device), device)


def _all_ranks_metrics(s: np.ndarray, y: np.ndarray, u: np.ndarray) -> dict:
    """AUC, GAUC and logloss of every rank's (logits, labels, users), gathered to every rank."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (s, y, u))
        s, y, u = (np.concatenate([p[i] for p in parts]) for i in range(3))
    if not np.isfinite(s).all():
        raise NonFiniteLoss(f"{int((~np.isfinite(s)).sum())} non-finite predictions in evaluation")
    return evaluate_arrays(s, y, u)


def evaluate(model: torch.nn.Module, batches: Iterable[Batch], device: torch.device) -> dict:
    """AUC, GAUC and logloss over all ranks' rows (gathered, then computed on every rank)."""
    return _all_ranks_metrics(*predict(model, batches, device))


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[EvalBatch], device: torch.device,
             diagnostic_batches: int) -> dict:
    """`evaluate` and, in the same pass over the batches, the GSU consistency diagnostics of a
    two-stage model on the full histories of the first `diagnostic_batches` (0: off): the mean recall
    of its GSU top-k against the exact top-k of its ESU relevance over all L, over rows with more
    than k behaviours (all ranks)."""
    module = unwrap(model)
    diagnose = diagnostic_batches if hasattr(module, "gsu_recall") else 0
    total = torch.zeros(2, dtype=torch.float64, device=device)  # recall sum, rows

    def pairs() -> Iterator[tuple[Batch, bool]]:
        for n, (item, real) in enumerate(_eval_lockstep(batches, device)):
            if n < diagnose:  # every rank at the same lockstep batch: the sharded lookups stay paired
                recall, eligible = module.gsu_recall(item.full_history().to(device))
                if real:
                    total.add_(torch.stack([(recall * eligible).sum(), eligible.sum()]).double())
            yield item.batch, real

    metrics = _all_ranks_metrics(*_scores(model, pairs(), device))
    if diagnose:
        if dist.is_initialized():
            dist.all_reduce(total)
        rows = int(total[1].item())
        metrics.update(gsu_recall=total[0].item() / rows if rows else math.nan, gsu_recall_rows=rows)
    return metrics
