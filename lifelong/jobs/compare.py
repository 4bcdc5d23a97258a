"""The compare job: every model on the same data, split, seeds and budget; baselines beside them.

For each lifelong length in `max_lens` (the samples' `max_len`), each model and each seed, one
run of the run file with that model and seed; the runs that read the same samples (one length's,
or every length's in the store layout) train one after another in one Ray Train run (`train_runs`:
Ray's start-up once, each run's outputs in its own directory); then the
popularity and logistic-regression baselines and the history-count rules (`trainers/rules.py`) on
the same samples. Writes, under
`<output_dir>/<name>/`: `runs.csv` (one row per run), `compare.csv` and `compare.md` (mean ± std
over seeds per model and length), `compare.png` (AUC vs lifelong length; AUC vs training samples/s)
and `curves.png` (every run's train loss and valid AUC against the step, from its TensorBoard
events). With `--tuned DIR` each model trains with its `lifelong tune` values (`tuned.json`).
"""
from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from lifelong.cluster.connect import connect
from lifelong.jobs.config import RunFile, for_model, plain, with_params
from lifelong.jobs.prepare import prepare, samples_key
from lifelong.jobs.train import train_runs
from lifelong.models import entry
from lifelong.data.store import SequenceStore, store_path
from lifelong.trainers.baselines import BASELINES, evaluate_baseline
from lifelong.trainers.curves import plot_runs
from lifelong.trainers.rules import evaluate_rules

METRICS = ("valid_auc", "valid_gauc", "valid_logloss", "train_samples_per_s", "train_peak_rss_mb",
           "valid_gsu_recall")
TUNE_SUMMARY = "tune_summary.json"  # what `lifelong tune` writes beside best.yaml (jobs/tune.py)
BASELINE_COLUMNS = ["user_id", "item_id", "category_id", "timestamp", "label"]


def _row(model: str, seed: int, max_len: int, summary: dict) -> dict:
    return {"model": model, "seed": seed, "max_len": max_len, "valid_gauc_users": summary.get("valid_gauc_users"),
            **{m: summary.get(m, math.nan) for m in METRICS}}


def tuned_params(run: RunFile, models: list[str], tuned_dir: str | Path) -> tuple[dict[str, dict], str]:
    """Each model's best values from the `tune_summary.json` files under `tuned_dir` (one `lifelong
    tune` run per model, on this run file's data and samples up to max_len), and the search budget
    they share; a missing model, two searches of one model or unequal budgets are errors."""
    found: dict[str, list[dict]] = {}
    for path in sorted(Path(tuned_dir).glob(f"*/{TUNE_SUMMARY}")):
        summary = json.loads(path.read_text())
        summary["path"] = str(path)
        found.setdefault(summary["model"], []).append(summary)
    missing = [m for m in models if m not in found]
    if missing:
        raise ValueError(f"--tuned {tuned_dir}: no {TUNE_SUMMARY} for {missing} (run `lifelong tune --model M` first)")
    twice = {m: [s["path"] for s in found[m]] for m in models if len(found[m]) > 1}
    if twice:
        raise ValueError(f"--tuned {tuned_dir}: more than one search per model: {twice}")
    chosen = {m: found[m][0] for m in models}
    now = plain(run)
    for m, s in chosen.items():
        same = s["data"] == now["data"] and {**s["samples"], "max_len": 0} == {**now["samples"], "max_len": 0}
        if not same:
            raise ValueError(f"--tuned: {s['path']} was tuned on other data or samples than this comparison")
    budgets = {(s["budget"], s["epochs_per_trial"]) for s in chosen.values()}
    if len(budgets) > 1:
        raise ValueError(f"--tuned: the models were tuned with unequal budgets: {sorted(budgets)}")
    (budget, epochs), = budgets
    return {m: s["params"] for m, s in chosen.items()}, f"tuned on valid: {budget}, {epochs} epoch(s) per trial"


def run_name(run: RunFile, max_len: int, model: str, seed: int) -> str:
    """The name of one comparison run (its directory under the output dir)."""
    return f"{run.name}.L{max_len}.{model}.s{seed}"


