"""How lifelong reaches Ray and sizes its workers.

- no address: inside a Ray job (RAY_ADDRESS set by `ray job submit`) join that cluster;
  otherwise start an embedded local Ray on this machine (dashboard off, bound to 127.0.0.1).
- an address ("ray://host:10001" or "host:6379" / "auto"): join that cluster.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import ray
from ray.train import ScalingConfig


@dataclass(frozen=True)
class ClusterConfig:
    address: Optional[str] = None
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    local_cpus: Optional[int] = None  # logical CPUs of the embedded local Ray (default below)
    collective_timeout_s: int = 120

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError("cluster.num_workers must be >= 1")


def connect(cfg: ClusterConfig, runtime_env: Optional[dict] = None) -> str:
    """Initialise Ray once; returns 'address', 'job' or 'local'."""
    if ray.is_initialized():
        return "existing"
    env = runtime_env or {"env_vars": {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}}
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=env, log_to_driver=True)
        return "address"
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # inside `ray job submit`: keep the job's runtime env (working_dir, env vars)
        return "job"
    # Workers each hold cpus_per_worker; Ray Data's read/collate tasks need CPUs beside them,
    # so the embedded Ray advertises at least num_workers + 2 logical CPUs.
    cpus = cfg.local_cpus or max(os.cpu_count() or 1, int(cfg.num_workers * cfg.cpus_per_worker) + 2)
    ray.init(num_cpus=cpus, include_dashboard=False, dashboard_host="127.0.0.1",
             runtime_env=env, log_to_driver=True)
    return "local"


def scaling_config(cfg: ClusterConfig) -> ScalingConfig:
    return ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                         resources_per_worker={"CPU": cfg.cpus_per_worker})
