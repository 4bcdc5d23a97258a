"""How lifelong reaches Ray and sizes its workers.

- no address: inside a Ray job (RAY_ADDRESS set by `ray job submit`) join that cluster;
  otherwise start an embedded local Ray on this machine (dashboard off, bound to 127.0.0.1).
- an address ("ray://host:10001" or "host:6379" / "auto"): join that cluster.

`resolve` turns the config's "auto" values (num_workers 0, use_gpu null, bind_cores null) into
concrete ones from the connected cluster's resources; `scaling_config` makes Ray Train's
ScalingConfig from them.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, replace
from typing import Optional

import ray
from ray.train import ScalingConfig

from lifelong.cluster.logs import quiet_driver, verbose

PLACEMENT = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# Ray Train's workers, Ray Data's tasks and actors start together at a run's start; on a small
# machine Ray's default (one worker start per CPU at a time) makes the raylet warn on every run.
STARTUP = {"worker_maximum_startup_concurrency": 16}
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # read by the controller, propagated from the driver by Ray Train
# Ray Train's preemption watcher (an actor per run, ~2 CPU-s of start-up here) reports worker nodes taken
# away; the embedded Ray is one machine that gains or loses no node, so it runs without it (set the
# variable to 1 to keep it). Clusters keep Ray's default.
PREEMPTION_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
DATA_CPUS = 2  # CPUs left free for Ray Data's read/collate tasks when num_workers is auto


@dataclass(frozen=True)
class ClusterConfig:
    address: Optional[str] = None
    num_workers: int = 2  # 0 = auto: one per GPU, or as many as the CPUs allow beside Ray Data
    use_gpu: Optional[bool] = False  # null = auto: GPUs if the cluster has any
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # only with use_gpu
    placement_strategy: str = "PACK"  # Ray placement group strategy; SPREAD puts workers on many nodes
    local_cpus: Optional[int] = None  # logical CPUs of the embedded local Ray (default below)
    collective_timeout_s: int = 120
    poll_s: float = 0.5  # how often Ray Train's controller polls the workers (Ray's default: 2 s). A worker's
    #                      `ray.train.report` (every checkpoint, every epoch) waits for the next poll
    bind_cores: Optional[bool] = None  # pin each training worker to its own even share of its node's cores
    #                                    (`trainers/affinity`); null = auto: on for the embedded local Ray this
    #                                    process started (the machine is the job's), off on a cluster

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError("cluster.num_workers must be >= 1, or 0 for auto")
        if self.placement_strategy not in PLACEMENT:
            raise ValueError(f"cluster.placement_strategy '{self.placement_strategy}' not in {PLACEMENT}")
        if self.poll_s <= 0:
            raise ValueError("cluster.poll_s must be > 0")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker <= 0:
            raise ValueError("cluster.cpus_per_worker and cluster.gpus_per_worker must be > 0")


def connect(cfg: ClusterConfig, runtime_env: Optional[dict] = None) -> str:
    """Initialise Ray once; returns 'address', 'job', 'local' or 'existing'. Unless `--verbose`, Ray
    does not forward the workers' output (lifelong relays its own lines, see `logs`)."""
    quiet_driver()
    if ray.is_initialized():
        return "existing"
    env = runtime_env or {"env_vars": {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}}
    out = {"log_to_driver": verbose(), "logging_level": logging.INFO if verbose() else logging.WARNING}
    if cfg.address:
        check_reachable(cfg.address)
        ray.init(address=cfg.address, runtime_env=env, **out)
        return "address"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**out)  # inside `ray job submit`: keep the job's runtime env (working_dir, env vars)
        return "job"
    # Workers each hold cpus_per_worker; Ray Data's read/collate tasks need CPUs beside them,
    # so the embedded Ray advertises at least num_workers + 2 logical CPUs.
    cpus = cfg.local_cpus or max(os.cpu_count() or 1, int(max(cfg.num_workers, 1) * cfg.cpus_per_worker) + DATA_CPUS)
    start_local(cpus, out["log_to_driver"], out["logging_level"], env)
    return "local"


_STARTED: set[str] = set()  # the GCS addresses of the embedded Rays this process started


def start_local(num_cpus: int, log_to_driver: bool, logging_level: int = logging.WARNING,
                runtime_env: Optional[dict] = None) -> None:
    """Start the embedded Ray with lifelong's local settings (also the test suite's shared Ray)."""
    # "local": a Ray of our own even while a `ray start` head runs here (plain ray.init() would join
    # it through /tmp/ray/ray_current_cluster and then refuse num_cpus)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, dashboard_host="127.0.0.1",
             _system_config=STARTUP, runtime_env=runtime_env, log_to_driver=log_to_driver,
             logging_level=logging_level)
    os.environ.setdefault(PREEMPTION_ENV, "0")
    _STARTED.add(ray.get_runtime_context().gcs_address)


def started_here() -> bool:
    """Whether the Ray this process is connected to is an embedded one it started (`start_local`)."""
    return ray.is_initialized() and ray.get_runtime_context().gcs_address in _STARTED


ADDRESS_FORMS = "'ray://host:10001' (Ray Client), 'host:6379' (the head's GCS) or 'auto'"


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail at once, naming the address, when nothing listens there (Ray itself retries for ever)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"cluster address '{address}' is not of the form {ADDRESS_FORMS}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(f"no Ray cluster at '{address}' ({e.strerror or e}); start one "
                              f"(`ray start --head`) or pass {ADDRESS_FORMS}") from None


def resolve(cfg: ClusterConfig, resources: Optional[dict] = None) -> ClusterConfig:
    """The config with auto values filled from `resources` (default: the connected cluster's)."""
    res = resources if resources is not None else ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else gpus > 0
    if use_gpu and gpus < cfg.gpus_per_worker:
        raise ValueError(f"cluster.use_gpu is set but the cluster has {gpus:g} GPUs "
                         f"(a worker needs cluster.gpus_per_worker = {cfg.gpus_per_worker:g})")
    workers = cfg.num_workers or (int(gpus // cfg.gpus_per_worker) if use_gpu
                                  else max(1, int((cpus - DATA_CPUS) // cfg.cpus_per_worker)))
    if cpus - workers * cfg.cpus_per_worker < 1:  # Ray Data's read tasks would wait for ever
        raise ValueError(f"the cluster has {cpus:g} CPUs and {workers} training workers x "
                         f"{cfg.cpus_per_worker:g} CPU leave none for Ray Data: give the head more logical "
                         f"CPUs (`ray start --head --num-cpus={int(workers * cfg.cpus_per_worker) + DATA_CPUS}`), "
                         "or set cluster.num_workers lower or cluster.cpus_per_worker below 1")
    bind = cfg.bind_cores if cfg.bind_cores is not None else started_here()
    return replace(cfg, num_workers=workers, use_gpu=use_gpu, bind_cores=bind)


def controller_env(cfg: ClusterConfig) -> None:
    """Sets the environment that Ray Train copies from the driver to its controller: the poll interval."""
    os.environ[POLL_ENV] = f"{cfg.poll_s:g}"


def scaling_config(cfg: ClusterConfig) -> ScalingConfig:
    """Ray Train's ScalingConfig for a resolved config."""
    if not cfg.num_workers or cfg.use_gpu is None:
        raise ValueError("scaling_config needs a resolved ClusterConfig (see resolve)")
    per_worker = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})}
    return ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=per_worker,
                         placement_strategy=cfg.placement_strategy)
