"""The tune job: Ray Tune searches the run file's `tune.space` for one model, on valid AUC only.

Samples are prepared once; every trial reads the same cached train and valid splits (never test).
A trial is the real training job: with `tune.executor: ray_train` (default) a Ray Train run with
sharded tables (`jobs/train.train`, its metrics passed to Tune by Ray's `TuneReportCallback`),
with `local` one process, unsharded (`trainers/local.fit_local`). Each epoch reports to Tune; ASHA
stops the trials that trail at its rungs. Everything goes to `<output_dir>/<name>/`:

- `tune/`: Tune's experiment (rerunning the same name resumes it: finished trials are kept and
  not rerun, unfinished ones restart from their first epoch), `trials/<trial id>/`: each trial's
  run directory (summary, checkpoints, TensorBoard curves; a local trial's best weights `model.pt`);
- `tune.csv`, `tune.md`: one row per trial (its values, epochs run, stopped early, best valid AUC);
  `tune.png`: every trial's valid AUC per epoch;
- `best.yaml`: the run file with the best trial's values (and, without early stopping, the epochs
  at which it peaked), ready for `lifelong train --config`; `tune_summary.json`: the best trial,
  its values, its checkpoint (a Ray Train trial's run directory, which `lifelong evaluate
  --checkpoint` reads: its last epoch's weights, or its best epoch's under early stopping) and the
  search budget (what `lifelong compare --tuned` reads).
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
import torch
import yaml
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from lifelong.cluster.connect import connect, resolve
from lifelong.cluster.logs import short, verbose
from lifelong.data.store import SequenceStore, store_path
from lifelong.jobs.compare import TUNE_SUMMARY as SUMMARY
from lifelong.jobs.config import RunFile, plain, with_params
from lifelong.jobs.prepare import prepare, samples_key
from lifelong.jobs.train import job_spec, train
from lifelong.jobs.tune_scheduler import STATE as ASHA_STATE, ResumableASHA
from lifelong.trainers.curves import TB_DIR, Curves
from lifelong.trainers.local import fit_local

METRIC = "valid_auc"
EXPERIMENT = "tune"  # Tune's experiment folder in the run directory
TRIALS = "trials"  # each trial's own run directory: trials/<trial id>/
RUN_OF = "tune_run.json"  # the run file the experiment was started with (a rerun must match it)
STATE_EVERY_S = 2
TRIAL_DRIVER_CPU = 0.01
SAMPLERS = {"loguniform": lambda v: tune.loguniform(*v), "uniform": lambda v: tune.uniform(*v),
            "randint": lambda v: tune.randint(*v), "choice": tune.choice, "grid": tune.grid_search}


def param_space(run: RunFile) -> dict[str, Any]:
    """Tune's search space: one sampler per dotted run-file key."""
    return {key: SAMPLERS[kind](values) for key, spec in run.tune.space.items() for kind, values in spec.items()}


def scalars(metrics: dict) -> dict[str, Any]:
    """The metrics Tune keeps per report: numbers and short strings (no per-epoch lists)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


def trial_dir(trials_dir: str) -> Path:
    """This trial's run directory, emptied: a trial that Tune restarts (after the driver died)
    trains from its first epoch, so its epochs and Tune's iterations stay one to one."""
    d = Path(trials_dir) / tune.get_context().get_trial_id()
    shutil.rmtree(d, ignore_errors=True)
    return d


def ray_train_trial(params: dict, run: RunFile, prepared: tuple, trials_dir: str) -> None:
    """One trial as the train job: a Ray Train run (named by the trial id, in its own run directory)
    per epoch, each resuming the last one's checkpoint, then that epoch's summary to Tune. Tune
    stops a trial only while it waits in `tune.report`, between two runs: a run that Tune stopped
    mid-flight would leave its workers' placement group behind (ray-project/ray#54305)."""
    d = trial_dir(trials_dir)
    r = replace(with_params(run, params), name=d.name, output_dir=str(d.parent))
    for epochs in range(1, run.train.epochs + 1):
        summary = train(replace(r, train=replace(r.train, epochs=epochs)), show=False, prepared=prepared)
        tune.report(scalars(summary))
        if summary.get("stopped_early"):
            return


