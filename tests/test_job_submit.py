"""`ray job submit` for real: a local token-auth head on 127.0.0.1, a `lifelong train` job with a
working dir, SUCCEEDED, metrics read back, head stopped."""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.jobs.config import shared_data

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_trains_and_reports(tmp_path):
    import ray

    ray.shutdown()  # `ray stop` below ends every Ray process of this machine
    ray_bin = str(Path(sys.executable).parent / "ray")
    # A fresh token for this head only (`ray get-auth-token --generate` writes ~/.ray instead).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    run = lambda *a, **kw: subprocess.run([ray_bin, *a], env=env, capture_output=True, text=True, **kw)  # noqa: E731
    gcs, dash = _free_port(), _free_port()
    head = run("start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               f"--port={gcs}", f"--dashboard-port={dash}", "--num-cpus=4", "--include-dashboard=true",
               "--disable-usage-stats")
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        out = tmp_path / "runs"
        cfg = tmp_path / "taobao.yaml"
        cfg.write_text("data: {format: taobao}\nsamples: {max_len: 50, short_len: 10}\n"
                       "train: {batch_size: 64, epochs: 1}\ncluster: {num_workers: 2}\n")
        runtime_env = {"excludes": [".venv", "runs", ".git", "*.egg-info"],
                       "env_vars": {"LIFELONG_DATA": str(shared_data().resolve())}}
        job = run("job", "submit", f"--address=http://127.0.0.1:{dash}", f"--working-dir={REPO}",
                  f"--runtime-env-json={json.dumps(runtime_env)}", "--submission-id=lifelong-test-job", "--",
                  sys.executable, "-m", "lifelong.jobs.cli", "train", "--model", "din", "--name", "submitted",
                  "--config", str(cfg), "--output-dir", str(out), timeout=540)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        status = run("job", "status", f"--address=http://127.0.0.1:{dash}", "lifelong-test-job")
        assert "job 'lifelong-test-job' succeeded" in (status.stdout + status.stderr).lower()
        summary = json.loads((out / "submitted" / "summary.json").read_text())
        assert summary["model"] == "din" and summary["train_steps"] > 0
        assert 0.0 <= summary["valid_auc"] <= 1.0 and summary["valid_samples"] > 0
        no_token = subprocess.run([ray_bin, "job", "list", f"--address=http://127.0.0.1:{dash}"],
                                  env={**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)},
                                  capture_output=True, text=True)
        assert no_token.returncode != 0  # the job server refuses callers without the token
    finally:
        run("stop", "--force")
