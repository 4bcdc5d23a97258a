"""The compare job's parts: mean ± std over seeds, the report, and which lengths share one Ray
Train run. A whole comparison (with `--tuned`, a rerun that trains nothing, and `evaluate`
reproducing a run's metrics from its checkpoint) is the README's, run by tests/test_readme.py."""
from __future__ import annotations

import math
from dataclasses import replace

from lifelong.jobs.compare import aggregate, markdown
from lifelong.jobs.config import run_file


def test_aggregate_gives_mean_and_sample_std_per_model():
    rows = [{"model": "a", "seed": s, "max_len": 10, "valid_gauc_users": 3, "valid_auc": v, "valid_gauc": v,
             "valid_logloss": 0.5, "train_samples_per_s": 100.0, "train_peak_rss_mb": 1.0, "valid_gsu_recall": math.nan}
            for s, v in ((0, 0.6), (1, 0.7), (2, 0.8))]
    (a,) = aggregate(rows)
    assert a["seeds"] == 3 and math.isclose(a["valid_auc"], 0.7) and math.isclose(a["valid_auc_std"], 0.1)
    assert math.isnan(a["valid_gsu_recall"])
    assert "0.7000 ± 0.1000" in markdown([a], "t") and "| – |" in markdown([a], "t")


def test_lengths_that_read_one_build_of_samples_are_grouped_into_one_ray_train_run():

    from lifelong.jobs.compare import _by_samples

    for layout, groups in (("store", [[32, 64, 128]]), ("copy", [[32], [64], [128]])):
        run = run_file({"data": {"format": "movielens"}, "samples": {"max_len": 32, "short_len": 10, "layout": layout}})
        bases = [replace(run, samples=replace(run.samples, max_len=n)) for n in (32, 64, 128)]
        assert [[b.samples.max_len for b in g] for g in _by_samples(bases)] == groups
