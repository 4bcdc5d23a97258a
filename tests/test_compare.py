"""The compare job (models x seeds + baselines -> table, CSV, plot) and `evaluate --checkpoint`
reproducing a run's reported metrics from its saved checkpoint in one process."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from lifelong.jobs.compare import aggregate, compare, markdown, model_run, tuned_params
from lifelong.jobs.config import plain, run_file
from lifelong.jobs.evaluate import evaluate
from lifelong.jobs.prepare import prepare
from lifelong.jobs.train import train_runs
from lifelong.trainers.curves import read

pytestmark = pytest.mark.ray


def test_aggregate_gives_mean_and_sample_std_per_model():
    rows = [{"model": "a", "seed": s, "max_len": 10, "valid_gauc_users": 3, "valid_auc": v, "valid_gauc": v,
             "valid_logloss": 0.5, "train_samples_per_s": 100.0, "train_peak_rss_mb": 1.0, "valid_gsu_recall": math.nan}
            for s, v in ((0, 0.6), (1, 0.7), (2, 0.8))]
    (a,) = aggregate(rows)
    assert a["seeds"] == 3 and math.isclose(a["valid_auc"], 0.7) and math.isclose(a["valid_auc_std"], 0.1)
    assert math.isnan(a["valid_gsu_recall"])
    assert "0.7000 ± 0.1000" in markdown([a], "t") and "| – |" in markdown([a], "t")


def test_compare_two_seeds_tuned_then_evaluate_a_checkpoint(ray_local, tmp_path):
    run = run_file({"name": "cmp", "output_dir": str(tmp_path), "data": {"format": "movielens"},
                    "samples": {"max_len": 32, "short_len": 10},
                    "train": {"batch_size": 256, "max_steps": 8, "diagnostic_batches": 1, "log_every": 4},
                    "cluster": {"num_workers": 2}})
    tuned = tmp_path / "tuned" / "tune.din"  # what `lifelong tune --model din` leaves (tests/test_tune.py)
    tuned.mkdir(parents=True)
    (tuned / "tune_summary.json").write_text(json.dumps({
        "model": "din", "params": {"train.dense_lr": 0.004}, "budget": "2 trial(s) over {train.dense_lr}",
        "epochs_per_trial": 1, "data": plain(run)["data"], "samples": plain(run)["samples"]}))
    agg = compare(run, ["din"], [0, 1], [32], tuned_dir=tmp_path / "tuned")
    out = tmp_path / "cmp"
    assert {"runs.csv", "compare.csv", "compare.md", "compare.png", "curves.png"} <= {p.name for p in out.iterdir()}
    report = (out / "compare.md").read_text()
    assert "at most 8 steps per epoch, batch 256" in report  # the budget is stated, and the tuning
    assert "tuned on valid: 2 trial(s) over {train.dense_lr}, 1 epoch(s) per trial" in report
    assert json.loads((tmp_path / "cmp.L32.din.s1" / "run.json").read_text())["train"]["dense_lr"] == 0.004
    tb = tmp_path / "cmp.L32.din.s0" / "tensorboard"  # what curves.png draws
    assert [s for s, _ in read(tb, "train/loss")] == [4, 8] and read(tb, "nothing") == []
    models = [a["model"] for a in agg]
    assert models[:3] == ["din", "popularity", "logistic"]
    assert {"rule: item count (L)", "rule: category count (last S)"} <= set(models[3:]) and len(models) == 3 + 8
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert [(r["model"], r["seed"]) for r in runs[:2]] == [("din", "0"), ("din", "1")]
    din = agg[0]
    assert din["seeds"] == 2 and din["valid_auc_std"] >= 0 and din["train_peak_rss_mb"] > 0
    for base in agg[1:3]:  # popularity and logistic regression on the same split are real scores
        assert 0.55 < base["valid_auc"] < 0.8, base
    # The first seed's checkpoint, re-scored in one process, reproduces its reported metrics.
    summary = json.loads((tmp_path / "cmp.L32.din.s0" / "summary.json").read_text())
    assert read(tb, "valid/auc") == [(8, pytest.approx(summary["valid_auc"]))]
    again = evaluate(Path(summary["checkpoint"]), "valid")
    assert again["samples"] == summary["valid_samples"]
    for k in ("auc", "gauc", "logloss"):
        assert abs(again[k] - summary[f"valid_{k}"]) < 1e-5, (k, again[k], summary[f"valid_{k}"])
    test = evaluate(tmp_path / "cmp.L32.din.s0", "test")  # a run directory: its newest complete checkpoint
    assert test["samples"] > 0 and test["auc"] != again["auc"]
    # Both seeds trained in one Ray Train run; each wrote its own checkpoints. The same runs again
    # train nothing: every run directory holds its finished checkpoint, and the summaries are the same.
    assert (tmp_path / "cmp.L32.runs").is_dir() and not list((tmp_path / "cmp.L32.runs").glob("checkpoint_*"))
    seeds = [json.loads((tmp_path / f"cmp.L32.din.s{s}" / "summary.json").read_text()) for s in (0, 1)]
    assert seeds[0]["checkpoint"] != seeds[1]["checkpoint"] and seeds[0]["valid_auc"] != seeds[1]["valid_auc"]
    params, _ = tuned_params(run, ["din"], tmp_path / "tuned")
    base = replace(run, samples=replace(run.samples, max_len=32))
    again = train_runs([model_run(base, run, "din", s, params["din"]) for s in (0, 1)], "cmp.L32.runs", prepare(base))
    assert again == seeds
