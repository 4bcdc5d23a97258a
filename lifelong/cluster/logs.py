"""What a run prints.

By default the driver prints lifelong's own lines only: the plan once, one line per epoch, the
result last. The workers' lines reach it through a small actor (`relayed`), so Ray does not
forward the workers' output (TorchRec's planner tables, fbgemm's loader lines, Ray Train's
reports, Ray Data's progress); those stay in Ray's log files (`/tmp/ray/session_latest/logs/`).
Progress lines (`say(..., transient=True)`) are shown only on a terminal, each replacing the last.
`lifelong --verbose` (or `LIFELONG_VERBOSE=1`) forwards every worker's output and Ray's INFO logs,
as Ray does by default.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

import ray
import ray.data

ENV = "LIFELONG_VERBOSE"
QUIET_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


def verbose() -> bool:
    """Whether this run forwards Ray's and the workers' own output (`--verbose`)."""
    return os.environ.get(ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    os.environ[ENV] = "1" if on else "0"


def short(v):
    """A value as the console shows it (files keep full precision)."""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, list):
        return "[" + ", ".join(str(short(x)) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {short(x)}" for k, x in v.items()) + "}"
    return v


def quiet_driver() -> None:
    """Ray's driver-side INFO logs (Ray Data's execution plans and logged progress) off unless verbose;
    Ray Data still draws its progress bars on a terminal, and only there."""
    if verbose():
        return
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # Ray Data re-reads it when it configures logging
    if not sys.stderr.isatty():  # e.g. its Parquet reader's file-sampling bar, drawn with \r into a log
        ray.data.DataContext.get_current().enable_progress_bars = False
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@ray.remote(num_cpus=0)
class _Lines:
    """Lines the workers said, in the order each worker said them, until the driver takes them."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bool]] = []

    def put(self, line: str, transient: bool) -> None:
        self.lines.append((line, transient))

    def take(self) -> list[tuple[str, bool]]:
        lines, self.lines = self.lines, []
        return lines


class _Printer:
    """Prints relayed lines; a transient line (progress) only on a terminal, overwritten by the next."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.pending = False  # a transient line is on screen

    def show(self, line: str, transient: bool) -> None:
        if transient and not self.tty:
            return
        if self.pending:
            sys.stdout.write("\r\x1b[K")
        sys.stdout.write(line if transient else line + "\n")
        sys.stdout.flush()
        self.pending = transient


@contextmanager
def relayed(poll_s: float = 0.5) -> Iterator[Optional[ray.actor.ActorHandle]]:
    """A handle for the workers to `say` through while the block runs, its lines printed here; None
    with `--verbose` (the workers print and Ray forwards their output)."""
    if verbose():
        yield None
        return
    actor = _Lines.remote()
    printer, stop = _Printer(), threading.Event()

    def pump() -> None:
        while True:
            done = stop.wait(poll_s)
            for line, transient in ray.get(actor.take.remote()):
                printer.show(line, transient)
            if done:
                return

    thread = threading.Thread(target=pump, name="lifelong-relay", daemon=True)
    thread.start()
    try:
        yield actor
    finally:
        stop.set()
        thread.join()
        if printer.pending:
            sys.stdout.write("\r\x1b[K")
        ray.kill(actor)


_sink: Optional[ray.actor.ActorHandle] = None


def use(sink: Optional[ray.actor.ActorHandle]) -> None:
    """Worker side: say through `sink` (a `relayed` handle), or print when None."""
    global _sink
    _sink = sink


def relaying() -> bool:
    return _sink is not None


def say(line: str, transient: bool = False) -> None:
    """One line for the driver's console. A relayed permanent line is delivered before this returns,
    so lines said before a worker finishes are printed before the driver's result."""
    if _sink is None:
        if not transient:
            print(line, flush=True)
        return
    ref = _sink.put.remote(line, transient)
    if not transient:
        ray.get(ref)
