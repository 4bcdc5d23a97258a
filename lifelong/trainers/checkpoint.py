"""Checkpoints: sharded model state through torch.distributed.checkpoint, plus run metadata.

Every rank writes its own shards into its local directory; Ray Train uploads all ranks'
directories into the same checkpoint folder, so the folder holds the whole model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

JOB_FILE = "job.json"
PLAN_FILE = "plan.txt"
METRICS_FILE = "metrics.json"


def save(model: nn.Module, path: str | Path, job: dict, plan_text: str, metrics: dict) -> None:
    """Write the model's (sharded) state and, from rank 0, the job, plan and metrics."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(path))
    if not dist.is_initialized() or dist.get_rank() == 0:
        (path / JOB_FILE).write_text(json.dumps(job, indent=2, default=list))
        (path / PLAN_FILE).write_text(plan_text + "\n")
        (path / METRICS_FILE).write_text(json.dumps(metrics, indent=2))


def load(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into `model` in place, whatever plan or world size wrote it."""
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])


def read_job(path: str | Path) -> dict:
    return json.loads((Path(path) / JOB_FILE).read_text())


@torch.no_grad()
def assert_finite(model: nn.Module) -> None:
    """Refuse to checkpoint NaN/inf weights."""
    for name, t in model.state_dict().items():
        local = [s.tensor for s in t.local_shards()] if hasattr(t, "local_shards") else [t]
        for x in local:
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise ValueError(f"refusing to checkpoint: '{name}' holds non-finite values")
