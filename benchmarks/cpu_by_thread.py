"""Where this machine's CPU goes while a job runs: every process and thread, over an interval.

    .venv/bin/lifelong train --workers 2 ... &          # a job, past its start-up
    .venv/bin/python benchmarks/cpu_by_thread.py --seconds 15

Reads each thread's user + system time from /proc before and after `--seconds` (Linux only), and
/proc/stat for the machine's busy and idle time. Prints the machine's busy core-seconds against
its total, what no thread was charged with (interrupts, the kernel's own work), then the
`--top` processes and threads by CPU-seconds, each also as a share of one core. A training
worker's busiest thread is its training thread (the one `trainers/steptime.py` clocks); its other
threads are Ray's, gloo's (`gloo_tcp_loop`, `pt_gloo_runloop`) and Ray Data's iterator threads.
"""
from __future__ import annotations

import argparse
import collections
import os
import time

HZ = os.sysconf("SC_CLK_TCK")


def threads() -> dict[tuple[int, int], tuple[str, str, int]]:
    """(pid, tid) -> (command line, thread name, CPU ticks) of every thread now."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:90]
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
                name = stat[stat.index("(") + 1:stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                out[(int(pid), int(tid))] = (cmd or f"[{name}]", name, int(fields[11]) + int(fields[12]))
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            pass
    return out


def machine() -> tuple[int, int]:
    """(all ticks, idle + iowait ticks) of every core since boot."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--top", type=int, default=15, help="processes and threads listed")
    a = ap.parse_args()
    before, (all0, idle0) = threads(), machine()
    time.sleep(a.seconds)
    after, (all1, idle1) = threads(), machine()
    used = {k: (cmd, name, t - before.get(k, (cmd, name, 0))[2]) for k, (cmd, name, t) in after.items()}
    used = {k: v for k, v in used.items() if v[2] > 0}
    total, busy = (all1 - all0) / HZ, (all1 - all0 - (idle1 - idle0)) / HZ
    charged = sum(v[2] for v in used.values()) / HZ
    print(f"{a.seconds:g} s on {len(os.sched_getaffinity(0))} cores: busy {busy:.1f} of {total:.1f} core-s "
          f"({100 * busy / total:.0f} %), charged to threads {charged:.1f}, to no thread {busy - charged:.1f}\n")
    procs: collections.Counter = collections.Counter()
    for (pid, _), (cmd, _, t) in used.items():
        procs[(pid, cmd)] += t
    print("| pid | process | CPU-s | of one core |\n|---|---|---|---|")
    for (pid, cmd), t in procs.most_common(a.top):
        print(f"| {pid} | `{cmd}` | {t / HZ:.2f} | {100 * t / HZ / a.seconds:.1f} % |")
    print("\n| pid | tid | thread | CPU-s | of one core |\n|---|---|---|---|---|")
    for (pid, tid), (_, name, t) in sorted(used.items(), key=lambda kv: -kv[1][2])[:a.top]:
        print(f"| {pid} | {tid} | `{name}` | {t / HZ:.2f} | {100 * t / HZ / a.seconds:.1f} % |")


if __name__ == "__main__":
    main()
