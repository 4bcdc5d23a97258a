"""Where a training step's time goes: each phase's wall and CPU time, summed over a pass.

`StepClock.lap(phase)` closes the phase that ran since the last lap and adds its wall time
(`perf_counter`) and the calling thread's CPU time (`thread_time`). Wall above CPU is time the
training thread did not run: it waited for data, for the other ranks (a collective: under DMP the
gradient exchange ends the backward pass) or for a core (other threads and processes on it). CPU
above one rank's alone on the same work is work the thread did more slowly (caches, memory shared
with other processes).

Host time: on a GPU a phase ends once its kernels are queued, so the device's time shows up where
the host first waits for it (the loss's finiteness check, in "forward", or the loss read).
"""
from __future__ import annotations

import time

PHASES = ("data", "forward", "backward", "optimizer", "other")
# data: waiting for the next batch (and for every rank to have one); forward: the model and loss;
# backward: gradients, with any exchange of them; optimizer: clipping and the step; other: the key
# cache's refresh, the loss read, the step's hooks and checkpoints


class StepClock:
    """Wall and CPU seconds per phase (`PHASES`), from `restart` (or construction) on."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.restart()

    def restart(self) -> None:
        """Start the next phase now, counting nothing since the last lap."""
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def lap(self, phase: str) -> None:
        """Add the time since the last lap (or restart) to `phase`."""
        wall, cpu = time.perf_counter(), time.thread_time()
        self.wall[phase] += wall - self._wall
        self.cpu[phase] += cpu - self._cpu
        self._wall, self._cpu = wall, cpu

    def totals(self) -> list[float]:
        """Wall then CPU seconds, each in `PHASES` order (one vector to sum over ranks)."""
        return [self.wall[p] for p in PHASES] + [self.cpu[p] for p in PHASES]


def per_step(totals: list[float], steps: int, ranks: int = 1) -> dict:
    """`totals` (`StepClock.totals`, summed over `ranks`) as mean milliseconds per step and rank:
    {"step_ms": {phase: wall}, "step_cpu_ms": {phase: CPU}}."""
    scale = 1e3 / max(steps, 1) / max(ranks, 1)
    n = len(PHASES)
    return {"step_ms": {p: round(totals[i] * scale, 3) for i, p in enumerate(PHASES)},
            "step_cpu_ms": {p: round(totals[n + i] * scale, 3) for i, p in enumerate(PHASES)}}