def model_run(base: RunFile, run: RunFile, model: str, seed: int, params: dict | None) -> RunFile:
    """One comparison run: the model with the run file's config for it (`for_model`: model_config
    or model_configs.<model>, else its defaults), its tuned values when given, the comparison's
    data, budget and seed."""
    r = replace(for_model(base, model), name=run_name(run, base.samples.max_len, model, seed),
                train=replace(run.train, seed=seed))
    return with_params(r, params) if params else r


def run_all(run: RunFile, models: list[str], seeds: list[int], max_lens: list[int],
            tuned: dict[str, dict] | None = None) -> list[dict]:
    """Train every (length, model, seed) and score the baselines; one row per run. `tuned` holds
    each model's tuned values (`tuned_params`)."""
    for m in models:
        entry(m)  # unknown names fail before any training
    connect(run.cluster)
    rows: list[dict] = []
    bar = tqdm(total=len(max_lens) * (len(models) * len(seeds) + len(BASELINES)), desc="compare", unit="run",
               disable=not sys.stderr.isatty())
    bases = [replace(run, samples=replace(run.samples, max_len=max_len)) for max_len in max_lens]
    for group in _by_samples(bases):  # lengths that read one build of samples train in one Ray Train run
        prepared = prepare(group[0])
        keys = [(b, model, seed) for b in group for model in models for seed in seeds]
        lens = "_".join(str(b.samples.max_len) for b in group)
        bar.set_postfix_str(f"L={lens}: {len(keys)} runs")
        summaries = train_runs([model_run(b, run, model, seed, (tuned or {}).get(model)) for b, model, seed in keys],
                               f"{run.name}.L{lens}.runs", prepared)
        trained = []  # each run's epoch lines said its valid AUC; runs.csv keeps every run's row
        for (b, model, seed), summary in zip(keys, summaries):
            trained.append(_row(model, seed, b.samples.max_len, summary))
            bar.update()
        samples_dir = prepared[0]
        tr, va = pq.read_table(samples_dir / "train"), pq.read_table(samples_dir / "valid")
        store = store_path(samples_dir, run.samples.layout)
        store = SequenceStore.read(store) if store else None
        baselines = {}  # no history: one score for every length of the group
        for name in BASELINES:
            m = evaluate_baseline(name, tr.select(BASELINE_COLUMNS), va.select(BASELINE_COLUMNS))
            baselines[name] = {f"valid_{k}": v for k, v in m.items()}
            bar.update(len(group))
        for b in group:  # rows by length: its runs, the baselines, the rules
            max_len = b.samples.max_len
            rows += [r for r in trained if r["max_len"] == max_len]
            rows += [_row(name, 0, max_len, m) for name, m in baselines.items()]
            for name, m in evaluate_rules(tr, va, max_len, run.samples.short_len, store).items():
                rows.append(_row(f"rule: {name}", 0, max_len, {f"valid_{k}": v for k, v in m.items()}))
    bar.close()
    return rows


