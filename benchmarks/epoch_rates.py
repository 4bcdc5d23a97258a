"""A run's training rate epoch by epoch, from its TensorBoard loss points, and a paired comparison
of odd against even epochs (an A/B inside one run, for a setting switched every other epoch).

    .venv/bin/python benchmarks/epoch_rates.py runs/NAME              # per-epoch steps/s
    .venv/bin/python benchmarks/epoch_rates.py runs/NAME --pairs      # + odd vs even epochs

Rank 0 writes `train/loss` every `train.log_every` global steps (`trainers/curves.py`), each point
with its wall time. An interval between two points of the same epoch is pure training: no
validation, checkpoint or data-pipeline start falls in it. Each epoch's rate is its intervals'
steps over their seconds; epoch 0 (start-up) is left out. This machine's pace moves by 10-40 %
from minute to minute, so two runs compared whole (`job_scaling.py`'s pairs) differ by more than
most settings do; with the setting switched every other epoch of one run, each odd epoch is
compared with the mean of its two even neighbours, and the mean and standard error of those
relative differences are printed.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lifelong.trainers.curves import TB_DIR


def epoch_rates(run_dir: Path, steps_per_epoch: int) -> dict[int, float]:
    """Epoch -> training steps/s over the loss intervals inside it (epoch 0 left out)."""
    files = sorted((run_dir / TB_DIR).glob("events*"))
    if not files:
        raise SystemExit(f"{run_dir / TB_DIR}: no TensorBoard event file")
    acc = EventAccumulator(str(files[-1]))
    acc.Reload()
    points = acc.Scalars("train/loss")
    steps: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for a, b in zip(points, points[1:]):
        epoch = (a.step - 1) // steps_per_epoch
        if epoch != (b.step - 1) // steps_per_epoch or epoch == 0:
            continue
        steps[epoch] = steps.get(epoch, 0) + b.step - a.step
        seconds[epoch] = seconds.get(epoch, 0.0) + b.wall_time - a.wall_time
    return {e: steps[e] / seconds[e] for e in sorted(steps) if seconds[e] > 0}


def paired(rates: dict[int, float]) -> list[float]:
    """Each odd epoch's rate over the mean of its even neighbours', less 1."""
    return [rates[e] / ((rates[e - 1] + rates[e + 1]) / 2) - 1
            for e in rates if e % 2 == 1 and e - 1 in rates and e + 1 in rates]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a run directory (holds summary.json and tensorboard/)")
    ap.add_argument("--steps-per-epoch", type=int, default=0,
                    help="global steps per epoch (default: the summary's train_steps)")
    ap.add_argument("--pairs", action="store_true", help="compare odd epochs with their even neighbours")
    args = ap.parse_args()
    per = args.steps_per_epoch
    if not per:
        import json

        per = json.loads((args.run_dir / "summary.json").read_text())["train_steps"]
    rates = epoch_rates(args.run_dir, per)
    print("| epoch | steps/s |\n|---|---|")
    for e, r in rates.items():
        print(f"| {e} | {r:.2f} |")
    values = list(rates.values())
    if len(values) > 1:
        print(f"\n{len(values)} epochs: median {statistics.median(values):.2f} steps/s, "
              f"min {min(values):.2f}, max {max(values):.2f}")
    if args.pairs:
        d = paired(rates)
        if len(d) < 2:
            raise SystemExit("--pairs needs at least two odd epochs with both neighbours")
        odd = statistics.mean(r for e, r in rates.items() if e % 2)
        even = statistics.mean(r for e, r in rates.items() if not e % 2)
        print(f"odd epochs {odd:.2f} steps/s, even {even:.2f}; paired: odd / neighbours - 1 = "
              f"{100 * statistics.mean(d):+.1f} % (s.e. {100 * statistics.stdev(d) / len(d) ** 0.5:.1f} %, "
              f"n = {len(d)})")


if __name__ == "__main__":
    main()
