"""Test scores of a finished `lifelong compare`, read once: every (L, model, seed) run's checkpoint
scored on the test split after all training and every choice (tuning on valid) is done.

    .venv/bin/python benchmarks/compare_test.py --config configs/tune-completejourney.yaml \
        --models din,sim_hard,eta,twin,lic --seeds 0,1,2 --max-lens 500

Each run's scores are kept in its `test_scores.json` (next to its checkpoint), so printing the table
again reads no test data; a run retrained later is scored anew. Prints one Markdown table: valid
AUC (from the run's summary), test AUC / GAUC / logloss, mean ± std over seeds, and per seed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from completejourney_models import pm, test_scores

from lifelong.jobs.compare import run_name
from lifelong.jobs.config import load_run_file


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-lens", required=True)
    p.add_argument("--output-dir", default="runs")
    a = p.parse_args()
    run = load_run_file(a.config)
    seeds = [int(s) for s in a.seeds.split(",")]
    print("| L | model | seeds | valid AUC | test AUC | test GAUC | test logloss | per seed (valid / test AUC) |\n"
          "|---|---|---|---|---|---|---|---|")
    for max_len in (int(x) for x in a.max_lens.split(",")):
        for model in a.models.split(","):
            rows = []
            for seed in seeds:
                out = Path(a.output_dir) / run_name(run, max_len, model, seed)
                summary = json.loads((out / "summary.json").read_text())
                rows.append({"valid_auc": summary["valid_auc"],
                             **test_scores(out, summary["checkpoint"], cached_only=False)})
            per_seed = ", ".join(f"{r['valid_auc']:.4f} / {r['test_auc']:.4f}" for r in rows)
            cells = " | ".join(pm([r[m] for r in rows]) for m in ("valid_auc", "test_auc", "test_gauc", "test_logloss"))
            print(f"| {max_len:,} | {model} | {len(rows)} | {cells} | {per_seed} |", flush=True)


if __name__ == "__main__":
    main()