def _by_samples(bases: list[RunFile]) -> list[list[RunFile]]:
    """The comparison's lengths grouped by the samples they read (`samples_key`): in the store
    layout one build serves every length, in the copy layout each length has its own."""
    groups: dict[str, list[RunFile]] = {}
    for b in bases:
        groups.setdefault(samples_key(b), []).append(b)
    return list(groups.values())


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (max_len, model), in first-seen order."""
    keys = list(dict.fromkeys((r["max_len"], r["model"]) for r in rows))
    out = []
    for max_len, model in keys:
        group = [r for r in rows if r["max_len"] == max_len and r["model"] == model]
        agg = {"max_len": max_len, "model": model, "seeds": len(group),
               "valid_gauc_users": group[0]["valid_gauc_users"]}
        for m in METRICS:
            vals = np.array([r[m] for r in group if r[m] is not None and not math.isnan(r[m])], dtype=float)
            agg[m] = float(vals.mean()) if len(vals) else math.nan
            agg[m + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0 if len(vals) else math.nan
        out.append(agg)
    return out


def _cell(a: dict, m: str, digits: int) -> str:
    if math.isnan(a[m]):
        return "–"
    return f"{a[m]:.{digits}f} ± {a[m + '_std']:.{digits}f}" if a["seeds"] > 1 else f"{a[m]:.{digits}f}"


def markdown(agg: list[dict], title: str) -> str:
    head = ("| L | model | seeds | AUC | GAUC (users) | logloss | train samples/s | peak MB/worker | GSU recall |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [f"### {title}", "", head]
    for a in agg:
        lines.append(f"| {a['max_len']} | {a['model']} | {a['seeds']} | {_cell(a, 'valid_auc', 4)} | "
                     f"{_cell(a, 'valid_gauc', 4)} ({a['valid_gauc_users']}) | {_cell(a, 'valid_logloss', 4)} | "
                     f"{_cell(a, 'train_samples_per_s', 0)} | {_cell(a, 'train_peak_rss_mb', 0)} | "
                     f"{_cell(a, 'valid_gsu_recall', 3)} |")
    return "\n".join(lines) + "\n"


def plot(agg: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.get_cmap("tab20").colors
    for i, model in enumerate(dict.fromkeys(a["model"] for a in agg)):
        style = {"color": colours[i % len(colours)], "marker": "osD^v<>"[i % 7], "capsize": 3, "label": model}
        pts = sorted((a for a in agg if a["model"] == model), key=lambda a: a["max_len"])
        ax1.errorbar([a["max_len"] for a in pts], [a["valid_auc"] for a in pts],
                     yerr=[a["valid_auc_std"] for a in pts], **style)
        trained = [a for a in pts if not math.isnan(a["train_samples_per_s"])]
        if trained:
            ax2.errorbar([a["train_samples_per_s"] for a in trained], [a["valid_auc"] for a in trained],
                         yerr=[a["valid_auc_std"] for a in trained], ls="none", **style)
        else:  # a baseline: no training throughput, drawn as a level
            for a in pts:
                ax2.axhline(a["valid_auc"], color=style["color"], ls="--", lw=1, label=f"{model} (L={a['max_len']})")
    ax2.legend(fontsize=7, ncol=2)
    ax1.set(xscale="log", xlabel="lifelong length L (max_len)", ylabel="valid AUC", title="AUC vs lifelong length")
    ax2.set(xlabel="train samples/s (whole job)", ylabel="valid AUC", title="AUC vs throughput")
    ax1.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rows: list[dict], out: Path, title: str) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(rows)
    for name, data in (("runs.csv", rows), ("compare.csv", agg)):
        with open(out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    (out / "compare.md").write_text(markdown(agg, title))
    plot(agg, out / "compare.png", title)
    return agg


def budget(run: RunFile, tuning: str = "no tuning") -> str:
    """The training budget every model got, as the report states it (the run file's learning
    rates are the defaults a tuned model's own values replace)."""
    t = run.train
    steps = f", at most {t.max_steps} steps per epoch" if t.max_steps else " (whole train split)"
    tuned = " where not tuned" if tuning != "no tuning" else ""
    return (f"budget per run: {t.epochs} epoch(s){steps}, batch {t.batch_size} per worker x "
            f"{run.cluster.num_workers or 'auto'} workers, sparse {t.sparse_optimizer} lr {t.sparse_lr}, "
            f"dense {t.dense_optimizer} lr {t.dense_lr}{tuned}, {tuning}; valid split"
            + (f" (its first {t.max_eval_batches} batches per worker)" if t.max_eval_batches else ""))


def compare(run: RunFile, models: list[str], seeds: list[int], max_lens: list[int],
            tuned_dir: str | Path | None = None) -> list[dict]:
    """Run the comparison; with `tuned_dir`, every model trains with its `lifelong tune` values."""
    tuned, tuning = tuned_params(run, models, tuned_dir) if tuned_dir else (None, "no tuning")
    rows = run_all(run, models, seeds, max_lens, tuned)
    label = run.data.format + (" (SYNTHETIC)" if run.data.format == "synthetic" else "")
    out = Path(run.output_dir) / run.name
    agg = write(rows, out, f"{label}: {len(seeds)} seed(s) per model; {budget(run, tuning)}")
    if tuned:
        (out / "tuned.json").write_text(json.dumps({"tuning": tuning, "params": tuned}, indent=2))
    runs = {f"{model} L={max_len}": [Path(run.output_dir) / run_name(run, max_len, model, seed) for seed in seeds]
            for max_len in max_lens for model in models}
    plot_runs(runs, out / "curves.png", f"{label}: learning curves, every seed")
    print((out / "compare.md").read_text(), flush=True)
    files = ", ".join(str(out / f) for f in ("compare.md", "compare.csv", "runs.csv", "compare.png", "curves.png"))
    print(f"[lifelong] compare wrote {files}", flush=True)
    return agg
