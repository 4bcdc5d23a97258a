"""Multi-node: a two-node `ray.cluster_utils.Cluster` (two raylets on this machine) with the
workers spread over both nodes, trained to completion with sharded tables; and the cluster
resolution that sizes workers from a cluster's resources."""
from __future__ import annotations

import math

import pytest
import yaml

from lifelong.cluster.connect import ClusterConfig, resolve, scaling_config
from lifelong.jobs.config import REPO, load_run_file, run_file
from lifelong.jobs.train import train


def test_resolve_sizes_workers_from_resources():
    auto = ClusterConfig(num_workers=0, use_gpu=None)
    cpu = resolve(auto, {"CPU": 16.0})
    assert (cpu.num_workers, cpu.use_gpu) == (14, False)  # two CPUs stay with Ray Data
    gpu = resolve(auto, {"CPU": 64.0, "GPU": 8.0})
    assert (gpu.num_workers, gpu.use_gpu) == (8, True)
    sc = scaling_config(gpu)
    assert sc.use_gpu and sc.resources_per_worker == {"CPU": 1.0, "GPU": 1.0}
    assert resolve(ClusterConfig(num_workers=3, use_gpu=None), {"CPU": 4.0}).num_workers == 3
    assert resolve(ClusterConfig(num_workers=0), {"CPU": 2.0}).num_workers == 1
    with pytest.raises(ValueError, match="0 GPUs"):
        resolve(ClusterConfig(use_gpu=True), {"CPU": 8.0})
    # A 2-CPU head with 2 training workers would leave Ray Data's reads waiting for ever: refused.
    with pytest.raises(ValueError, match="2 CPUs and 2 training workers.*--num-cpus=4"):
        resolve(ClusterConfig(num_workers=2), {"CPU": 2.0})
    assert resolve(ClusterConfig(num_workers=2, cpus_per_worker=0.5), {"CPU": 2.0}).num_workers == 2
    with pytest.raises(ValueError, match="resolved"):
        scaling_config(auto)
    with pytest.raises(ValueError, match="placement_strategy"):
        ClusterConfig(placement_strategy="RANDOM")


def test_example_gpu_cluster_files_load():
    """The documented multi-node GPU example: a Ray cluster launcher YAML and a run file."""
    launcher = yaml.safe_load((REPO / "lifelong/cluster/examples/gpu-cluster.yaml").read_text())
    assert launcher["max_workers"] >= 1 and "head_node_type" in launcher
    assert any("fbgemm-gpu" in cmd for cmd in launcher["setup_commands"])
    run = load_run_file(REPO / "configs/gpu-cluster.yaml")
    assert run.cluster.use_gpu is True and run.cluster.placement_strategy == "SPREAD"
    assert scaling_config(resolve(run.cluster, {"CPU": 32.0, "GPU": 4.0})).num_workers == 4


def test_the_poll_interval_reaches_ray_trains_controller(monkeypatch, tmp_path):
    """`cluster.poll_s` is set where Ray Train's controller reads it: a driver environment variable
    that Ray Train propagates to the controller (each report waits for a poll: 2 s by Ray's default)."""
    from ray.train.v2._internal.constants import (ENABLE_PREEMPTION_WATCHER_ENV_VAR, HEALTH_CHECK_INTERVAL_S_ENV_VAR,
                                                  get_env_vars_to_propagate)

    from lifelong.cluster.connect import POLL_ENV, PREEMPTION_ENV, controller_env

    monkeypatch.delenv(POLL_ENV, raising=False)
    controller_env(ClusterConfig(poll_s=0.25))
    assert POLL_ENV == HEALTH_CHECK_INTERVAL_S_ENV_VAR and get_env_vars_to_propagate()[POLL_ENV] == "0.25"
    with pytest.raises(ValueError, match="poll_s"):
        ClusterConfig(poll_s=0)
    monkeypatch.setenv(PREEMPTION_ENV, "0")  # what `connect` sets for its embedded Ray reaches the controller too
    assert PREEMPTION_ENV == ENABLE_PREEMPTION_WATCHER_ENV_VAR and get_env_vars_to_propagate()[PREEMPTION_ENV] == "0"


@pytest.mark.ray
def test_two_node_cluster_spreads_workers_and_trains(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        assert resolve(ClusterConfig(num_workers=0)).num_workers == 2  # 4 CPUs, 2 kept for Ray Data
        run = run_file({"name": "two-nodes", "output_dir": str(tmp_path), "model": "sim_hard",
                        "model_config": {"k": 16},
                        "data": {"format": "synthetic", "synthetic": {"n_users": 100, "seq_len": 300, "guard": 40,
                                                                      "n_impressions": 20, "seed": 3}},
                        "samples": {"max_len": 128, "short_len": 20, "sample_behaviors": [1],
                                    "history_behaviors": [0]},
                        "sharding": {"item": ["row_wise"]},
                        "train": {"batch_size": 64, "epochs": 1, "diagnostic_batches": 1},
                        "cluster": {"num_workers": 2, "placement_strategy": "STRICT_SPREAD"}})
        s = train(run)
        assert s["train_world_size"] == 2 and s["train_nodes"] == 2, s
        assert s["train_steps"] > 0 and math.isfinite(s["valid_auc"]) and s["checkpoint"]
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_an_address_with_nothing_listening_fails_at_once_naming_it():
    import socket
    import time

    from lifelong.cluster.connect import check_reachable

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ConnectionError, match=f"no Ray cluster at '{address}'.*ray://host:10001"):
            check_reachable(address)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ValueError, match="not of the form"):
        check_reachable("head-without-port")


def test_cli_workers_zero_means_auto():
    from lifelong.jobs.cli import _run_file, parser

    assert _run_file(parser().parse_args(["train", "--workers", "0"])).cluster.num_workers == 0
    assert _run_file(parser().parse_args(["train", "--workers", "3"])).cluster.num_workers == 3
    assert _run_file(parser().parse_args(["train"])).cluster.num_workers == 2  # the run file's
