"""The training core, without Ray: one model, its optimisers and what outlives an epoch.

The in-process trainer (`local.fit_local`) and the Ray worker (`worker.run_job`) train through the
same `TrainCore`: the global step, the GSU key cache's refresh schedule, early stopping with
learning-rate decay, each epoch (`loop.fit_epoch`) and the rule after it. What differs stays with
the caller: where batches come from, where checkpoints and curves go, and how the best epoch's
weights are kept (in memory in-process, DCP on Ray).
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from lifelong.embeddings.batch import Batch, EvalBatch
from lifelong.trainers.config import TrainConfig
from lifelong.trainers.loop import EarlyStopping, KeyCacheRefresh, fit_epoch, lr_groups


class TrainCore:
    """Trains `model` with `optimizer` under `t`; `state` is a checkpoint's trainer state to go on
    from (global step, early-stopping counters, whether the key cache was saved)."""

    def __init__(self, model: torch.nn.Module, optimizer, t: TrainConfig, device: torch.device,
                 state: Optional[dict] = None) -> None:
        state = state or {}
        self.model, self.optimizer, self.t, self.device = model, optimizer, t, device
        self.global_step: int = state.get("global_step", 0)
        self.keys = KeyCacheRefresh(model, t.key_cache_every, self.global_step)
        if state.get("key_cache_loaded") is False:  # resumed from a checkpoint written without the cache
            self.keys.refresh()
        self.stopper = EarlyStopping(t.patience, state.get("early_stopping"), t.lr_decay) if t.patience else None
        self.base_lr = [g["lr"] for g in lr_groups(model, optimizer)] if self.stopper is not None else []
        if self.stopper is not None:  # optimiser checkpoints keep no learning rates: a resumed run gets its decay back
            self.stopper.set_lr(model, optimizer, self.base_lr)

    def epoch(self, batches: Iterable[Batch], valid: Iterable[EvalBatch],
              on_step: Optional[Callable[[int, float, int], None]] = None, **hooks) -> dict:
        """One epoch (`fit_epoch`: the training pass, the key cache refreshed, one validation pass);
        `on_step(step_in_epoch, loss, global_step)` after each step; `hooks` go to `train_epoch`
        (start, every, on_checkpoint, log_every, show)."""
        def step(step_in_epoch: int, loss: float) -> None:
            self.global_step += 1
            if on_step is not None:
                on_step(step_in_epoch, loss, self.global_step)

        return fit_epoch(self.model, self.optimizer, self.t, self.device, batches, valid, self.keys,
                         on_step=step, **hooks)

    def after_epoch(self, epoch: int, metrics: dict) -> tuple[bool, bool]:
        """(best so far, stop now) by early stopping, the learning rates set for the next epoch;
        (False, False) without it."""
        if self.stopper is None:
            return False, False
        return self.stopper.after_epoch(epoch, metrics, self.model, self.optimizer, self.base_lr)

    def state(self) -> dict:
        """What a checkpoint keeps of the core, beside the weights and the data position."""
        return {"global_step": self.global_step,
                **({"early_stopping": self.stopper.state()} if self.stopper is not None else {})}
