"""The Ray job at one and at two workers (issue 17's bar: two workers >= 1.6x the samples/s of one).

    .venv/bin/python benchmarks/job_scaling.py                                   # `make run`'s job, 3 pairs
    .venv/bin/python benchmarks/job_scaling.py --config configs/movielens.yaml --reps 4 --epochs 3

Runs `lifelong train --workers 1` and `--workers 2` one after the other, `--reps` times (each pair
back to back, so a slow minute of this machine hits both sides of a ratio alike), every run a fresh
process with a fresh run name under a temporary output directory beside the shared sample cache
(`--output-dir`), validation capped at one batch per worker (`--max-eval-batches 1`). Prints one row
per run from its summary, i.e. its last epoch: samples/s, the wait for the first batch, the steady
rate, each phase of a step (`train_step_ms` / `train_step_cpu_ms`: wall and training-thread CPU
milliseconds per step and worker) and the plan. Then, per pair, the two-worker / one-worker
ratios, and their median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from lifelong.trainers.steptime import PHASES

ROOT = Path(__file__).resolve().parent.parent
LIFELONG = [sys.executable, "-m", "lifelong.jobs.cli"]


def run_once(config: str | None, workers: int, epochs: int, out: Path, name: str) -> dict:
    """One `lifelong train` run; its summary plus the plan's first line."""
    cmd = [*LIFELONG, "train", "--workers", str(workers), "--name", name, "--output-dir", str(out),
           "--max-eval-batches", "1"]
    if config or epochs:
        values = yaml.safe_load(Path(config).read_text()) if config else {}
        if epochs:
            values.setdefault("train", {})["epochs"] = epochs
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["--config", str(path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    summary = json.loads((out / name / "summary.json").read_text())
    summary["plan"] = (out / name / "plan.txt").read_text().splitlines()[0]
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="run YAML (default: `make run`'s job, the run file's defaults)")
    ap.add_argument("--reps", type=int, default=3, help="pairs of runs (1 worker, then 2)")
    ap.add_argument("--epochs", type=int, default=0, help="override train.epochs (0: the run file's)")
    ap.add_argument("--output-dir", default=str(ROOT / "runs"), help="holds the sample cache the runs share")
    args = ap.parse_args()
    rows, ratios = [], []
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)  # absent on a fresh checkout
    with tempfile.TemporaryDirectory(dir=args.output_dir, prefix="job-scaling-") as tmp:
        out = Path(tmp)
        # samples are cached by content under the output directory: link the shared cache in
        cache = Path(args.output_dir) / "samples"
        if cache.exists():
            (out / "samples").symlink_to(cache.resolve())
        for rep in range(args.reps):
            pair = {}
            for workers in (1, 2):
                s = run_once(args.config, workers, args.epochs, out, f"rep{rep}-w{workers}")
                pair[workers] = s
                rows.append((rep, workers, s))
                print(f"rep {rep} workers {workers}: {s['train_samples_per_s']:,.0f} samples/s", file=sys.stderr,
                      flush=True)
            ratios.append((pair[2]["train_samples_per_s"] / pair[1]["train_samples_per_s"],
                           pair[2]["train_steady_samples_per_s"] / pair[1]["train_steady_samples_per_s"]))
    print("| rep | workers | samples/s | first batch s | steady samples/s | epochs | "
          + " | ".join(f"{p} ms (CPU)" for p in PHASES) + " | plan (first table) |")
    print("|---|---|---|---|---|---|" + "---|" * len(PHASES) + "---|")
    for rep, workers, s in rows:
        wall, cpu = s["train_step_ms"], s["train_step_cpu_ms"]
        print(f"| {rep} | {workers} | {s['train_samples_per_s']:,.0f} | {s['train_first_batch_s']:.2f} | "
              f"{s['train_steady_samples_per_s']:,.0f} | {len(s['train_loss_epochs'])} | "
              + " | ".join(f"{wall[p]:.1f} ({cpu[p]:.1f})" for p in PHASES) + f" | {s['plan']} |")
    print()
    print("| rep | 2 / 1 workers, samples/s | steady |")
    print("|---|---|---|")
    for rep, (whole, steady) in enumerate(ratios):
        print(f"| {rep} | {whole:.2f}x | {steady:.2f}x |")
    print(f"| median | {statistics.median(r[0] for r in ratios):.2f}x | "
          f"{statistics.median(r[1] for r in ratios):.2f}x |")


if __name__ == "__main__":
    main()
