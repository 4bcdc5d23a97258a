"""`lifelong` command line: prepare samples, train a model or compare several (locally or on a Ray cluster)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from ray.train import TrainingFailedError

from lifelong.cluster.connect import connect
from lifelong.cluster.logs import set_verbose, verbose
from lifelong.jobs.config import load_run_file
from lifelong.jobs.prepare import prepare
from lifelong.jobs.train import train
from lifelong.models import names


def _run_file(args):
    overrides = {"model": getattr(args, "model", None), "name": getattr(args, "name", None),
                 "output_dir": getattr(args, "output_dir", None)}
    run = load_run_file(args.config, overrides)
    workers = getattr(args, "workers", None)
    if getattr(args, "address", None) or workers is not None:  # --workers 0 means auto, not "unset"
        run = replace(run, cluster=replace(run.cluster, address=args.address or run.cluster.address,
                                           num_workers=run.cluster.num_workers if workers is None else workers))
    for cap in ("max_steps", "max_eval_batches"):
        if getattr(args, cap, None) is not None:
            run = replace(run, train=replace(run.train, **{cap: getattr(args, cap)}))
    return run


def cmd_prepare(args) -> dict:
    run = _run_file(args)
    connect(run.cluster)
    out, meta, report = prepare(run)
    print(json.dumps({"samples_dir": str(out), **report}, indent=2))
    return report


def cmd_train(args) -> dict:
    return train(_run_file(args))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def cmd_compare(args) -> list:
    from lifelong.jobs.compare import compare

    run = _run_file(args)
    max_lens = _ints(args.max_lens) if args.max_lens else [run.samples.max_len]
    return compare(run, [m for m in args.models.split(",") if m], _ints(args.seeds), max_lens, args.tuned)


def cmd_tune(args) -> dict:
    from lifelong.jobs.tune import tune_model

    run = _run_file(args)
    if args.trials is not None:
        run = replace(run, tune=replace(run.tune, trials=args.trials))
    if not args.name:  # a search has its own run directory, never a train run's
        run = replace(run, name=f"tune.{run.model}" if run.name == run.model else f"{run.name}.tune.{run.model}")
    return tune_model(run)


def cmd_shard_bench(args) -> list:
    from lifelong.jobs.shard_bench import shard_bench

    return shard_bench(_run_file(args), _ints(args.world_sizes), args.steps, args.warmup)


def cmd_evaluate(args) -> dict:
    from lifelong.jobs.evaluate import evaluate

    return evaluate(args.checkpoint, args.split)


def common(s: argparse.ArgumentParser) -> None:
    """--debug and --verbose also after the command (`lifelong train --verbose`)."""
    for flag in ("--debug", "--verbose"):
        s.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=f"as `lifelong {flag}`")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifelong", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.add_argument("--verbose", action="store_true", help="also show Ray's, Ray Data's and TorchRec's own logs "
                   "and every worker's output (default: lifelong's lines only; Ray's logs stay in "
                   "/tmp/ray/session_latest/logs)")
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (("train", cmd_train, "train one model"),
                            ("compare", cmd_compare, "train several models x seeds, plus baselines; table + plot"),
                            ("tune", cmd_tune, "Ray Tune search over the run file's tune.space (valid AUC, ASHA); "
                             "writes best.yaml"),
                            ("shard-bench", cmd_shard_bench, "every sharding plan x world size: memory, comms, speed"),
                            ("prepare", cmd_prepare, "build and cache samples only")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", help="run YAML (see configs/)")
        s.add_argument("--address", help="Ray cluster address; default: embedded local Ray or the job's cluster")
        s.add_argument("--workers", type=int, help="number of training workers (0: auto, from the cluster's resources)")
        s.add_argument("--output-dir", dest="output_dir", help="where samples, runs and checkpoints go")
        s.add_argument("--name", help="run name")
        if name in ("train", "shard-bench", "tune"):
            s.add_argument("--model", help=f"one of: {', '.join(names())}")
        if name in ("train", "compare", "tune"):
            s.add_argument("--max-steps", dest="max_steps", type=int,
                           help="cap every epoch at this many steps (train.max_steps; 0: whole epochs), "
                           "e.g. for a quick smoke run")
            s.add_argument("--max-eval-batches", dest="max_eval_batches", type=int,
                           help="validate on at most this many batches per worker and epoch "
                           "(train.max_eval_batches; 0: the whole valid split), e.g. for a quick smoke run")
        if name == "compare":
            s.add_argument("--models", default=",".join(names()), help="comma-separated model names (default: all)")
            s.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
            s.add_argument("--max-lens", dest="max_lens", help="comma-separated lifelong lengths (samples.max_len)")
            s.add_argument("--tuned", help="a directory of `lifelong tune` outputs (e.g. runs): every model trains "
                           "with its tuned values; all must share one search budget")
        if name == "tune":
            s.add_argument("--trials", type=int, help="trials to draw (tune.trials)")
        if name == "shard-bench":
            s.add_argument("--world-sizes", dest="world_sizes", default="1,2", help="comma-separated worker counts")
            s.add_argument("--steps", type=int, default=20, help="timed steps per plan")
            s.add_argument("--warmup", type=int, default=3, help="untimed steps per plan")
        s.set_defaults(fn=fn)
        common(s)
    s = sub.add_parser("evaluate", help="re-score a saved checkpoint on a split (one process)")
    common(s)
    s.add_argument("--checkpoint", required=True, help="a run directory (runs/<name>: its newest complete checkpoint) "
                   "or one checkpoint directory in it")
    s.add_argument("--split", default="valid", help="train, valid or test")
    s.set_defaults(fn=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command; an error is one line naming what is wrong (the traceback with --debug)."""
    args = parser().parse_args(argv)
    set_verbose(args.verbose or verbose())
    try:
        args.fn(args)
    except (ValueError, KeyError, OSError, TrainingFailedError) as e:  # OSError: missing files, addresses
        if args.debug:
            raise
        what = training_error(e) if isinstance(e, TrainingFailedError) else \
            e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lifelong {args.command}: error: {what}", file=sys.stderr)
        return 2
    return 0


def training_error(e: TrainingFailedError) -> str:
    """A Ray Train failure in one line: the failing ranks and the last line of the first one's error."""
    failures = getattr(e, "worker_failures", None) or {}
    ranks = sorted(failures)
    lines = [line for line in str(failures[ranks[0]] if ranks else e).splitlines() if line.strip()]
    where = f"training worker rank(s) {ranks}" if ranks else "Ray Train"
    return f"{where}: {lines[-1].strip() if lines else type(e).__name__} (`lifelong --debug ...` for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
