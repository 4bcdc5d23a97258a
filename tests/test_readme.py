"""The README's command blocks, read from README.md so the docs and the tests cannot drift.

Every command of every ```bash block is accounted for: the single runs (`train`, `prepare`,
`evaluate`, `shard-bench`) run here verbatim, in README order, from a scratch directory that holds
links to `.venv` and `configs` (so `runs/` lands there), capped with the documented `--max-steps`
and `--max-eval-batches` (train) or `--steps` (shard-bench), the first on its own embedded Ray and
the rest on one shared local Ray; the others are named with the test that covers them or why none
can here. Every `lifelong` command also parses with the CLI and its run file validates.
"""
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from lifelong.cluster import logs
from lifelong.jobs.cli import _run_file, parser
from lifelong.jobs.config import load_run_file
from tests.helpers import check_shard_bench

ROOT = Path(__file__).parents[1]
LIFELONG = ".venv/bin/lifelong "
RUN_HERE = ("train", "prepare", "evaluate", "shard-bench")
CAPS = {"train": ["--max-steps", "2", "--max-eval-batches", "2"], "shard-bench": ["--steps", "2", "--warmup", "1"]}
# Commands not run here, and where they are exercised instead (matched by prefix).
ELSEWHERE = {
    "make test": "is this suite (`.ci/run` runs it)",
    "make run": "is `lifelong train --model sim_hard` after set-up: that command runs first below",
    ".venv/bin/ray ": "tests/test_job_submit.py starts the same token-auth head and submits the same job, "
                      "on free ports (the README's default ports and `ray stop` would hit any other Ray here)",
    "export RAY_AUTH_MODE": "tests/test_job_submit.py (as above)",
    ".venv/bin/lifelong compare": "trains 9 to 66 runs; tests/test_compare.py runs compare (with --tuned) on a "
                                  "small log",
    ".venv/bin/lifelong tune": "trains 8 trials of up to 3 epochs; tests/test_tune.py runs the same job (local "
                               "and Ray Train trials, a killed driver resumed) on a smaller budget",
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


@pytest.mark.parametrize("cmd", runnable())
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
    assert len(out.splitlines()) <= 60, out
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
        assert 0 < summary["valid_samples"] <= 2 * eval_batch * (run.cluster.num_workers or 2)  # the cap held
    if argv[1] == "evaluate":
        assert json.loads(done.stdout[done.stdout.index("{"):])["split"] == "test"
    if argv[1] == "shard-bench":  # both README runs are the shard-bench tests (world sizes 1 and 2)
        assert "plans.txt" in done.stdout and "| planner |" in done.stdout
        run = _run_file(parser().parse_args(argv[1:]))
        check_shard_bench(scratch / run.output_dir, run)
