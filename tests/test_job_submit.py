"""`ray job submit` for real: a local token-auth head on 127.0.0.1, a `lifelong train --verbose` job
with a working dir, SUCCEEDED, Ray's and the workers' output in the job's log (the quiet default is
checked on the README's commands, tests/test_readme.py), metrics read back, the head's listening
sockets checked against README, head stopped."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lifelong.jobs.config import shared_data

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Processes of a head that listen beyond loopback, as README's "Submitting a Ray job" lists them
# (Ray 2.60 binds these to every interface whatever --node-ip-address says); besides them, every
# Ray worker process ("ray::<actor or task>", the dashboard and runtime-env agents included).
EXPOSED = {"gcs_server", "raylet", "ray.util.client.server", "monitor.py", "dashboard.py"}
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _addr(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr.split(":")[0])
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def _label(proc: Path) -> str:
    """A process's binary name, or for Python its script's file name or `-m` module."""
    comm = (proc / "comm").read_text().strip()
    if not comm.startswith("python"):
        return comm
    argv = (proc / "cmdline").read_bytes().decode().split("\0")[1:]
    for i, arg in enumerate(argv):
        if arg == "-m":
            return argv[i + 1]
        if not arg.startswith("-"):
            return Path(arg).name
    return comm


def _holding(marker: str) -> list[Path]:
    """/proc entries of the other processes whose environment holds `marker` (here: a head's token)."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            mine = proc.name.isdigit() and int(proc.name) != os.getpid()
            if mine and marker.encode() in (proc / "environ").read_bytes():
                out.append(proc)
        except OSError:  # the process ended meanwhile
            continue
    return out


def listening_sockets(marker: str) -> set[tuple[str, str, int]]:
    """(process, bound address, port) of every TCP socket in LISTEN state held by a process whose
    environment holds `marker` (here: this head's token), read from /proc."""
    owner = {}
    for proc in _holding(marker):
        try:
            label = _label(proc)
            owner.update({os.readlink(fd)[8:-1]: label for fd in (proc / "fd").iterdir()
                          if os.readlink(fd).startswith("socket:[")})
        except OSError:  # the process ended meanwhile
            continue
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in owner:  # 0A: LISTEN
                out.add((owner[f[9]], _addr(f[1]), int(f[1].split(":")[1], 16)))
    return out


def _stop_head(marker: str, temp_dir: str) -> None:
    """Stop the head whose processes' environment holds `marker` (its token), and only it: `ray stop`
    would end every Ray process of this machine, other tests' included; then remove its temp dir."""
    procs = [int(proc.name) for proc in _holding(marker)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in procs:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in procs):
            time.sleep(0.2)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_trains_and_reports(tmp_path):
    import ray

    from lifelong.cluster.connect import PREEMPTION_ENV, ClusterConfig, connect

    ray.shutdown()  # this process joins no Ray while the head runs (see the local check below)
    ray_bin = str(Path(sys.executable).parent / "ray")
    # A fresh token for this head only (`ray get-auth-token --generate` writes ~/.ray instead).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    run = lambda *a, **kw: subprocess.run([ray_bin, *a], env=env, capture_output=True, text=True, **kw)  # noqa: E731
    # free ports for what the README's head takes by default: another local Ray here (another test
    # process's) may hold the job agent's 52365, and the job server then has no agent to submit to
    gcs, dash, agent = _free_port(), _free_port(), _free_port()
    # A temp dir of its own: the job supervisor finds the head's GCS through `ray_current_cluster` in the
    # head's temp dir, and while other Rays run here (the other test process's), the shared
    # /tmp/ray/ray_current_cluster may name another: `ray.cluster_utils.Cluster` (tests/test_multinode.py)
    # overwrites it, and the job's driver then joined that cluster and failed on its token (CI, f6a89c3).
    # Short, under /tmp: Ray's unix sockets live below it.
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    head = run("start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               f"--port={gcs}", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
               "--num-cpus=4", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}")
    assert head.returncode == 0, head.stderr[-2000:]
    current = Path("/tmp/ray/ray_current_cluster")  # where a head in Ray's default temp dir names itself
    ours = lambda: current.exists() and current.read_text().strip() == f"127.0.0.1:{gcs}"  # noqa: E731
    try:
        # a local run beside a head starts a Ray of its own: plain ray.init() would join the head that
        # `ray start` names in /tmp/ray/ray_current_cluster, and refuse num_cpus. The file names this
        # head only for this check (as little time as another test process could read it).
        current.parent.mkdir(parents=True, exist_ok=True)
        current.write_text(f"127.0.0.1:{gcs}")
        os.environ.pop(PREEMPTION_ENV, None)
        try:
            assert connect(ClusterConfig()) == "local"
        finally:
            if ours():
                current.unlink(missing_ok=True)
        assert os.environ[PREEMPTION_ENV] == "0"  # one machine: no preemption watcher actor
        assert not ray.get_runtime_context().gcs_address.endswith(f":{gcs}")
        ray.shutdown()
        out = tmp_path / "runs"
        cfg = tmp_path / "taobao.yaml"
        cfg.write_text("data: {format: taobao}\nsamples: {max_len: 50, short_len: 10}\n"
                       "train: {batch_size: 64, epochs: 1}\ncluster: {num_workers: 2}\n")
        runtime_env = {"excludes": [".venv", "runs", ".git", "*.egg-info"],
                       "env_vars": {"LIFELONG_DATA": str(shared_data().resolve())}}
        for _ in range(30):  # the head's job agent registers a few seconds after `ray start` returns
            job = run("job", "submit", f"--address=http://127.0.0.1:{dash}", f"--working-dir={REPO}",
                      f"--runtime-env-json={json.dumps(runtime_env)}", "--submission-id=lifelong-test-job", "--",
                      sys.executable, "-m", "lifelong.jobs.cli", "train", "--model", "din", "--name", "submitted",
                      "--config", str(cfg), "--output-dir", str(out), "--verbose", timeout=540)
            logged = job.stdout + job.stderr  # `ray job submit` follows the job's log
            if "No available agent" not in logged:
                break
            time.sleep(2)
        assert job.returncode == 0, logged[-3000:]
        assert "(RayTrainWorker" in logged and "[lifelong] result" in logged  # --verbose: the workers' lines too
        assert len(logged.splitlines()) > 60  # the quiet run's cap
        status = run("job", "status", f"--address=http://127.0.0.1:{dash}", "lifelong-test-job")
        assert "job 'lifelong-test-job' succeeded" in (status.stdout + status.stderr).lower()
        summary = json.loads((out / "submitted" / "summary.json").read_text())
        assert summary["model"] == "din" and summary["train_steps"] > 0
        assert 0.0 <= summary["valid_auc"] <= 1.0 and summary["valid_samples"] > 0
        no_token = subprocess.run([ray_bin, "job", "list", f"--address=http://127.0.0.1:{dash}"],
                                  env={**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)},
                                  capture_output=True, text=True)
        assert no_token.returncode != 0  # the job server refuses callers without the token
        if sys.platform == "linux":  # what README says the head exposes
            socks = listening_sockets(env["RAY_AUTH_TOKEN"])
            assert {(a, p) for _, a, p in socks if p == dash} == {("127.0.0.1", dash)}  # job API: loopback only
            assert any(name == "gcs_server" and p == gcs for name, _, p in socks), socks
            beyond = {name for name, a, _ in socks if a not in LOOPBACK and not name.startswith("ray::")}
            assert beyond <= EXPOSED, f"listening beyond loopback, not in README: {beyond - EXPOSED}"
    finally:
        ray.shutdown()
        _stop_head(env["RAY_AUTH_TOKEN"], temp_dir)
