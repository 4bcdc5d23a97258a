"""`lifelong tune`: the tune section's validation, a 4-trial search on MovieLens (ASHA stops a trial,
best.yaml is the best trial's, a killed driver resumes without rerunning finished trials, the test
split is never read), a Ray Train trial re-scored from its checkpoint, and `compare --tuned`."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from lifelong.jobs.compare import TUNE_SUMMARY, budget, model_run, tuned_params
from lifelong.jobs.config import load_run_file, plain, run_file, with_params

ROOT = Path(__file__).parents[1]
SMALL = {"data": {"format": "movielens"}, "samples": {"max_len": 32, "short_len": 10}}


@pytest.mark.parametrize("space, trials, message", [
    ({"samples.max_len": {"choice": [8]}}, 1, "not tunable"),
    ({"train.epochs": {"choice": [1, 2]}}, 1, "cannot be tuned"),
    ({"train.dense_lr": {"loguniform": [0, 1]}}, 1, "low must be > 0"),
    ({"train.dense_lr": {"uniform": [1e-3]}}, 1, "[low, high]"),
    ({"train.dense_lr": {"normal": [0, 1]}}, 1, "exactly one of"),
    ({"train.dense_lr": {"grid": [1e-3, 1e-2]}}, 3, "multiple of the grid's 2 points"),
    ({"train.lr_decay": {"uniform": [0.1, 0.5]}}, 1, "patience"),  # a value no trial could train with
    ({"model_config.kk": {"choice": [1]}}, 1, "unknown key(s) ['kk']"),
])
def test_the_tune_section_is_validated_before_anything_runs(space, trials, message):
    with pytest.raises(ValueError, match="tune") as e:
        run_file({"model": "din", "tune": {"space": space, "trials": trials}})
    assert message in str(e.value)


def test_a_space_spans_its_ends_and_dotted_keys_set_the_run_file():
    run = run_file({"model": "sim_hard", "tune": {"space": {"model_config.k": {"randint": [2, 5]},
                                                            "train.sparse_lr": {"choice": [0.1, 0.2, 0.3]}}}})
    assert run.tune.examples() == [{"model_config.k": 2, "train.sparse_lr": 0.1},
                                   {"model_config.k": 4, "train.sparse_lr": 0.2},  # randint's high is exclusive
                                   {"model_config.k": 4, "train.sparse_lr": 0.3}]
    tuned = with_params(run, {"model_config.k": 7, "train.dense_lr": 0.01, "embedding_dim": 8})
    assert (tuned.model_config["k"], tuned.train.dense_lr, tuned.embedding_dim) == (7, 0.01, 8)
    assert run.model_config["k"] == 50 and run_file(plain(run)) == run


def _summary(d: Path, model: str, budget: str = "4 trial(s)", **over) -> None:
    run = run_file({"model": model, **SMALL})
    d.mkdir(parents=True)
    (d / TUNE_SUMMARY).write_text(json.dumps({
        "model": model, "params": {"train.dense_lr": 0.003}, "budget": budget, "epochs_per_trial": 3,
        "data": plain(run)["data"], "samples": plain(run)["samples"], **over}))


def test_compare_tuned_reads_each_models_search_and_refuses_unequal_budgets(tmp_path):
    run = run_file({"name": "cmp", **SMALL, "samples": {"max_len": 64, "short_len": 10}})
    _summary(tmp_path / "a", "din")
    _summary(tmp_path / "b", "twin")
    params, tuning = tuned_params(run, ["din", "twin"], tmp_path)
    assert params == {"din": {"train.dense_lr": 0.003}, "twin": {"train.dense_lr": 0.003}}
    assert tuning == "tuned on valid: 4 trial(s), 3 epoch(s) per trial"
    assert "lr 0.001 where not tuned, tuned on valid: 4 trial(s)" in budget(run, tuning)
    assert "lr 0.001, no tuning; valid split" in budget(run)  # an untuned report claims no tuning anywhere
    r = model_run(run, run, "din", 1, params["din"])
    assert (r.model, r.train.dense_lr, r.train.seed, r.name) == ("din", 0.003, 1, "cmp.L64.din.s1")
    with pytest.raises(ValueError, match=r"no tune_summary.json for \['sim_hard'\]"):
        tuned_params(run, ["din", "sim_hard"], tmp_path)
    _summary(tmp_path / "c", "sim_hard", budget="8 trial(s)")
    with pytest.raises(ValueError, match="unequal budgets"):
        tuned_params(run, ["din", "sim_hard"], tmp_path)
    other = run_file({**SMALL, "samples": {"max_len": 64, "short_len": 5}})
    with pytest.raises(ValueError, match="other data or samples"):
        tuned_params(other, ["din"], tmp_path)


RUN_FILE = {"name": "ml", "model": "din", "model_config": {}, **SMALL,
            "train": {"batch_size": 256, "epochs": 3, "max_steps": 10, "diagnostic_batches": 1},
            "tune": {"space": {"train.dense_lr": {"grid": [1e-2, 1e-7, 3e-3, 1e-6]}}, "trials": 4,
                     "executor": "local", "max_concurrent": 1}}


def _descendants(pid: int) -> list[int]:
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, todo = [], [pid]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        out += kids
        todo += kids
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver (as a lost head node would) and then the Ray processes it started."""
    children = _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The output directory of this module's two searches: the Ray Train trial's run reuses the
    samples the local search built (one MovieLens build, ~20 s here, instead of two)."""
    return tmp_path_factory.mktemp("tune") / "runs"


@pytest.mark.ray
def test_four_trials_asha_stops_one_best_yaml_is_the_best_and_a_killed_driver_resumes(tmp_path, runs):
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump(RUN_FILE))
    cmd = [str(ROOT / ".venv/bin/lifelong"), "tune", "--config", str(cfg), "--output-dir", str(runs)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    for line in proc.stdout:
        if line.startswith("[lifelong] tune: trial "):  # the first trial finished; Tune saves its state every 2 s
            first = line.split()[3]
            time.sleep(3)
            break
    else:
        pytest.fail(f"no trial finished: rc {proc.wait()}")
    _kill_tree(proc)
    out = runs / "ml.tune.din"
    weights = out / "trials" / first / "model.pt"
    written = weights.stat().st_mtime_ns
    assert not (out / "tune.csv").exists()
    samples = next((runs / "samples").iterdir())
    shutil.rmtree(samples / "test")  # the rest of the search must never need the test split

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming the experiment" in again.stdout
    assert weights.stat().st_mtime_ns == written  # the finished trial was not rerun
    with open(out / "tune.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {float(r["train.dense_lr"]) for r in rows} == {1e-2, 1e-7, 3e-3, 1e-6}
    assert [r for r in rows if r["trial"] == first][0]["epochs"] == "3"
    assert any(r["stopped_early"] == "True" and int(r["epochs"]) < 3 for r in rows), rows  # ASHA stopped one
    best = max(rows, key=lambda r: float(r["valid_auc"]))
    summary = json.loads((out / TUNE_SUMMARY).read_text())
    assert summary["best_trial"] == best["trial"] and summary["valid_auc"] == pytest.approx(float(best["valid_auc"]))
    tuned = load_run_file(out / "best.yaml")  # a valid run file with the best trial's values
    assert tuned.train.dense_lr == float(best["train.dense_lr"]) and tuned.train.epochs == int(best["best_epoch"])
    assert tuned.model == "din" and not tuned.tune.space
    assert f"({float(best['valid_auc']):.4f}," in (out / "best.yaml").read_text().splitlines()[0]
    assert Path(summary["checkpoint"]).exists() and (out / "tune.png").stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "trials" / best["trial"] / "tensorboard")).Reload()
    aucs = [e.value for e in events.Scalars("valid/auc")]
    assert len(aucs) == int(best["epochs"]) and max(aucs) == pytest.approx(summary["valid_auc"], abs=1e-6)


@pytest.mark.ray
def test_a_ray_train_trial_is_the_train_job_and_leaves_no_placement_group(ray_local, runs):
    from lifelong.jobs.evaluate import evaluate
    from lifelong.jobs.tune import tune_model

    run = run_file({**RUN_FILE, "name": "t", "output_dir": str(runs),
                    "train": {**RUN_FILE["train"], "epochs": 1, "max_steps": 3},
                    "tune": {"space": {"train.dense_lr": {"grid": [1e-2]}}, "trials": 1}})  # choosing: above
    live = lambda: {k for k, pg in ray_local.util.placement_group_table().items()  # noqa: E731
                    if pg["state"] != "REMOVED"}
    before = live()  # the Ray is shared with other test modules
    summary = tune_model(run)
    trial = runs / "t" / "trials" / summary["best_trial"]
    assert summary["checkpoint"] == str(trial) and (trial / "summary.json").exists()
    trained = json.loads((trial / "summary.json").read_text())
    assert trained["valid_auc"] == pytest.approx(summary["valid_auc"]) and trained["train_world_size"] == 2
    again = evaluate(trial, "valid")  # the trial's checkpoint re-scored in one process
    assert again["auc"] == pytest.approx(summary["valid_auc"], abs=1e-5)
    left = live() - before
    assert not left, left  # neither Tune's trials nor Ray Train's worker groups leave one behind


def test_asha_rungs_survive_a_driver_restart(tmp_path):
    from types import SimpleNamespace

    from lifelong.jobs.tune_scheduler import ResumableASHA

    def asha():
        return ResumableASHA(tmp_path / "asha_state.pkl", time_attr="training_iteration", metric="valid_auc",
                             mode="max", max_t=3, grace_period=1, reduction_factor=2)

    first = asha()
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
    for t, auc in zip(trials, (0.70, 0.72, 0.74)):  # three trials pass rung 1 before the driver dies
        first.on_trial_add(None, t)
        assert first.on_trial_result(None, t, {"training_iteration": 1, "valid_auc": auc}) == "CONTINUE"
    again = asha()  # the restored experiment's scheduler, as constructed before the first run
    late = SimpleNamespace(trial_id="t3")
    for t in [*trials, late]:
        again.on_trial_add(None, t)
    # The rung holds the three earlier results, so a weak newcomer is stopped at once; without the
    # saved state it would be the rung's first result and continue.
    assert again.on_trial_result(None, late, {"training_iteration": 1, "valid_auc": 0.60}) == "STOP"
    fresh = ResumableASHA(tmp_path / "other.pkl", time_attr="training_iteration", metric="valid_auc", mode="max",
                          max_t=3, grace_period=1, reduction_factor=2)
    fresh.on_trial_add(None, late)
    assert fresh.on_trial_result(None, late, {"training_iteration": 1, "valid_auc": 0.60}) == "CONTINUE"
