"""The shard-bench job: one model and data set under the planner's plan and every forced plan the
device allows, at each world size; a table (Markdown + CSV + JSON) and a plot per run.

One Ray Train run of the largest world size: its workers read the same batches once, and for each
world size w the first w ranks train them under each plan in turn in a process group of their own
(`lifelong.trainers.bench`). Written under `<output_dir>/<name>/`:
`shard_bench.json` (everything, plan texts included), `shard_bench.csv`, `shard_bench.md`,
`shard_bench.png` and `plans.txt` (each plan that ran).
"""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

from lifelong.cluster.connect import connect
from lifelong.cluster.logs import relayed
from lifelong.jobs.config import RunFile
from lifelong.jobs.prepare import prepare
from lifelong.jobs.train import job_spec
from lifelong.trainers.bench import ROWS_FILE, bench_loop_per_worker
from lifelong.trainers.trainer import make_trainer

PLANS_FILE = "plans.txt"  # every plan that ran, as TorchRec describes it
FILES = ("shard_bench.md", "shard_bench.csv", "shard_bench.json", "shard_bench.png", PLANS_FILE)
COLUMNS = ("world_size", "plan", "samples_per_s", "step_ms", "est_ms", "emb_mb", "est_mb",
           "a2a_mb_per_step", "allreduce_mb_per_step", "error", "note")


def shard_bench(run: RunFile, world_sizes: list[int], steps: int = 20, warmup: int = 3) -> list[dict]:
    """Rows (one per world size x plan) of measurements and planner estimates."""
    if not world_sizes or min(world_sizes) < 1:
        raise ValueError(f"shard-bench world sizes must be >= 1, got {world_sizes}")
    connect(run.cluster)
    samples_dir, meta, _ = prepare(run)
    job = job_spec(run, meta)
    out = Path(run.output_dir) / run.name
    scratch = out / "workers"  # Ray Train's run dir, holding only the rows; removed once read
    with relayed() as relay:
        trainer = make_trainer(job, samples_dir, replace(run.cluster, num_workers=max(world_sizes)), scratch.name,
                               out, loop=bench_loop_per_worker,
                               loop_config={"steps": steps, "warmup": warmup, "world_sizes": list(world_sizes)},
                               relay=relay)
        result = trainer.fit()
    rows = json.loads((Path(result.checkpoint.path) / ROWS_FILE).read_text())
    shutil.rmtree(scratch, ignore_errors=True)
    label = f"{run.model} on {meta.name}" + (" (SYNTHETIC)" if meta.synthetic else "")
    write(rows, out, f"shard-bench: {label}, batch {run.train.batch_size}, "
          f"dim {run.embedding_dim}, {steps} timed steps")
    return rows


def _cell(v) -> str:
    if isinstance(v, list):
        return "/".join(f"{x:.3g}" for x in v)
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return "" if v is None else str(v)


def markdown(rows: list[dict], title: str) -> str:
    head = ["world", "plan", "samples/s", "step ms", "planner est. ms", "emb MB per rank",
            "planner est. MB per rank", "a2a MB/step per rank", "all-reduce MB/step", "error", "note"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    labels = [f"{r['plan']}\nw={r['world_size']}" for r in ok]
    x = range(len(ok))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax1.bar(x, [r["samples_per_s"] for r in ok], color=["C0" if r["world_size"] == 1 else "C1" for r in ok])
    ax1.set(ylabel="samples/s (whole job)", title="throughput per plan")
    width = 0.4
    ax2.bar([i - width / 2 for i in x], [max(r["emb_mb"]) for r in ok], width, label="measured (weights + optimiser)")
    ax2.bar([i + width / 2 for i in x], [max(r["est_mb"]) for r in ok], width, label="planner estimate")
    ax2.set(ylabel="MB on the most loaded rank", title="embedding memory per rank")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(list(x), labels, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rows: list[dict], out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "shard_bench.json").write_text(json.dumps(rows, indent=2))
    with open(out / "shard_bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows({c: _cell(r.get(c)) for c in COLUMNS} for r in rows)
    (out / "shard_bench.md").write_text(markdown(rows, title))
    (out / PLANS_FILE).write_text("".join(f"# world {r['world_size']}, {r['plan']}\n{r['plan_text']}\n"
                                          for r in rows if r.get("plan_text")))
    plot(rows, out / "shard_bench.png", title)
    print((out / "shard_bench.md").read_text(), flush=True)
    print(f"[lifelong] shard-bench wrote {', '.join(str(out / f) for f in FILES)}", flush=True)
