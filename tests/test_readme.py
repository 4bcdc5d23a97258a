"""The README's command blocks, read from README.md so the docs and the tests cannot drift.

Every command of every ```bash block is accounted for: the `lifelong` commands (`train`,
`prepare`, `compare`, `evaluate`, `tune`, `shard-bench`) run here verbatim, in README order, from
a scratch directory that holds links to `.venv` and `configs` (so `runs/` lands there), capped
with documented flags: `--max-steps` and `--max-eval-batches` (train, compare, tune), one seed
(`--seeds 0`, compare), two trials (`--trials 2`, tune), `--steps` (shard-bench); the first on its
own embedded Ray and the rest on one shared local Ray; the others
are named with the test that covers them or why none can here. Every `lifelong` command also
parses with the CLI and its run file validates.
"""
import csv
import json
import os
import re
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from lifelong.cluster import logs
from lifelong.jobs.cli import _run_file, parser
from lifelong.jobs.config import load_run_file
from tests.helpers import check_shard_bench

ROOT = Path(__file__).parents[1]
LIFELONG = ".venv/bin/lifelong "
RUN_HERE = ("train", "prepare", "evaluate", "shard-bench", "compare", "tune")
STEPS = ["--max-steps", "2", "--max-eval-batches", "1"]
CAPS = {"train": STEPS, "compare": STEPS + ["--seeds", "0"], "tune": STEPS + ["--trials", "2"],
        "shard-bench": ["--steps", "2", "--warmup", "1"]}
# Commands not run here, and where they are exercised instead (matched by prefix).
ELSEWHERE = {
    "make test": "is this suite (`.ci/run` runs it)",
    "make run": "is `lifelong train --model sim_hard` after set-up: that command runs first below",
    ".venv/bin/ray ": "tests/test_job_submit.py starts the same token-auth head and submits the same job, "
                      "on free ports (the README's default ports and `ray stop` would hit any other Ray here)",
    "export RAY_AUTH_MODE": "tests/test_job_submit.py (as above)",
    "ray up": "needs a cloud account and GPU nodes; the launcher file is parsed by tests/test_configs.py",
    "ray job submit": "the GPU cluster's job (as above); the job itself is tests/test_job_submit.py's",
}
MAKE_RUN = LIFELONG + "train --model sim_hard"
NOISE = ("RayTrainWorker", "GreedyPerfPartitioner", "Successfully loaded", "Reporting training result",
         "Failed to query Ray Train Controller", "Running Dataset", "Parquet dataset sampling")