def local_trial(params: dict, run: RunFile, prepared: tuple, trials_dir: str) -> None:
    """One trial in this process, unsharded: each epoch's metrics go to Tune, the best epoch's
    weights to `<trial dir>/model.pt`, the curves to `<trial dir>/tensorboard/`."""
    torch.set_num_threads(1)
    samples_dir, meta, _ = prepared
    job = job_spec(with_params(run, params), meta)
    path = store_path(samples_dir, job.samples.layout)
    d = trial_dir(trials_dir)
    curves = Curves(d / TB_DIR, 0)
    steps, best = [0], [-math.inf]

    def on_epoch(model: torch.nn.Module, metrics: dict) -> None:
        steps[0] += int(metrics.get("train_steps", 0))
        curves.epoch(steps[0], metrics)
        if metrics.get(METRIC, -math.inf) > best[0]:
            best[0] = metrics[METRIC]
            torch.save(model.state_dict(), d / LOCAL_WEIGHTS)
        tune.report(scalars(metrics))

    fit_local(job, pq.read_table(Path(samples_dir) / "train"), pq.read_table(Path(samples_dir) / "valid"),
              SequenceStore.read(path) if path else None, on_epoch)
    curves.close()


LOCAL_WEIGHTS = "model.pt"
TRIAL_FUNCTIONS = {"ray_train": ray_train_trial, "local": local_trial}


class TrialLines(tune.Callback):
    """One console line per finished trial."""

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        r = trial.last_result or {}
        print(f"[lifelong] tune: trial {trial.trial_id} {trial.config}: {r.get('training_iteration', 0)} "
              f"epoch(s), valid_auc {short(r.get(METRIC))}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        print(f"[lifelong] tune: trial {trial.trial_id} {trial.config} failed (see {trial.path})", flush=True)


def resources(run: RunFile) -> tuple[dict, int]:
    """Per-trial resources and how many trials run at once: a Ray Train trial's workers ask for
    their own CPUs (and Ray Data keeps one beside them), a local trial holds one CPU."""
    cpus = float(ray.cluster_resources().get("CPU", 1))
    if run.tune.executor == "local":
        per, fits = {"cpu": 1}, int(cpus)
    else:
        cluster = resolve(run.cluster)
        per = {"cpu": TRIAL_DRIVER_CPU}  # the trial only drives its Ray Train run (Tune refuses 0)
        fits = int(cpus // (cluster.num_workers * cluster.cpus_per_worker + 1 + TRIAL_DRIVER_CPU))
    return per, max(1, run.tune.max_concurrent or fits)


def check_same_experiment(out: Path, run: RunFile) -> None:
    """A rerun under the same name resumes; one with another model, data or search is an error."""
    saved = json.loads((out / RUN_OF).read_text()) if (out / RUN_OF).exists() else None
    now = plain(run)
    keys = ("model", "model_config", "data", "samples", "train", "tune", "embedding_dim", "embedding_init")
    diff = [k for k in keys if saved is not None and saved.get(k) != now.get(k)]
    if diff:
        raise ValueError(f"{out} holds a tune experiment of another run file (differs in {diff}): "
                         "choose another --name, or remove that directory")


def tune_model(run: RunFile) -> dict:
    """Run (or resume) the search; returns the summary written to `tune_summary.json`."""
    if not run.tune.space:
        raise ValueError("tune.space is empty: name the run-file keys to search, e.g. "
                         "tune: {space: {train.dense_lr: {loguniform: [1.0e-4, 1.0e-2]}}}")
    if run.tune.executor == "ray_train" and run.train.patience:
        raise ValueError("tune.executor ray_train runs each trial one epoch per Ray Train run and lets ASHA stop "
                         "weak trials: set train.patience to 0 (best.yaml keeps the epoch a trial peaked at), "
                         "or use tune.executor: local")
    out = (Path(run.output_dir) / run.name).resolve()
    check_same_experiment(out, run)
    mode = connect(run.cluster)
    prepared = prepare(run)
    samples_dir, meta, report = prepared
    print(f"[lifelong] tune {run.model}: ray={mode} data={meta.name}{' (SYNTHETIC data)' if meta.synthetic else ''} "
          f"samples={report['samples']} dropped={report['dropped']}; {run.tune.budget()}; executor "
          f"{run.tune.executor}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_OF).write_text(json.dumps(plain(run), indent=2))
    per, concurrent = resources(run)
    trainable = tune.with_resources(tune.with_parameters(
        TRIAL_FUNCTIONS[run.tune.executor], run=run, prepared=prepared, trials_dir=str(out / TRIALS)), per)
    path = out / EXPERIMENT
    # Tune saves the experiment's state at most every TUNE_GLOBAL_CHECKPOINT_S (its default: 10 s or
    # more); a trial that finished after the last save reruns on resume, so save often: the state is small.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(STATE_EVERY_S))
    if not verbose():  # Tune's own tables and banners; our TrialLines say what finished
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if tune.Tuner.can_restore(str(path)):
        print(f"[lifelong] tune: resuming the experiment in {path} (finished trials are kept)", flush=True)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, restart_errored=True)
    else:
        t = run.tune
        scheduler = ResumableASHA(out / ASHA_STATE, time_attr="training_iteration", max_t=run.train.epochs,
                                  grace_period=min(t.grace_period, run.train.epochs),
                                  reduction_factor=t.reduction_factor) if t.scheduler == "asha" else FIFOScheduler()
        tuner = tune.Tuner(
            trainable, param_space=param_space(run),
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=t.trials // t.grid_size(),
                                        scheduler=scheduler, search_alg=BasicVariantGenerator(
                                            random_state=t.seed, max_concurrent=concurrent)),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out), verbose=2 if verbose() else 0,
                                      callbacks=[TrialLines()]))
    grid = tuner.fit()
    return write(run, grid, out, samples_key(run))


