"""Load a log, build samples once per (data, samples) config and cache them under the output dir."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from lifelong.data.completejourney import CompleteJourneyConfig, load_completejourney
from lifelong.data.loaders import LOADERS
from lifelong.data.samples import build_samples
from lifelong.data.schema import LogMeta
from lifelong.data.synthetic import SyntheticConfig, generate
from lifelong.jobs.config import RunFile
from lifelong.config import make_config

REPORT = "report.json"


def load_log(run: RunFile):
    """(table, meta, dropped) for the run's data source."""
    if run.data.format == "synthetic":
        table, meta = generate(make_config(SyntheticConfig, run.data.synthetic, "data.synthetic"))
        return table, meta, {}
    if run.data.format == "completejourney":  # negatives' popularity: the samples' train period only
        cfg = make_config(CompleteJourneyConfig, run.data.completejourney, "data.completejourney")
        return load_completejourney(run.data.resolved_path(), cfg, run.samples.split[0])
    return LOADERS[run.data.format](run.data.resolved_path())


def samples_key(run: RunFile) -> str:
    """The sample cache's key: the data source and every sample setting the samples depend on.
    Store-layout samples hold whole histories (a sample keeps only `hist_end`; the collator cuts
    the last `max_len`), so runs at several lengths L share one build."""
    path = run.data.resolved_path()
    stat = [str(path), path.stat().st_size, path.stat().st_mtime_ns] if path and path.exists() else None
    samples = asdict(run.samples)
    if run.samples.layout == "store":
        samples.pop("max_len")
    blob = json.dumps({"data": asdict(run.data), "file": stat, "samples": samples, "v": 2},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def prepare(run: RunFile, num_workers: int | None = None) -> tuple[Path, LogMeta, dict]:
    """Samples directory, log meta and the build report (cached: reused when present)."""
    # absolute: Ray Data tasks write and read it from their own working directory
    out = (Path(run.output_dir) / "samples" / samples_key(run)).resolve()
    if (out / REPORT).exists():
        report = json.loads((out / REPORT).read_text())
        return out, LogMeta(**report["meta"]), report
    table, meta, dropped = load_log(run)
    report = build_samples(table, run.samples, out, num_workers or run.cluster.num_workers or 2)
    report["dropped"] = {**dropped, **report["dropped"]}
    report["meta"] = asdict(meta)
    report["events"] = table.num_rows
    (out / REPORT).write_text(json.dumps(report, indent=2))
    return out, meta, report