def commands() -> list[str]:
    """Every command line of the README's bash blocks: continuations joined, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def runnable() -> list[str]:
    return [MAKE_RUN] + [c for c in commands() if c.startswith(LIFELONG) and c.split()[1] in RUN_HERE]


def test_every_readme_command_is_run_here_or_covered_elsewhere():
    cmds = commands()
    assert len(cmds) >= 15
    stray = [c for c in cmds if c not in runnable() and not any(c.startswith(p) for p in ELSEWHERE)]
    assert not stray, f"README commands neither run by tests/test_readme.py nor listed in ELSEWHERE: {stray}"


@pytest.mark.parametrize("cmd", [c for c in commands() if c.startswith(LIFELONG)])
def test_every_lifelong_command_parses_and_its_run_file_validates(cmd):
    args = parser().parse_args(shlex.split(cmd)[1:])
    if getattr(args, "config", None):
        load_run_file(ROOT / args.config)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("readme")
    for name in (".venv", "configs"):
        (d / name).symlink_to(ROOT / name)
    return d


@pytest.fixture(scope="module")
def shared_ray(ray_local) -> str:
    """The local Ray that every command but the first joins through RAY_ADDRESS, as a command inside
    `ray job submit` does: the first (`make run`'s) starts its own embedded Ray as a new user's
    would; the others would each pay Ray's start and stop and cold Ray Data workers (~10 s)."""
    return ray_local.get_runtime_context().gcs_address


@pytest.mark.parametrize("cmd", runnable(), ids=lambda c: c.removeprefix(LIFELONG).replace(" ", "_"))
def test_readme_command_runs_verbatim(cmd, scratch, shared_ray):
    argv = shlex.split(cmd)
    argv += CAPS.get(argv[1], [])
    # as a user's shell has it: no RAY_ADDRESS, not verbose, Ray Data's progress bars not switched off
    env = {k: v for k, v in os.environ.items() if k not in (logs.ENV, "RAY_ADDRESS", "RAY_DATA_DISABLE_PROGRESS_BARS")}
    if cmd != MAKE_RUN:
        env["RAY_ADDRESS"] = shared_ray
    done = subprocess.run(argv, cwd=scratch, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    if "--address" in argv:  # no cluster named `head` here: a clear one-line error, at once
        assert done.returncode == 2, out[-3000:]
        assert done.stderr.strip().splitlines()[-1].startswith("lifelong train: error: no Ray cluster at "
                                                                "'ray://head:10001'")
        return
    assert done.returncode == 0, out[-3000:]
    # lifelong's own lines, at most ~60, and the result table of compare or tune (a row per result)
    assert len([line for line in out.splitlines() if not line.startswith("|")]) <= 60, out
    for noise in NOISE:  # what `--verbose` brings back (tests/test_job_submit.py)
        assert noise not in out, noise
    if argv[1] == "train":  # lifelong's own lines only: the plan once, one line per epoch, the result block last
        lines = done.stdout.splitlines()
        assert sum("sharding plan:" in line for line in lines) == 1
        assert sum(line.startswith("[lifelong] epoch 0 (") for line in lines) == 1
        assert lines[-1].lstrip().startswith("resumed_global_step")
        run = _run_file(parser().parse_args(argv[1:]))
        summary = json.loads((scratch / run.output_dir / run.name / "summary.json").read_text())
        assert summary["model"] == run.model and summary["train_steps"] <= 2 and 0 < summary["valid_auc"] < 1
        eval_batch = run.train.eval_batch_size
        assert 0 < summary["valid_samples"] <= eval_batch * (run.cluster.num_workers or 2)  # the cap held
    if argv[1] == "evaluate":
        assert json.loads(done.stdout[done.stdout.index("{"):])["split"] == "test"
    if argv[1] == "compare":
        check_compare(scratch, argv, done.stdout)
    if argv[1] == "tune":
        check_tune(scratch, argv)
    if argv[1] == "shard-bench":  # both README runs are the shard-bench tests (world sizes 1 and 2)
        assert "plans.txt" in done.stdout and "| planner |" in done.stdout
        run = _run_file(parser().parse_args(argv[1:]))
        check_shard_bench(scratch / run.output_dir, run)


def check_compare(scratch: Path, argv: list[str], stdout: str) -> None:
    """What a capped `lifelong compare` must have written: every (length, model, seed) run, trained
    in one Ray Train run per build of samples, within the caps, with its tuned values when
    `--tuned` (and then trained again: nothing, the same summaries); the report with its budget, the
    baselines and rules per length; a run's checkpoint scored again in one process."""
    from lifelong.jobs.compare import TUNE_SUMMARY
    from lifelong.jobs.evaluate import evaluate
    from lifelong.models import names
    from lifelong.trainers.curves import TB_DIR, read

    args = parser().parse_args(argv[1:])
    run = _run_file(args)
    runs_dir, out = scratch / run.output_dir, scratch / run.output_dir / run.name
    models, seeds = args.models.split(","), [int(x) for x in args.seeds.split(",")]
    lens = [int(x) for x in args.max_lens.split(",")] if args.max_lens else [run.samples.max_len]
    assert set(models) <= set(names())
    assert {"runs.csv", "compare.csv", "compare.md", "compare.png", "curves.png"} <= {p.name for p in out.iterdir()}
    assert f"compare wrote {Path(run.output_dir) / run.name / 'compare.md'}" in stdout
    groups = ["_".join(map(str, lens))] if run.samples.layout == "store" else [str(n) for n in lens]
    batches = sorted(p.name for p in runs_dir.glob(f"{run.name}.L*.runs"))  # one Ray Train run per build of samples
    assert batches == sorted(f"{run.name}.L{g}.runs" for g in groups)
    report = (out / "compare.md").read_text()
    assert f"at most 2 steps per epoch, batch {run.train.batch_size}" in report
    with open(out / "compare.csv") as f:
        agg = list(csv.DictReader(f))
    for n in lens:  # per length: the models, the two baselines, the eight rules
        at = [a["model"] for a in agg if a["max_len"] == str(n)]
        assert at[:len(models) + 2] == models + ["popularity", "logistic"] and len(at) == len(models) + 10, at
    tuned, summaries = {}, {}
    if args.tuned:
        tuned = {m: json.loads(next(Path(scratch / args.tuned).glob(f"*.tune.{m}/{TUNE_SUMMARY}")).read_text())
                 for m in models}
        budget = tuned[models[0]]["budget"]
        assert f"tuned on valid: {budget}" in report and json.loads((out / "tuned.json").read_text())
    for n in lens:
        for m in models:
            for seed in seeds:
                d = runs_dir / f"{run.name}.L{n}.{m}.s{seed}"
                summary = summaries[(n, m, seed)] = json.loads((d / "summary.json").read_text())
                assert summary["model"] == m and 0 < summary["valid_auc"] < 1, summary
                assert summary["train_steps"] <= 2 * run.train.epochs
                ran = json.loads((d / "run.json").read_text())
                assert ran["samples"]["max_len"] == n and ran["train"]["seed"] == seed
                aucs = read(d / TB_DIR, "valid/auc")  # the curves curves.png draws
                assert len(aucs) == run.train.epochs and aucs[-1][1] == pytest.approx(summary["valid_auc"])
                for key, value in tuned.get(m, {}).get("params", {}).items():
                    section, field = key.split(".")
                    assert ran[section][field] == pytest.approx(value), (d, key)
    if args.tuned:  # the same runs again (what a rerun of the command trains): nothing, the same summaries
        from lifelong.jobs.compare import model_run, tuned_params
        from lifelong.jobs.prepare import prepare
        from lifelong.jobs.train import train_runs

        here = replace(run, output_dir=str(runs_dir))
        params, _ = tuned_params(here, models, scratch / args.tuned)
        base = replace(here, samples=replace(here.samples, max_len=lens[0]))
        again = train_runs([model_run(base, here, m, seed, params[m]) for m in models for seed in seeds],
                           f"{run.name}.L{lens[0]}.runs", prepare(base))
        assert again == [summaries[(lens[0], m, seed)] for m in models for seed in seeds]
    # A run's checkpoint (written by the worker group, not registered with Ray Train) loads in one
    # process and scores the whole valid split; where the capped run scored all of it too (the
    # planted log's 1,600 rows), the metrics are the run's.
    first = json.loads((runs_dir / f"{run.name}.L{lens[-1]}.{models[-1]}.s{seeds[0]}" / "summary.json").read_text())
    again = evaluate(Path(first["checkpoint"]), "valid")
    assert again["samples"] >= first["valid_samples"] and 0 < again["auc"] < 1
    if again["samples"] == first["valid_samples"]:
        for k in ("auc", "gauc", "logloss"):
            assert abs(again[k] - first[f"valid_{k}"]) < 1e-5, (k, again[k], first[f"valid_{k}"])


def check_tune(scratch: Path, argv: list[str]) -> None:
    """What a capped `lifelong tune` must have written: every trial in tune.csv within the epochs,
    best.yaml a valid run file with the best trial's values, the summary naming that trial."""
    args = parser().parse_args(argv[1:])
    run = _run_file(args)
    out = scratch / run.output_dir / f"{run.name}.tune.{args.model}"
    with open(out / "tune.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == (args.trials or run.tune.trials)
    assert all(1 <= int(r["epochs"]) <= run.train.epochs for r in rows)
    best = max(rows, key=lambda r: float(r["valid_auc"]))
    summary = json.loads((out / "tune_summary.json").read_text())
    assert summary["best_trial"] == best["trial"] and summary["model"] == args.model
    tuned = load_run_file(out / "best.yaml")
    assert tuned.model == args.model and not tuned.tune.space
    for key in run.tune.space:
        section, field = key.split(".")
        assert getattr(getattr(tuned, section), field) == pytest.approx(float(best[key])), key
    assert (out / "tune.png").stat().st_size > 0 and (out / "trials" / best["trial"] / "tensorboard").is_dir()
