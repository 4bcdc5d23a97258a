"""Each training worker on its own share of its node's cores (`cluster.bind_cores`).

Ray reserves CPUs by count, not by core, so the kernel moves a worker's threads between cores as
it likes, and with as many workers as cores every step waits for the slower rank at the gradient
exchange. Pinning each worker's threads to its own cores (`os.sched_setaffinity`, the per-rank
binding `torchrun --numa-binding` and Intel's CPU launchers do) keeps them apart: measured here,
two workers on two cores trained ~10 % more samples/s (BENCHMARKS.md, "Fourteenth session").
Ray's other processes still run on any core. A node's cores are split evenly by local rank, so
one worker keeps them all.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def share(cores: list[int], local_rank: int, local_world: int) -> Optional[list[int]]:
    """The cores of `local_rank` among `local_world` workers: an even, contiguous share of `cores`
    (any remainder left to Ray's other processes); None when there are fewer cores than workers."""
    per = len(cores) // local_world
    if per < 1 or not 0 <= local_rank < local_world:
        return None
    return sorted(cores)[local_rank * per:(local_rank + 1) * per]


def bind_worker(local_rank: int, local_world: int) -> Optional[list[int]]:
    """Pin every thread of this process (threads started later inherit it) to its `share` of the
    cores it may run on now; returns those cores, or None where nothing was bound (fewer cores than
    workers, or no `sched_setaffinity`, e.g. macOS)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    mine = share(list(os.sched_getaffinity(0)), local_rank, local_world)
    if mine is None:
        return None
    for tid in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(tid.name), mine)
        except (ProcessLookupError, FileNotFoundError):  # a thread that ended meanwhile
            pass
    return mine
