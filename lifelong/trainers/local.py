"""Single-process, unsharded training: the same model, collate and loops without Ray or DMP.

For unit tests, quick experiments and as the reference the sharded path is checked against.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import torch

from lifelong.data.store import SequenceStore
from lifelong.embeddings.batch import Batch, EvalBatch
from lifelong.trainers.allocator import keep_freed_memory
from lifelong.trainers.config import JobSpec
from lifelong.trainers.inputs import make_collator, make_eval_collator
from lifelong.trainers.core import TrainCore
from lifelong.trainers.model_setup import DENSE, SPARSE, plain_model


class _Both:
    """Steps a sparse and a dense optimiser together (the unsharded stand-in for the fused one)."""

    def __init__(self, *opts: torch.optim.Optimizer) -> None:
        self.opts = opts

    def zero_grad(self) -> None:
        for o in self.opts:
            o.zero_grad()

    def step(self) -> None:
        for o in self.opts:
            o.step()

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.opts for g in o.param_groups]


def one_chunk(table: pa.Table) -> pa.Table:
    """The table with each column in one chunk (as it is when already so): `take` of shuffled rows
    across many chunks (one per user after a build) is ~50x slower. Stays chunked where list
    offsets would pass int32."""
    if table.num_rows and max(c.num_chunks for c in table.columns) > 1:
        try:
            return table.combine_chunks()
        except (pa.ArrowInvalid, OverflowError):
            pass
    return table


def batches(table: pa.Table, job: JobSpec, batch_size: int, seed: int | None,
            store: Optional[SequenceStore] = None) -> Iterator[Batch]:
    collate = make_collator(job, store=store)
    order = np.arange(table.num_rows) if seed is None else np.random.default_rng(seed).permutation(table.num_rows)
    table = one_chunk(table)
    for i in range(0, table.num_rows, batch_size):
        yield collate(table.take(pa.array(order[i:i + batch_size])))


def eval_batches(table: pa.Table, job: JobSpec, store: Optional[SequenceStore] = None) -> Iterator[EvalBatch]:
    """The table's validation batches in order, each with its full-history batch on demand."""
    collate, table = make_eval_collator(job, store), one_chunk(table)
    for i in range(0, table.num_rows, job.train.eval_batch_size):
        yield collate(table.slice(i, job.train.eval_batch_size))


def local_optimizer(job: JobSpec, model: torch.nn.Module) -> _Both:
    """The job's sparse and dense optimisers over an unsharded model: the same optimiser classes the
    sharded path fuses (TorchRec's RowWiseAdagrad updates exactly the rows the fused kernel does)."""
    emb = model.sparse_parameters()
    cache = list(model.sparse.key_cache.parameters()) if model.sparse.key_cache is not None else []
    dense = [p for p in model.parameters() if all(p is not e for e in emb + cache)]
    cls, extra = SPARSE[job.train.sparse_optimizer]
    dense_opt = DENSE[job.train.dense_optimizer](dense, lr=job.train.dense_lr)
    return _Both(cls(emb, lr=job.train.sparse_lr, **extra), dense_opt)


def fit_local(job: JobSpec, train: pa.Table, valid: pa.Table, store: Optional[SequenceStore] = None,
              on_epoch: Optional[Callable[[torch.nn.Module, dict], None]] = None
              ) -> tuple[torch.nn.Module, list[dict]]:
    """Train `job.train.epochs` epochs; returns the model and per-epoch metrics (samples in the
    store layout read their histories from `store`). With `train.patience` the run stops early,
    the model holds the best epoch's weights and the last entry is that epoch's metrics with
    `best_epoch`, `stopped_early` and `epochs_trained`. `on_epoch(model, metrics)` sees every
    epoch's metrics as they come (a tune trial reports them)."""
    keep_freed_memory()
    torch.manual_seed(job.train.seed)
    train, valid = one_chunk(train), one_chunk(valid)  # once, not at every epoch's `batches`
    model = plain_model(job)
    opt = local_optimizer(job, model)
    history = []
    core = TrainCore(model, opt, job.train, torch.device("cpu"))
    best_state: dict = {}
    for epoch in range(job.train.epochs):
        train_batches = batches(train, job, job.train.batch_size, job.train.seed + epoch, store=store)
        history.append({"epoch": epoch, **core.epoch(train_batches, eval_batches(valid, job, store))})
        best, stop = core.after_epoch(epoch, history[-1])
        if best:
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(model, history[-1])
        if stop:
            break
    if core.stopper is not None:
        if core.stopper.best_epoch != epoch:
            model.load_state_dict(best_state)
        history.append({**core.stopper.best_metrics, **core.stopper.final(epoch, job.train.epochs)})
    return model, history
