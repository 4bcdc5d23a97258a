"""Fault injection for recovery drills: a step hook the recovery tests install (`train(run,
step_hook=FaultAtStep(...))`); no run file can switch it on."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import ray
import ray.train

from lifelong.cluster import logs


@ray.remote(num_cpus=0)
class FaultCounter:
    """Counts injected faults of one run (a named actor outlives the worker it kills)."""

    def __init__(self) -> None:
        self.n = 0

    def claim(self) -> bool:
        self.n += 1
        return self.n == 1


@dataclass(frozen=True)
class FaultAtStep:
    """The last rank dies (`kind` "exit") or stops before its next collective ("hang") once per run
    name and step, at global step `step`; a restarted worker group, or a rerun of the same name,
    passes that step unharmed (a fault at another step still fires)."""

    step: int
    kind: str = "exit"

    def __post_init__(self) -> None:
        if self.kind not in ("exit", "hang"):
            raise ValueError(f"fault kind '{self.kind}' not in ('exit', 'hang')")

    def __call__(self, rank: int, world: int, global_step: int) -> None:
        if global_step != self.step or rank != world - 1:
            return
        name = f"lifelong-fault-{ray.train.get_context().get_experiment_name()}-{self.step}"
        counter = FaultCounter.options(name=name, get_if_exists=True, lifetime="detached").remote()
        if ray.get(counter.claim.remote()):
            logs.say(f"[lifelong] injected fault: rank {rank} {self.kind}s at step {global_step}")
            if self.kind == "hang":
                time.sleep(24 * 3600)  # the other ranks wait in their next collective until its timeout
            os._exit(1)
