"""Checkpoints through torch.distributed.checkpoint: sharded embeddings, dense weights, both
optimisers' state (fused sparse + dense), and the trainer state (epoch, step, data position,
per-rank RNG), plus run metadata.

Every rank writes its own shards into its local directory; Ray Train uploads all ranks'
directories into the same checkpoint folder, so the folder holds the whole model. DCP reshards
on load: a checkpoint loads under any plan or world size (`evaluate` loads it unsharded).
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from lifelong.cluster.logs import say

JOB_FILE = "job.json"
PLAN_FILE = "plan.txt"
METRICS_FILE = "metrics.json"
STATE_FILE = "trainer_state.json"  # epoch, step in epoch, global step: where to resume


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _rng_file(path: Path, rank: int) -> Path:
    return path / f"rng_rank{rank}.pt"


def rng_state() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def save(model: nn.Module, path: str | Path, job: dict, plan_text: str, metrics: dict,
         optimizer=None, trainer_state: Optional[dict] = None) -> None:
    """Write the model's (sharded) state, the optimiser's if given, this rank's RNG and, from rank 0,
    the job, plan, metrics and trainer state."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    dcp.save(state, checkpoint_id=str(path))
    torch.save(rng_state(), _rng_file(path, _rank()))
    if _rank() == 0:
        (path / JOB_FILE).write_text(json.dumps(job, indent=2, default=list))
        (path / PLAN_FILE).write_text(plan_text + "\n")
        (path / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        if trainer_state is not None:
            (path / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))


def save_in_run(model: nn.Module, run_dir: str | Path, job: dict, plan_text: str, metrics: dict, optimizer,
                trainer_state: dict, keep: int = 0) -> Path:
    """`save` straight into a new checkpoint directory of `run_dir` that every rank writes its shards
    to (shared storage; what Ray Train's upload does for a registered checkpoint), named like Ray
    Train's; then only the newest `keep` complete checkpoints stay (0 = all). Collective."""
    name = [f"checkpoint_{datetime.now():%Y-%m-%d_%H-%M-%S.%f}"]
    if dist.is_initialized():
        dist.broadcast_object_list(name, src=0)
    path = Path(run_dir) / name[0]
    save(model, path, job, plan_text, metrics, optimizer, trainer_state)
    if dist.is_initialized():
        dist.barrier()  # every rank's shards and RNG state are written
    if keep and _rank() == 0:
        complete = sorted((p for p in Path(run_dir).glob(CHECKPOINT_GLOB) if p.is_dir() and not incomplete(p)),
                          key=_order)
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def _init_lazy_state(optimizer) -> None:
    """Dense optimisers create their state on the first step; DCP loads in place, so make it now."""
    for _, opt in getattr(optimizer, "optimizers", [("", optimizer)]):
        if not opt.state:
            opt.init_state()


def load(model: nn.Module, path: str | Path, optimizer=None) -> dict:
    """Load a checkpoint into `model` (and `optimizer`) in place, whatever plan or world size wrote
    it; restore this rank's RNG if the checkpoint has it. Returns the trainer state ({} if none),
    with `key_cache_loaded: False` when the model has a GSU key cache the checkpoint lacks (it was
    written without one: the caller refreshes it)."""
    path = Path(path)
    state = {"model": model.state_dict()}
    saved = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    no_cache = [k for k in state["model"] if "key_cache." in k and f"model.{k}" not in saved]
    for k in no_cache:
        del state["model"][k]
    has_optim = optimizer is not None and (path / STATE_FILE).exists()
    if has_optim:
        _init_lazy_state(optimizer)
        state["optim"] = optimizer.state_dict()
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"], strict=not no_cache)
    if has_optim:
        optimizer.load_state_dict(state["optim"])
    rng = _rng_file(path, _rank())
    if rng.exists():  # absent when resuming on more ranks than wrote the checkpoint
        saved = torch.load(rng, weights_only=True)
        torch.set_rng_state(saved["torch"])
        if "cuda" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved["cuda"])
    trainer = json.loads((path / STATE_FILE).read_text()) if (path / STATE_FILE).exists() else {}
    return {**trainer, "key_cache_loaded": False} if no_cache else trainer


CHECKPOINT_GLOB = "checkpoint_*"  # Ray Train's checkpoint directories inside a run directory


