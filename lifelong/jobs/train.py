"""The train job: connect to Ray, prepare samples (cached), fit on Ray Train, write a summary."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

from lifelong.cluster.connect import connect
from lifelong.cluster.logs import relayed, short
from lifelong.embeddings.spec import FeatureSpec, replicated_on_cpu
from lifelong.jobs.config import RUN_FILE, RunFile
from lifelong.jobs.prepare import prepare, samples_key
from lifelong.trainers import checkpoint
from lifelong.trainers.checkpoint import PLAN_FILE
from lifelong.trainers.config import JobSpec
from lifelong.trainers.trainer import make_runs_trainer, make_trainer


def job_spec(run: RunFile, meta) -> JobSpec:
    """The workers' job; its sharding constraints checked here, before any worker starts."""
    job = JobSpec(model=run.model, model_config=dict(run.model_config),
                  features=FeatureSpec(meta.n_items, meta.n_categories, run.embedding_dim,
                                       meta.n_users if run.user_embedding else 0, run.embedding_init),
                  samples=run.samples, train=run.train, sharding=dict(run.sharding))
    if run.cluster.use_gpu is False:  # the main tables on CPU (GPUs, auto, and a model's own tables: the workers)
        replicated_on_cpu("sparse.embeddings", job.features.table_names, job.sharding)
    return job


def train(run: RunFile, show: bool = True, prepared: Optional[tuple] = None,
          step_hook: Optional[Callable[[int, int, int], None]] = None) -> dict:
    """Train `run.model`; returns (and writes to <output>/<name>/summary.json) the final metrics,
    printed as a block when `show`. `prepared` is `prepare`'s result when the caller holds it (a
    tune trial, whose output directory holds no samples). `step_hook(rank, world, global_step)` runs
    on every worker after each step (the recovery tests' `trainers.faults.FaultAtStep`)."""
    t0 = time.perf_counter()
    mode = connect(run.cluster)
    samples_dir, meta, report = prepared or prepare(run)
    _say_data(mode, meta, report)
    job, out = job_spec(run, meta), Path(run.output_dir) / run.name
    done = checkpoint.finished(out, job.to_dict())
    if done:  # a finished run rerun: nothing to train, no worker to start, no checkpoint to write
        print(f"[lifelong] {out} already finished its {run.train.epochs} epoch(s) at {done[0].name}: its "
              "metrics follow (remove the run directory or pass --name to train anew)", flush=True)
        metrics = {**done[1], "resumed": True, "resumed_from": str(done[0]),
                   "resumed_global_step": done[1]["global_step"]}
        ckpt = str(done[0])
    else:
        with relayed() as relay:
            result = make_trainer(job, samples_dir, run.cluster, run.name, run.output_dir, relay=relay,
                                  loop_config={"step_hook": step_hook} if step_hook else None).fit()
        metrics = result.metrics
        # The newest complete checkpoint on disk: Ray Train's controller may not have registered the one
        # a resumed run started from.
        newest = checkpoint.latest(out, log=lambda _: None)
        ckpt = str(newest) if newest else (result.checkpoint.path if result.checkpoint else None)
    return _write(run, meta, out, round(time.perf_counter() - t0, 1), ckpt, metrics, show)


def train_runs(runs: list[RunFile], name: str, prepared: tuple,
               step_hook: Optional[Callable[[int, int, int], None]] = None) -> list[dict]:
    """Train several runs on the same samples in one Ray Train run named `name` (`lifelong compare`'s
    (model, seed) runs of one length, or of every length when the store layout's samples serve them
    all: Ray's start-up, ~15 s a run here, is paid once): each worker
    trains them one after another (`worker.train_runs_per_worker`), each run's checkpoints, curves
    and summary in its own directory as `train` writes them. A finished run is not trained again; a
    run with checkpoints resumes from its newest. Returns each run's summary, in order; its `wall_s`
    is the run's time in the workers (`run_s`), without Ray's start-up."""
    mode = connect(runs[0].cluster)
    samples_dir, meta, report = prepared
    _say_data(mode, meta, report)
    jobs = [(job_spec(r, meta), (Path(r.output_dir) / r.name).resolve()) for r in runs]
    if len({samples_key(r) for r in runs}) > 1 or len({r.cluster for r in runs}) > 1:
        raise ValueError(f"train_runs {name}: the runs must share their samples and cluster settings")
    todo = [(j, out) for j, out in jobs if checkpoint.finished(out, j.to_dict()) is None]
    if todo:
        with relayed() as relay:
            make_runs_trainer([(j, out) for j, out in todo], samples_dir, runs[0].cluster, name, runs[0].output_dir,
                              relay=relay, step_hook=step_hook).fit()
    summaries = []
    for run, (job, out) in zip(runs, jobs):
        done = checkpoint.finished(out, job.to_dict())
        if done is None:
            raise RuntimeError(f"{out}: the run ended without its final checkpoint")
        summaries.append(_write(run, meta, out, done[1].get("run_s"), str(done[0]), done[1], show=False))
    return summaries


def _say_data(mode: str, meta, report: dict) -> None:
    label = " (SYNTHETIC data)" if meta.synthetic else ""
    print(f"[lifelong] ray={mode} data={meta.name}{label} samples={report['samples']} "
          f"dropped={report['dropped']}", flush=True)


def _write(run: RunFile, meta, out: Path, wall_s, ckpt: Optional[str], metrics: dict, show: bool) -> dict:
    """The run's summary, written to its directory with the run file and the plan; printed when `show`."""
    summary = {"model": run.model, "data": meta.name, "synthetic": meta.synthetic, "wall_s": wall_s,
               "checkpoint": ckpt, **metrics}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / RUN_FILE).write_text(json.dumps(asdict(run), indent=2))  # for `lifelong evaluate`
    if ckpt:  # the chosen plan is saved with the run's outputs, not only inside the checkpoint
        (out / PLAN_FILE).write_text((Path(ckpt) / PLAN_FILE).read_text())
    if show:
        print("[lifelong] result (all of it in " + str(out / "summary.json") + "):\n"
              + "\n".join(f"  {k:28s} {short(v)}" for k, v in summary.items()), flush=True)
    return summary
