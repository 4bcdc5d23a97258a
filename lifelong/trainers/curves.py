"""TensorBoard curves of a run (`runs/<name>/tensorboard/`, written by rank 0): the train loss
every `log_every` steps, and per epoch the valid metrics, the epoch's train loss and the job's
samples/s. Open them with `.venv/bin/tensorboard --logdir runs`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

TB_DIR = "tensorboard"
EPOCH_SCALARS = {"valid_auc": "valid/auc", "valid_gauc": "valid/gauc", "valid_logloss": "valid/logloss",
                 "valid_gsu_recall": "valid/gsu_recall", "train_loss": "train/epoch_loss",
                 "train_samples_per_s": "train/samples_per_s"}


class Curves:
    """A TensorBoard writer for one rank: a no-op unless `log_dir` is given (rank 0). `start_step`
    is the global step a resumed run's checkpoint holds: events a killed attempt wrote after it are
    dropped, so a resumed curve has no doubled steps."""

    def __init__(self, log_dir: Optional[Path], log_every: int, start_step: int = 0) -> None:
        self.writer = None
        self.log_every = log_every
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)

    def step(self, global_step: int, loss: float) -> None:
        if self.writer is not None and self.log_every and global_step % self.log_every == 0:
            self.writer.add_scalar("train/loss", loss, global_step)

    def epoch(self, global_step: int, metrics: dict) -> None:
        if self.writer is None:
            return
        for key, tag in EPOCH_SCALARS.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, global_step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar a run wrote; [] if it wrote none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():
        return []
    events = EventAccumulator(str(log_dir)).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def plot_runs(runs: dict[str, list[Path]], path: Path, title: str) -> None:
    """Learning curves of several runs per label (e.g. one per seed): the train loss against the
    step and the valid AUC against the step, one colour per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.get_cmap("tab20").colors
    for i, (label, dirs) in enumerate(runs.items()):
        for j, d in enumerate(dirs):
            for ax, tag, marker in ((axes[0], "train/loss", None), (axes[1], "valid/auc", "o")):
                points = read(d / TB_DIR, tag)
                if points:
                    ax.plot(*zip(*points), color=colours[i % len(colours)], marker=marker, lw=1,
                            label=label if j == 0 else None)
    axes[0].set(xlabel="global step", ylabel="train loss", title="train loss (every train.log_every steps)")
    axes[1].set(xlabel="global step", ylabel="valid AUC", title="valid AUC per epoch")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
        else:  # e.g. no run reached train.log_every steps
            ax.text(0.5, 0.5, "no points", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
