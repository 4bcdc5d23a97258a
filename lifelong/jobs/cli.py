"""`lifelong` command line: prepare samples, train a model (locally or on a Ray cluster)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lifelong.cluster.connect import connect
from lifelong.embeddings.spec import FeatureSpec
from lifelong.jobs.config import load_run_file
from lifelong.jobs.prepare import prepare
from lifelong.models import names
from lifelong.trainers.config import JobSpec
from lifelong.trainers.trainer import make_trainer


def _run_file(args):
    overrides = {"model": getattr(args, "model", None), "name": getattr(args, "name", None),
                 "output_dir": getattr(args, "output_dir", None)}
    run = load_run_file(args.config, overrides)
    if getattr(args, "address", None) or getattr(args, "workers", None):
        from dataclasses import replace
        run = replace(run, cluster=replace(run.cluster, address=args.address or run.cluster.address,
                                           num_workers=args.workers or run.cluster.num_workers))
    return run


def cmd_prepare(args) -> dict:
    run = _run_file(args)
    connect(run.cluster)
    out, meta, report = prepare(run)
    print(json.dumps({"samples_dir": str(out), **report}, indent=2))
    return report


def cmd_train(args) -> dict:
    t0 = time.perf_counter()
    run = _run_file(args)
    mode = connect(run.cluster)
    samples_dir, meta, report = prepare(run)
    label = " (SYNTHETIC data)" if meta.synthetic else ""
    print(f"[lifelong] ray={mode} data={meta.name}{label} samples={report['samples']} dropped={report['dropped']}")
    job = JobSpec(model=run.model, model_config=dict(run.model_config),
                  features=FeatureSpec(meta.n_items, meta.n_categories, run.embedding_dim),
                  samples=run.samples, train=run.train, sharding=dict(run.sharding))
    trainer = make_trainer(job, samples_dir, run.cluster, run.name, run.output_dir)
    result = trainer.fit()
    summary = {"model": run.model, "data": meta.name, "synthetic": meta.synthetic,
               "wall_s": round(time.perf_counter() - t0, 1),
               "checkpoint": result.checkpoint.path if result.checkpoint else None, **result.metrics}
    out = Path(run.output_dir) / run.name / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print("[lifelong] result:\n" + "\n".join(f"  {k:28s} {v}" for k, v in summary.items()))
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifelong", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (("train", cmd_train, "train one model"),
                            ("prepare", cmd_prepare, "build and cache samples only")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", help="run YAML (see configs/)")
        s.add_argument("--address", help="Ray cluster address; default: embedded local Ray or the job's cluster")
        s.add_argument("--workers", type=int, help="number of training workers")
        s.add_argument("--output-dir", dest="output_dir", help="where samples, runs and checkpoints go")
        s.add_argument("--name", help="run name")
        if name == "train":
            s.add_argument("--model", help=f"one of: {', '.join(names())}")
        s.set_defaults(fn=fn)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
