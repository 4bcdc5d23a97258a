"""Learned models on The Complete Journey (real lifelong histories) beside the history-count
rules: does a model read more than counting the target in the history does?

    .venv/bin/python benchmarks/completejourney_models.py --variants din,din+match,sim_hard,twin,twin+match \
        --seeds 0,1,2 [--max-lens 50,500,4096] [--test] [--plot benchmarks/results/completejourney-auc-vs-len.png]

Every variant trains the run file's budget (`configs/completejourney.yaml`: one epoch, batch 256,
2 Ray workers, sharded tables) on the same samples, once per seed (`train.seed`: initialisation
and shuffling; the negatives are fixed by the data seed). A run name that already finished is
re-reported, not retrained. The table gives valid AUC / GAUC / logloss (mean ± std over seeds) and
samples/s; with `--test` each run's checkpoint is scored once on the test split too (do that
only after every choice was made on valid; the scores are kept in the run's `test_scores.json`,
so `--report --test` prints the table of finished runs without training or scoring anything).
`--max-lens` trains each variant at several lifelong
lengths L (`samples.max_len`; the short window stays the run file's); a short-history variant
(DIN, DIEN, DSIN) reads only its short window, so it runs once. `--plot` draws AUC against L.
Variants:
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from lifelong.jobs.config import load_run_file
from lifelong.jobs.evaluate import evaluate
from lifelong.jobs.train import train
from lifelong.models import entry

CACHE = {"key_cache_every": 20, "dedup_ids": True}
TEST_SCORES = "test_scores.json"
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
    xs = [x for x in xs if not math.isnan(x)]
    return f"{np.mean(xs):.{d}f}" + (f" ± {np.std(xs, ddof=1):.{d}f}" if len(xs) > 1 else "")


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


def plot(rows: list[tuple[str, int, list[dict]]], splits: list[str], path: str) -> None:
    """Mean AUC (± std over seeds) against L, one line per variant, one panel per split."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4.5), squeeze=False)
    for ax, sp in zip(axes[0], splits):
        for variant in dict.fromkeys(v for v, _, _ in rows):
            pts = sorted((L, [r[f"{sp}_auc"] for r in runs]) for v, L, runs in rows if v == variant)
            xs = [L for L, _ in pts]
            ax.errorbar(xs, [np.mean(a) for _, a in pts], yerr=[np.std(a) for _, a in pts], marker="o",
                        capsize=3, label=variant, linestyle="-" if len(xs) > 1 else "none")
        ax.set_xscale("log")
        ax.set(xlabel="lifelong length L (events)", ylabel=f"{sp} AUC", title=f"The Complete Journey, {sp}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/completejourney.yaml")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--test", action="store_true", help="also score each run's checkpoint on the test split")
    p.add_argument("--max-lens", default="", help="lifelong lengths L to train each variant at (default: the "
                                                   "run file's samples.max_len)")
    p.add_argument("--plot", default="", help="write AUC against L here (PNG)")
    p.add_argument("--report", action="store_true", help="train nothing: report finished runs (and, with --test, "
                                                          "their saved test scores)")
    a = p.parse_args()
    base = load_run_file(a.config)
    lens = [int(x) for x in a.max_lens.split(",")] if a.max_lens else [base.samples.max_len]
    rows = []
    for variant in a.variants.split(","):
        model, cfg, extra = VARIANTS[variant]
        uses_long = entry(model).module.inputs(entry(model).config(**cfg)).use_long
        for L in lens if uses_long else [base.samples.short_len]:
            runs = []
            for seed in (int(s) for s in a.seeds.split(",")):
                # The run file's own L keeps the plain name (runs trained before --max-lens existed).
                at = "" if L == base.samples.max_len or not uses_long else f".L{L}"
                run = replace(base, name=f"{base.name}-{variant}{at}.s{seed}", model=model, model_config=cfg,
                              samples=replace(base.samples, max_len=L) if at else base.samples,
                              train=replace(base.train, seed=seed, **extra))
                out = Path(run.output_dir) / run.name
                if a.report:  # finished runs only: their summaries and test scores, nothing trained
                    s = json.loads((out / "summary.json").read_text())
                else:
                    s = train(run)
                if a.test:
                    s.update(test_scores(out, s["checkpoint"], a.report))
                runs.append(s)
                print(f"[{variant} L={L} seed {seed}] valid AUC {s['valid_auc']:.4f}"
                      + (f", test AUC {s['test_auc']:.4f}" if a.test else ""), flush=True)
            rows.append((variant, L, runs))
    split_cols = ["valid"] + (["test"] if a.test else [])
    head = " | ".join(f"{sp} {m}" for sp in split_cols for m in ("AUC", "GAUC", "logloss"))
    print(f"\n| variant | L seen | seeds | {head} | train samples/s |\n|---|---|---|"
          + "---|" * (3 * len(split_cols) + 1))
    for variant, L, runs in rows:
        cells = " | ".join(pm([r[f"{sp}_{m}"] for r in runs]) for sp in split_cols for m in ("auc", "gauc", "logloss"))
        print(f"| {variant} | {L:,} | {len(runs)} | {cells} | {pm([r['train_samples_per_s'] for r in runs], 0)} |")
    if a.plot:
        plot(rows, split_cols, a.plot)


if __name__ == "__main__":
    main()