def trial_rows(run: RunFile, grid) -> list[dict]:
    """One row per trial: its values, epochs run, whether the scheduler stopped it, its best epoch."""
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        if df is None or METRIC not in df or df[METRIC].isna().all():
            rows.append({"trial": Path(result.path).name, "params": {}, "epochs": 0, "error": str(result.error)})
            continue
        best = df[METRIC].idxmax()
        epochs = int(df["training_iteration"].max())
        rows.append({"trial": str(df["trial_id"].iloc[-1]), "params": dict(result.config), "epochs": epochs,
                     "stopped_early": epochs < run.train.epochs and result.error is None,
                     "best_epoch": int(df["training_iteration"][best]), METRIC: float(df[METRIC][best]),
                     "valid_gauc": float(df["valid_gauc"][best]) if "valid_gauc" in df else math.nan,
                     "curve": [float(x) for x in df[METRIC]],
                     "error": None if result.error is None else str(result.error)})
    return sorted(rows, key=lambda r: -r.get(METRIC, -math.inf))


def write(run: RunFile, grid, out: Path, key: str) -> dict:
    rows = trial_rows(run, grid)
    scored = [r for r in rows if METRIC in r]
    if not scored:
        raise ValueError(f"no tune trial reported {METRIC}; see the trials' errors under {out / EXPERIMENT}")
    best = scored[0]
    fields = ["trial", *sorted(run.tune.space), "epochs", "stopped_early", "best_epoch", METRIC, "valid_gauc", "error"]
    with open(out / "tune.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, **r["params"]} for r in rows)
    lines = [f"### tune {run.model}: {run.tune.budget()}; {run.train.epochs} epoch(s) per trial, valid split",
             "", "| trial | " + " | ".join(sorted(run.tune.space)) + " | epochs | stopped early | best epoch | "
             "valid AUC | valid GAUC |", "|---" * (len(run.tune.space) + 6) + "|"]
    for r in scored:
        lines.append(f"| {r['trial']} | " + " | ".join(short(r["params"].get(k)) for k in sorted(run.tune.space))
                     + f" | {r['epochs']} | {'yes' if r['stopped_early'] else 'no'} | {r['best_epoch']} | "
                     f"{r[METRIC]:.4f} | {r['valid_gauc']:.4f} |")
    (out / "tune.md").write_text("\n".join(lines) + "\n")
    plot(scored, out / "tune.png", f"tune {run.model}: valid AUC per epoch")
    tuned = with_params(run, best["params"])
    if not run.train.patience:  # the epoch it peaked at (with early stopping the run restores it itself)
        tuned = replace(tuned, train=replace(tuned.train, epochs=best["best_epoch"]))
    values = plain(replace(tuned, name=f"{run.name}.best", tune=type(run.tune)()))
    header = (f"# lifelong tune: best of {len(rows)} trial(s) of {run.model} by valid AUC "
              f"({best[METRIC]:.4f}, trial {best['trial']}, epoch {best['best_epoch']}); {run.tune.budget()}\n")
    (out / "best.yaml").write_text(header + yaml.safe_dump(values, sort_keys=False))
    where = out / TRIALS / best["trial"]
    checkpoint = where / LOCAL_WEIGHTS if run.tune.executor == "local" else where
    summary = {"model": run.model, "best_trial": best["trial"], METRIC: best[METRIC], "best_epoch": best["best_epoch"],
               "params": best["params"], "trials": len(rows), "stopped_early": sum(bool(r.get("stopped_early"))
                                                                                    for r in rows),
               "budget": run.tune.budget(), "epochs_per_trial": run.train.epochs, "samples_key": key,
               "data": plain(run)["data"], "samples": plain(run)["samples"],
               "checkpoint": str(checkpoint) if checkpoint.exists() else None}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    print((out / "tune.md").read_text(), flush=True)
    print(f"[lifelong] tune wrote {out / 'best.yaml'} (valid AUC {best[METRIC]:.4f}), "
          f"{out / 'tune.md'}, {out / 'tune.csv'}, {out / 'tune.png'}, {out / SUMMARY}", flush=True)
    return summary


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        values = ", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in r["params"].items())
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], marker="o", label=f"{r['trial']} {values}"
                + (" (stopped)" if r["stopped_early"] else ""))
    ax.set(xlabel="epoch", ylabel="valid AUC", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
