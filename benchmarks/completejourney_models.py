"""Learned models on The Complete Journey (real lifelong histories) beside the history-count
rules: does a model read more than counting the target in the history does?

    .venv/bin/python benchmarks/completejourney_models.py --variants din,din+match,sim_hard,twin,twin+match \
        --seeds 0,1,2 [--max-lens 50,500,4096] [--dense-lrs 0.001,0.003] [--test] \
        [--plot benchmarks/results/completejourney-auc-vs-len.png]

Every variant trains the run file's budget (`configs/completejourney.yaml`: one epoch, batch 256
per worker, 2 Ray workers, sharded tables) on the same samples, once per seed (`train.seed`:
initialisation and shuffling; the negatives are fixed by the data seed). A run name that already
finished is re-reported, not retrained. The table gives valid AUC / GAUC / logloss (mean ± std over
seeds) and samples/s. `--max-lens` trains each variant at several lifelong lengths L
(`samples.max_len`; the short window stays the run file's); a short-history variant (DIN, DIEN,
DSIN) reads only its short window, so it runs once. `--dense-lrs` is an equal tuning budget: every
variant trains at each dense learning rate, and per (variant, L) the one with the best mean valid
AUC over the seeds is chosen. With `--test` only the chosen runs' checkpoints are scored on the
test split, once (the scores are kept in the run's `test_scores.json`, so `--report --test` prints
the tables of finished runs without training or scoring anything). `--plot` draws AUC against L.

Every finished run is also written to the ledger `benchmarks/results/completejourney-runs.csv` (one
row per variant, L, dense lr, workers and seed: metrics, the commit of the checkout that first
recorded it (for a run trained by this script, the commit it trained at) and where it came from),
because run directories do not outlive a machine. `--report --from-ledger` prints the tables and
the plot from the ledger alone (rows whose source says "transcribed" were copied from BENCHMARKS.md
for runs whose directories are gone; a (variant, L, lr) with no row is left out).
Variants:
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np

from lifelong.jobs.config import load_run_file
from lifelong.jobs.evaluate import evaluate
from lifelong.jobs.train import train
from lifelong.models import entry

CACHE = {"key_cache_every": 20, "dedup_ids": True}
TEST_SCORES = "test_scores.json"
LEDGER = Path(__file__).parent / "results" / "completejourney-runs.csv"
KEY = ("variant", "L", "dense_lr", "workers", "seed")
METRICS = tuple(f"{sp}_{m}" for sp in ("valid", "test") for m in ("auc", "gauc", "logloss")) + ("train_samples_per_s",)
VARIANTS = {  # name -> (model, model_config, train overrides)
    "din": ("din", {}, {}),
    "din+match": ("din", {"match": True}, {}),
    "sim_hard": ("sim_hard", {"k": 100}, {}),
    "sim_hard+match": ("sim_hard", {"k": 100, "match": True}, {}),
    "eta+match": ("eta", {"k": 100, "match": True}, CACHE),
    "lic+match": ("lic", {"k": 100, "match": True}, CACHE),
    "twin": ("twin", {"k": 100}, CACHE),
    "twin+match": ("twin", {"k": 100, "match": True}, CACHE),
    "din_full+match": ("din_full", {"match": True}, {}),
    "sim_soft+match": ("sim_soft", {"k": 100, "match": True}, {}),
    "sdim": ("sdim", {}, {}),
    "cain": ("cain", {"k": 100}, {}),
    "dien": ("dien", {}, {}),
    "dsin": ("dsin", {}, {}),
}
__doc__ += "".join(f"\n    {k}: model {m}, model_config {c}, train {t}" for k, (m, c, t) in VARIANTS.items())


def pm(xs: list[float], d: int = 4) -> str:
    """Mean ± std over the values that exist; "(k of n)" when some runs lack it (transcribed rows)."""
    have = [x for x in xs if not math.isnan(x)]
    if not have:
        return ""
    part = f" ({len(have)} of {len(xs)})" if len(have) < len(xs) else ""
    return f"{np.mean(have):.{d}f}" + (f" ± {np.std(have, ddof=1):.{d}f}" if len(have) > 1 else "") + part


def test_scores(out: Path, checkpoint: str, cached_only: bool) -> dict:
    """The run's test AUC / GAUC / logloss: scored once, then read from `<run>/test_scores.json`
    (a run retrained later writes a new checkpoint, and its scores are taken again)."""
    path = out / TEST_SCORES
    if path.exists() and json.loads(path.read_text()).get("checkpoint") == checkpoint:
        return json.loads(path.read_text())["scores"]
    if cached_only:
        raise SystemExit(f"{out}: no test scores for {checkpoint}; run without --report first")
    scores = {f"test_{k}": v for k, v in evaluate(checkpoint, "test").items() if k in ("auc", "gauc", "logloss")}
    path.write_text(json.dumps({"checkpoint": checkpoint, "scores": scores}, indent=2))
    return scores


def read_ledger() -> dict[tuple, dict]:
    """Ledger rows by (variant, L seen, dense lr, workers, seed); metrics as floats (nan: not scored)."""
    if not LEDGER.exists():
        return {}
    out = {}
    with LEDGER.open() as f:
        for r in csv.DictReader(f):
            r.update({"L": int(r["L"]), "dense_lr": float(r["dense_lr"]), "workers": int(r["workers"]),
                      "seed": int(r["seed"])}, **{m: float(r[m]) if r[m] else math.nan for m in METRICS})
            out[tuple(r[k] for k in KEY)] = r
    return out


def write_ledger(rows: dict[tuple, dict]) -> None:
    LEDGER.parent.mkdir(parents=True, exist_ok=True)
    with LEDGER.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*KEY, *METRICS, "recorded_at", "source"], lineterminator="\n")
        w.writeheader()
        for key in sorted(rows, key=lambda k: (k[0], k[1], k[2], k[3], k[4])):
            r = rows[key]
            w.writerow({k: ("" if k in METRICS and math.isnan(r[k]) else r[k]) for k in w.fieldnames})


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def record(ledger: dict, key: tuple, run: dict) -> None:
    """Put one finished run into the ledger: its summary, and its test scores where they were taken
    for its checkpoint. A run already there with the same valid AUC keeps the commit it ran at."""
    saved = run["out"] / TEST_SCORES
    if saved.exists() and json.loads(saved.read_text()).get("checkpoint") == run["checkpoint"]:
        run = {**json.loads(saved.read_text())["scores"], **run}
    old = ledger.get(key, {})
    same = old.get("source") == f"run {run['out'].name}" and old.get("valid_auc") == float(run["valid_auc"])
    ledger[key] = {**dict(zip(KEY, key)), **{m: float(run.get(m, math.nan)) for m in METRICS},
                   "recorded_at": old["recorded_at"] if same else commit(), "source": f"run {run['out'].name}"}


def plot(rows: list[tuple[str, int, list[dict]]], splits: list[str], path: str) -> None:
    """Mean AUC (± std over seeds) against L, one line per variant, one panel per split."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits) + 2, 4.5), squeeze=False)
    variants = list(dict.fromkeys(v for v, _, _ in rows))
    color = {v: plt.get_cmap("tab20")((2 * i + i // 10) % 20) for i, v in enumerate(variants)}  # fixed per variant
    for ax, sp in zip(axes[0], splits):
        for variant in variants:
            pts = sorted((L, a) for v, L, runs in rows if v == variant
                         if (a := [r[f"{sp}_auc"] for r in runs if not math.isnan(r[f"{sp}_auc"])]))
            if not pts:
                continue
            xs = [L for L, _ in pts]
            ax.errorbar(xs, [np.mean(a) for _, a in pts], yerr=[np.std(a) for _, a in pts], marker="o",
                        capsize=3, label=variant, color=color[variant], linestyle="-" if len(xs) > 1 else "none")
        ax.set_xscale("log")
        ax.set(xlabel="lifelong length L (events)", ylabel=f"{sp} AUC", title=f"The Complete Journey, {sp}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def run_for(base, variant: str, L: int, seed: int, lr: float, workers: int):
    """The run of one variant at length L, seed, dense learning rate and worker count. The run
    file's own L, lr and workers keep the plain name (runs trained before those flags existed)."""
    model, cfg, extra = VARIANTS[variant]
    at = "" if L == base.samples.max_len else f".L{L}"
    at += "" if lr == base.train.dense_lr else f".lr{lr:g}"
    at += "" if workers == base.cluster.num_workers else f".w{workers}"
    return replace(base, name=f"{base.name}-{variant}{at}.s{seed}", model=model, model_config=cfg,
                   samples=replace(base.samples, max_len=L), train=replace(base.train, seed=seed, dense_lr=lr, **extra),
                   cluster=replace(base.cluster, num_workers=workers))


def chosen(rows: list[tuple[str, int, float, list[dict]]]) -> dict[tuple[str, int], float]:
    """Per (variant, L): the dense learning rate with the best mean valid AUC over seeds."""
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for variant, L, lr, runs in rows:
        auc = float(np.mean([r["valid_auc"] for r in runs]))
        if (variant, L) not in best or auc > best[(variant, L)][0]:
            best[(variant, L)] = (auc, lr)
    return {key: lr for key, (_, lr) in best.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/completejourney.yaml")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--test", action="store_true", help="also score the chosen runs' checkpoints on the test split")
    p.add_argument("--max-lens", default="", help="lifelong lengths L to train each variant at (default: the "
                                                   "run file's samples.max_len)")
    p.add_argument("--dense-lrs", default="", help="dense learning rates to train each variant at (the same grid "
                                                    "for every variant; the one with the best mean valid AUC is "
                                                    "chosen, and only it is scored on test)")
    p.add_argument("--workers", type=int, default=0, help="training workers (default: the run file's; "
                                                            "batch_size is per worker, README)")
    p.add_argument("--plot", default="", help="write AUC against L here (PNG)")
    p.add_argument("--report", action="store_true", help="train nothing: report finished runs (and, with --test, "
                                                          "their saved test scores)")
    p.add_argument("--from-ledger", action="store_true", help="with --report: read the runs from the ledger, not "
                                                               "from run directories")
    a = p.parse_args()
    if a.from_ledger and not a.report:
        p.error("--from-ledger needs --report (it trains nothing)")
    ledger = read_ledger()
    base = load_run_file(a.config)
    lens = [int(x) for x in a.max_lens.split(",")] if a.max_lens else [base.samples.max_len]
    lrs = [float(x) for x in a.dense_lrs.split(",")] if a.dense_lrs else [base.train.dense_lr]
    workers = a.workers or base.cluster.num_workers
    rows = []
    for variant in a.variants.split(","):
        model, cfg, _ = VARIANTS[variant]
        uses_long = entry(model).module.inputs(entry(model).config(**cfg)).use_long
        for L in lens if uses_long else [base.samples.max_len]:  # a short-history model reads its window only
            seen = L if uses_long else base.samples.short_len
            for lr in lrs:
                runs = []
                for seed in (int(s) for s in a.seeds.split(",")):
                    key = (variant, seen, lr, workers, seed)
                    if a.from_ledger:
                        if key in ledger:
                            runs.append(ledger[key])
                        continue
                    run = run_for(base, variant, L, seed, lr, workers)
                    out = Path(run.output_dir) / run.name
                    s = json.loads((out / "summary.json").read_text()) if a.report else train(run)
                    runs.append({**s, "out": out, "key": key})
                    record(ledger, key, runs[-1])
                    write_ledger(ledger)
                    print(f"[{variant} L={seen} lr={lr:g} seed {seed}] valid AUC {s['valid_auc']:.4f}", flush=True)
                if runs:
                    rows.append((variant, seen, lr, runs))
    pick = chosen(rows)
    print("\n| variant | L seen | dense lr | seeds | valid AUC | valid GAUC | valid logloss | train samples/s |"
          "\n|---|---|---|---|---|---|---|---|")
    for variant, L, lr, runs in rows:
        mark = " (chosen)" if len(lrs) > 1 and pick[(variant, L)] == lr else ""
        cells = " | ".join(pm([r[f"valid_{m}"] for r in runs]) for m in ("auc", "gauc", "logloss"))
        print(f"| {variant} | {L:,} | {lr:g}{mark} | {len(runs)} | {cells} | "
              f"{pm([r['train_samples_per_s'] for r in runs], 0)} |")
    if a.test:  # the chosen setting of each (variant, L) only: test is read once, after every choice
        picked = [(v, L, lr, runs) for v, L, lr, runs in rows if pick[(v, L)] == lr]
        print("\n| variant | L seen | dense lr (chosen on valid) | seeds | valid AUC | test AUC | test GAUC "
              "| test logloss | per seed (valid / test) |\n|---|---|---|---|---|---|---|---|---|")
        for variant, L, lr, runs in picked:
            for r in runs:
                if not a.from_ledger:
                    r.update(test_scores(r["out"], r["checkpoint"], a.report))
                    record(ledger, r["key"], r)
            write_ledger(ledger)
            cells = " | ".join(pm([r[f"test_{m}"] for r in runs]) for m in ("auc", "gauc", "logloss"))
            seeds = ", ".join(f"{r['valid_auc']:.4f} / {r['test_auc']:.4f}" for r in runs)
            print(f"| {variant} | {L:,} | {lr:g} | {len(runs)} | {pm([r['valid_auc'] for r in runs])} | {cells} "
                  f"| {seeds} |")
        rows = picked
    if a.plot:
        plot([(v, L, runs) for v, L, _, runs in rows], ["valid"] + (["test"] if a.test else []), a.plot)


if __name__ == "__main__":
    main()