def incomplete(path: str | Path) -> Optional[str]:
    """Why `path` is not a complete checkpoint, or None when it is: the job, metrics and trainer state
    files parse, the DCP metadata loads, every shard file it names is present at its full length,
    and every rank that wrote it left its RNG state."""
    path = Path(path)
    parsed = {}
    for name in (JOB_FILE, METRICS_FILE, STATE_FILE):
        try:
            parsed[name] = json.loads((path / name).read_text())
        except FileNotFoundError:
            return f"no {name}"
        except ValueError as e:
            return f"{name} is not valid JSON ({e})"
    try:
        meta = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001  a torn .metadata raises whatever unpickling hits
        return f"DCP metadata unreadable ({type(e).__name__}: {e})"
    need: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for rel, size in sorted(need.items()):
        f = path / rel
        if not f.is_file():
            return f"shard file {rel} missing"
        if f.stat().st_size < size:
            return f"shard file {rel} truncated ({f.stat().st_size} of {size} bytes)"
    for rank in range(int(parsed[STATE_FILE].get("world_size", 0))):
        if not _rng_file(path, rank).is_file():
            return f"no {_rng_file(path, rank).name} (rank {rank} of {parsed[STATE_FILE]['world_size']})"
    return None


def _order(path: Path) -> tuple:
    """Newest first by global step, an epoch-end checkpoint after a mid-epoch one, then by name (dated)."""
    state = json.loads((path / STATE_FILE).read_text())
    return state.get("global_step", 0), bool(state.get("epoch_done")), path.name


def latest(run_dir: str | Path, log: Callable[[str], None] = say) -> Optional[Path]:
    """The newest complete checkpoint under a run directory, whether or not Ray Train registered it;
    each incomplete one is named through `log` and skipped. None if there is no complete one."""
    run_dir = Path(run_dir)
    complete = []
    for path in sorted(p for p in run_dir.glob(CHECKPOINT_GLOB) if p.is_dir()):
        why = incomplete(path)
        if why:
            log(f"[lifelong] skipping incomplete checkpoint {path}: {why}")
        else:
            complete.append(path)
    return max(complete, key=_order) if complete else None


def resolve(path: str | Path, log: Callable[[str], None] = say) -> Path:
    """A checkpoint directory (checked complete) or a run directory (its newest complete checkpoint)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint or run directory")
    if (path / ".metadata").exists() or (path / JOB_FILE).exists():
        why = incomplete(path)
        if why:
            raise ValueError(f"{path}: incomplete checkpoint ({why}); pass its run directory to use the newest "
                             "complete one")
        return path
    found = latest(path, log)
    if found is None:
        raise FileNotFoundError(f"{path}: no complete checkpoint in this run directory")
    return found


def read_job(path: str | Path) -> dict:
    return json.loads((Path(path) / JOB_FILE).read_text())


IDENTITY = ("model", "model_config", "features", "samples")  # what a run name's checkpoints must share


def check_same_job(path: str | Path, job: dict, name: Optional[str] = None) -> None:
    """Refuse a checkpoint of another job (model, its config, features or samples differ) under the
    same run name; training settings and the sharding plan may change."""
    saved, now = read_job(path), json.loads(json.dumps(job, default=list))
    diff = [k for k in IDENTITY if saved.get(k) != now.get(k)]
    if diff:
        raise ValueError(f"run name already holds a checkpoint of another job (differs in {diff}): "
                         f"choose another --name, or remove {name or path}'s run directory")


def finished(run_dir: str | Path, job: dict) -> Optional[tuple[Path, dict]]:
    """(checkpoint, its metrics) when the run directory's newest complete checkpoint ends the job's
    last epoch: rerunning it has nothing to train. None otherwise (no checkpoint, or epochs left)."""
    found = latest(run_dir, log=lambda _: None) if Path(run_dir).is_dir() else None
    if found is None:
        return None
    check_same_job(found, job)
    state = json.loads((found / STATE_FILE).read_text())
    if not (state.get("epoch_done") and state.get("epoch", -1) >= job["train"]["epochs"] - 1):
        return None
    return found, {**json.loads((found / METRICS_FILE).read_text()), "global_step": state.get("global_step")}


@torch.no_grad()
def assert_finite(model: nn.Module) -> None:
    """Refuse to checkpoint NaN/inf weights."""
    for name, t in model.state_dict().items():
        local = [s.tensor for s in t.local_shards()] if hasattr(t, "local_shards") else [t]
        for x in local:
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise ValueError(f"refusing to checkpoint: '{name}' holds non-finite values")


def choose(run_dir: Optional[str], registered: Optional[str]) -> tuple[Optional[str], str]:
    """Which checkpoint a (re)started run resumes from, and the line that says so: the newest complete
    checkpoint in the run directory, whether or not Ray Train's controller registered it before a
    failure (incomplete ones are named and skipped); Ray's registered one where the run directory is
    not on a local file system."""
    if run_dir and Path(run_dir).is_dir():
        found = latest(run_dir)
        if found is None:
            return None, f"[lifelong] no complete checkpoint in {run_dir}: training from scratch"
        return str(found), f"[lifelong] resuming from {found}"
    if registered:
        return registered, f"[lifelong] resuming from Ray Train's checkpoint {registered}"
    return None, "[lifelong] no checkpoint: training from scratch"
