"""`lifelong` command line: prepare samples, train a model (locally or on a Ray cluster)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from lifelong.cluster.connect import connect
from lifelong.jobs.config import load_run_file
from lifelong.jobs.prepare import prepare
from lifelong.jobs.train import train
from lifelong.models import names


def _run_file(args):
    overrides = {"model": getattr(args, "model", None), "name": getattr(args, "name", None),
                 "output_dir": getattr(args, "output_dir", None)}
    run = load_run_file(args.config, overrides)
    if getattr(args, "address", None) or getattr(args, "workers", None):
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
    return train(_run_file(args))


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
