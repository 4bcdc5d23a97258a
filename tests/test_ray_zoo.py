"""Every registered model trains on 2 Ray workers with sharded tables, on real MovieLens and on
planted synthetic data: finite metrics and a falling training loss (mean of the last quarter of
one epoch's steps below the first quarter's, rank 0)."""
from __future__ import annotations

import math

import pytest

from lifelong.jobs.config import run_file
from lifelong.jobs.train import train
from lifelong.models import names

pytestmark = pytest.mark.ray

DATA = {
    "movielens": {"data": {"format": "movielens"}, "samples": {"max_len": 64, "short_len": 20},
                  "train": {"batch_size": 256, "max_steps": 40, "dense_lr": 3e-3}},
    # planted log with dense old interests (3 x 60 events, reaching into the short window: guard 10)
    # and a low click rate (0.26): every model, short or lifelong, has something to learn in 40
    # steps (with the defaults' 0.45 the loss moved by 0.005-0.017, within noise)
    "synthetic": {"data": {"format": "synthetic",
                           "synthetic": {"n_users": 200, "seq_len": 400, "n_impressions": 40, "guard": 10,
                                         "interest_events": 60, "interest_p": 0.5, "unseen_p": 0.02, "seed": 2}},
                  "samples": {"max_len": 256, "short_len": 30, "sample_behaviors": [1], "history_behaviors": [0]},
                  "train": {"batch_size": 64, "max_steps": 40, "dense_lr": 3e-3}},
}
SMALL_K = {"k": 16}
TWO_STAGE = {"sim_hard", "sim_soft", "eta", "twin", "cain", "lic"}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")  # shared: each data set's samples are built once


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("model", names())
def test_model_trains_on_two_workers(ray_local, out_dir, model, data):
    run = run_file({"name": f"{model}-{data}", "output_dir": str(out_dir), "model": model,
                    "model_config": SMALL_K if model in TWO_STAGE else {}, **DATA[data],
                    "train": {**DATA[data]["train"], "diagnostic_batches": 2}, "cluster": {"num_workers": 2}})
    s = train(run)
    assert all(math.isfinite(s[k]) for k in ("valid_auc", "valid_logloss", "train_loss")), s
    assert s["train_loss_end"] < s["train_loss_start"], (s["train_loss_start"], s["train_loss_end"])
    assert s["train_steps"] == DATA[data]["train"]["max_steps"]
    if model in TWO_STAGE:
        assert 0 <= s["valid_gsu_recall"] <= 1 and s["valid_gsu_recall_rows"] > 0, s
    else:
        assert "valid_gsu_recall" not in s
