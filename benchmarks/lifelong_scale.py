"""Lifelong scale on one worker: samples/s, peak memory and GSU cost per model at L = 10^3..10^5,
on planted SYNTHETIC data in the sequence-store layout.

    .venv/bin/python benchmarks/lifelong_scale.py --lens 1000,10000 \
        --models din_full,sim_hard,eta,eta+cache,sdim,twin,twin+cache,lic,lic+cache

A model name takes `+key=value` model_config overrides (`sdim+form=bucket+hashes=2+tau=4`).
A model name with `+cache` runs its GSU on the key cache (`train.key_cache_every` = --refresh),
refreshed once before timing; its one refresh is timed and its cost, spread over --refresh
steps, is included in samples/s. `+dedup` also deduplicates ids in every lookup.

For each L one log is generated and its samples (store layout) written once; each (L, model)
then runs in a fresh process (so its peak RSS is its own): `--steps` timed training steps of an
unsharded model on pre-collated batches (the trainer's rate; collate overlaps training in Ray
Data's prefetch threads and is measured on its own as the ingest rate), the GSU's share of the
forward pass, and the bytes of keys the GSU reads per sample next to this machine's measured copy
bandwidth (the floor: those bytes / bandwidth, the best copy of --bandwidth-processes fresh
processes). SIM-hard's GSU runs at collate time, so its GSU
time is the collate-time category search. ETA without the cache hashes every behaviour's
embedding in the step, so its GSU reads the embeddings (not the signatures they give). A GSU on
the key cache reads each behaviour's ids and
time stamp plus the cache rows it fetches. `--repeats N` runs each (L, model) in N fresh processes
and keeps each timed column's best (samples/s, GSU time, ingest), as this machine's other work
moves single runs by +-25 % and more. `--device cuda` puts the models, their batches and key caches
on the GPU (collate and SIM-hard's collate-time search stay on the host; the floor is then the
GPU's copy bandwidth, and memory is the peak allocated on the GPU). Prints one Markdown table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from lifelong.data.samples import SampleConfig, build_local, build_store_local
from lifelong.data.store import SequenceStore
from lifelong.data.synthetic import SyntheticConfig, generate
from lifelong.embeddings.spec import FeatureSpec
from lifelong.models import entry
from lifelong.models.base import loss as ctr_loss
from lifelong.models.eta import ETA
from lifelong.models.two_stage import TwinFrame, TwoStage
from lifelong.trainers.allocator import keep_freed_memory
from lifelong.trainers.config import JobSpec, TrainConfig
from lifelong.trainers.inputs import make_collator
from lifelong.trainers.local import local_optimizer, one_chunk
from lifelong.trainers.metrics import peak_rss_mb
from lifelong.trainers.model_setup import plain_model


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously), so host clocks time it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, mb: int = 256, reps: int = 5) -> float:
    """Bytes per second `Tensor.copy_` moves on this device (read side), the best of `reps` copies
    (the floor is what the machine can do, not what a disturbed copy did)."""
    src = torch.ones(mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return src.numel() * 4 / best


BEST = {"samples_per_s": max, "collate_per_s": max, "gsu_us_per_sample": min}  # per column, over repeats


def best_of(rows: list[dict]) -> dict:
    """One row from repeats of a (L, model): each timed column's best value (the repeat least
    disturbed by other work on the machine), the rest from the fastest repeat."""
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return rows[0]
    out = dict(max(ok, key=lambda r: r["samples_per_s"]))
    for key, pick in BEST.items():
        values = [r[key] for r in ok if r[key] is not None]
        out[key] = pick(values) if values else None
    return {**out, "repeats": len(ok)}


def prepare(L: int, users: int, impressions: int, folder: Path) -> dict:
    log, meta = generate(SyntheticConfig(n_users=users, seq_len=L, n_impressions=impressions,
                                         guard=min(100, L // 10), seed=1))
    cfg = SampleConfig(max_len=L, short_len=50, sample_behaviors=(1,), history_behaviors=(0,), layout="store")
    pq.write_table(build_local(log, cfg), folder / "samples.parquet")
    pq.write_table(build_store_local(log, cfg), folder / "store.parquet")
    return {"n_items": meta.n_items, "n_categories": meta.n_categories, "max_len": L}


class Timer:
    """Accumulates wall time and input bytes of wrapped calls (on a GPU, until their work is done)."""

    def __init__(self, device: torch.device = torch.device("cpu")) -> None:
        self.seconds, self.bytes, self.device = 0.0, 0, device

    def wrap(self, fn, count_bytes):
        def timed(*args):
            sync(self.device)
            t = time.perf_counter()
            out = fn(*args)
            sync(self.device)
            self.seconds += time.perf_counter() - t
            self.bytes += count_bytes(*args)
            return out
        return timed


def measure(variant: str, folder: str, meta: dict, batch: int, steps: int, warmup: int, k: int, refresh: int,
            device_name: str = "cpu") -> dict:
    """One (L, model) in this (fresh) process. Peak RSS is reported with its growth after the data
    and batches were loaded (the model, its activations and optimiser state); on a GPU, the peak
    of allocated GPU memory (all of it the model's, its batches' and their activations')."""
    keep_freed_memory()  # as the trainers do
    torch.manual_seed(0)
    device = torch.device(device_name)
    L = meta["max_len"]
    model, *opts = variant.split("+")
    cfg = {"k": k} if issubclass(entry(model).module, TwoStage) else {}
    for key, value in (o.split("=", 1) for o in opts if "=" in o):  # e.g. sdim+hashes=2+tau=4
        cfg[key] = int(value) if value.lstrip("-").isdigit() else value
    train = TrainConfig(batch_size=batch, key_cache_every=refresh if "cache" in opts else 0, dedup_ids="dedup" in opts)
    job = JobSpec(model, cfg, FeatureSpec(meta["n_items"], meta["n_categories"], 16),
                  SampleConfig(max_len=L, short_len=50, layout="store"), train)
    samples = one_chunk(pq.read_table(Path(folder) / "samples.parquet"))  # as the trainers take rows
    store = SequenceStore.read(Path(folder) / "store.parquet")
    collate = make_collator(job, store=store)
    gsu = Timer(device)
    if collate.prefilter is not None:  # SIM-hard: the GSU is the collate-time category search over L ids
        collate.prefilter.search = gsu.wrap(collate.prefilter.search,
                                            lambda tc, cats, starts, stops: int((stops - starts).sum()) * cats.itemsize)
    n = warmup + steps
    order = np.random.default_rng(0).permutation(samples.num_rows)[: n * batch]
    rows = lambda i: samples.take(order[i * batch:(i + 1) * batch])  # noqa: E731
    batches = [collate(rows(i)).to(device) for i in range(n)]  # the trainer's pre-collated batches
    # Ingest in steady state: the same batches collated again and dropped, as a prefetching loader
    # hands each on and frees it. The first pass, in a fresh process whose batches all stay alive,
    # pays page faults for every new array (TWIN at 10^4: ~2k samples/s, against ~15k once memory
    # is reused) and the GSU's reads of the store's pages.
    t = time.perf_counter()
    for i in range(warmup, n):
        collate(rows(i))
    collate_rate = steps * batch / (time.perf_counter() - t)
    gsu_samples = (n + steps) * batch  # SIM-hard: its GSU ran on every collated sample, in both passes
    base_rss = peak_rss_mb() if device.type == "cpu" else 0.0
    m = plain_model(job).to(device)
    opt = local_optimizer(job, m)
    refresh_s = 0.0
    if m.sparse.key_cache is not None:
        sync(device)
        t = time.perf_counter()
        m.refresh_keys()
        sync(device)
        refresh_s = time.perf_counter() - t
    if collate.prefilter is None and isinstance(m, TwoStage) and m.sparse.key_cache is not None:
        # GSU on the key cache: it reads each behaviour's ids and time stamp, and the cache rows it
        # fetches (one per behaviour, or one per distinct id with dedup)
        m.select_cached = gsu.wrap(m.select_cached, lambda b: sum(
            b.sparse[f].values().nbytes for f in ("long_item", "long_cat")) + b.long_ts.nbytes)

        def count_rows(module, args, out):
            gsu.bytes += sum(out[f].values().nbytes for f in out.keys())
        m.sparse.key_cache.register_forward_hook(count_rows)
    elif collate.prefilter is None and isinstance(m, TwoStage) and type(m).gsu_scores is not TwoStage.gsu_scores:
        # folded scores (TWIN, CAIN, LIC): the GSU reads the item keys and the times
        item_keys = m.item_keys if isinstance(m, TwinFrame) else (lambda emb: emb.long)
        m.select = gsu.wrap(m.select, lambda b, emb: item_keys(emb).nbytes + b.long_ts.nbytes)
    elif isinstance(m, ETA):  # the GSU hashes every behaviour's embedding in the step: it reads them
        m.select = gsu.wrap(m.select, lambda b, emb: emb.long.nbytes)
    elif collate.prefilter is None and isinstance(m, TwoStage):
        m.select = gsu.wrap(m.select, lambda b, emb: 0)  # keys' bytes come from the hook below

        def count_keys(module, args):  # GSU inputs: (query, candidates (B, L, ...), mask)
            gsu.bytes += args[1].nbytes
        m.gsu.register_forward_pre_hook(count_keys)
    for i, b in enumerate(batches):
        if i == warmup:
            sync(device)
            t = time.perf_counter()
            if collate.prefilter is None:
                gsu.seconds, gsu.bytes, gsu_samples = 0.0, 0, steps * batch
        loss = ctr_loss(b, m(b))
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(device)
    elapsed = time.perf_counter() - t + refresh_s * steps / max(refresh, 1)  # refreshes amortised
    timed = steps * batch
    return {"model": variant, "L": L, "samples_per_s": timed / elapsed, "collate_per_s": collate_rate,
            "refresh_ms": 1e3 * refresh_s if m.sparse.key_cache is not None else None,
            "peak_rss_mb": peak_rss_mb() if device.type == "cpu" else torch.cuda.max_memory_allocated(device) / 2**20,
            "base_rss_mb": base_rss, "device": device.type,
            "gsu_us_per_sample": 1e6 * gsu.seconds / gsu_samples if gsu.bytes else None,
            "gsu_key_bytes_per_sample": gsu.bytes / gsu_samples if gsu.bytes else None}


def _put(fn, args, queue) -> None:
    queue.put(fn(*args))


def in_fresh_process(fn, *args):
    """fn(*args) in a freshly spawned process (its own memory and page placement); raises if the
    process died without a result (out of memory, say)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_put, args=(fn, args, queue))
    p.start()
    p.join()
    if queue.empty():
        raise RuntimeError(f"process exited with {p.exitcode}")
    return queue.get()


def measure_or_error(*args) -> dict:
    try:
        return measure(*args)
    except Exception as e:  # noqa: BLE001  out of memory or a model error: reported in the table
        return {"model": args[0], "L": args[2]["max_len"], "error": f"{type(e).__name__}: {str(e)[:120]}"}


def device_bandwidth(device: str) -> float:
    return copy_bandwidth(torch.device(device))


def machine_bandwidth(device: str, processes: int) -> float:
    """The best `copy_bandwidth` of `processes` fresh processes: on this machine one process's
    copies read 10.8 to 18.7 GB/s from one start to the next (where its pages land), and the
    floor is what the machine can do."""
    return max(in_fresh_process(device_bandwidth, device) for _ in range(processes))


def run_one(args) -> dict:
    try:
        return in_fresh_process(measure_or_error, *args)
    except RuntimeError as e:
        return {"model": args[0], "L": args[2]["max_len"], "error": str(e)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lens", default="1000,10000")
    p.add_argument("--models", default="din_full,sim_hard,eta,eta+cache,sdim,twin,twin+cache,lic,lic+cache")
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--impressions", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--refresh", type=int, default=100, help="steps between key-cache refreshes (+cache models)")
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per (L, model); each column's best is kept")
    p.add_argument("--device", default="cpu", help="cpu, or cuda: models, batches and key caches on the GPU "
                   "(collate and SIM-hard's collate-time search stay on the host)")
    p.add_argument("--bandwidth-processes", type=int, default=8, help="fresh processes whose best copy sets the floor")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()
    device = torch.device(a.device)
    bw = machine_bandwidth(a.device, a.bandwidth_processes)
    where = (f"CUDA ({torch.cuda.get_device_name(device)}; collate on the host's {torch.get_num_threads()} threads)"
             if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)")
    print(f"SYNTHETIC planted logs, {a.users} users x {a.impressions} impressions; one process per (L, model), "
          f"unsharded, {where}, batch {a.batch}, k {a.k}, {a.steps} timed steps; "
          f"copy bandwidth {bw / 1e9:.2f} GB/s (best of 5 copies in each of {a.bandwidth_processes} processes); "
          f"key-cache refresh every {a.refresh} steps"
          + (f"; each timed column the best of {a.repeats} processes" if a.repeats > 1 else "") + "\n")
    memory = "peak GPU MB allocated" if device.type == "cuda" else "peak RSS MB (data + model)"
    print(f"| L | model | samples/s | x din_full | {memory} | GSU us/sample | GSU key KB/sample "
          "| floor us/sample | GSU / floor | refresh ms | ingest (collate) samples/s | ingest / train |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for L in (int(x) for x in a.lens.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            meta = prepare(L, a.users, a.impressions, Path(tmp))
            base = None
            for model in a.models.split(","):
                r = best_of([run_one((model, tmp, meta, a.batch, a.steps, a.warmup, a.k, a.refresh, a.device))
                             for _ in range(a.repeats)])
                rows.append(r)
                if "error" in r:
                    print(f"| {L:,} | {model} | failed: {r['error']} |||||||||", flush=True)
                    continue
                base = r["samples_per_s"] if model == "din_full" else base
                ratio = f"{r['samples_per_s'] / base:.1f}" if base else "–"
                if r["gsu_key_bytes_per_sample"]:
                    floor = 1e6 * r["gsu_key_bytes_per_sample"] / bw
                    gsu = (f"{r['gsu_us_per_sample']:.1f} | {r['gsu_key_bytes_per_sample'] / 1024:.1f} | {floor:.2f} "
                           f"| {r['gsu_us_per_sample'] / floor:.0f}x")
                else:
                    gsu = "– | – | – | –"
                rss = (f"{r['peak_rss_mb']:.0f}" if device.type == "cuda"
                       else f"{r['peak_rss_mb']:.0f} ({r['peak_rss_mb'] - r['base_rss_mb']:+.0f})")
                refresh = f"{r['refresh_ms']:.0f}" if r["refresh_ms"] is not None else "–"
                print(f"| {L:,} | {model} | {r['samples_per_s']:.0f} | {ratio} | {rss} | {gsu} | {refresh} "
                      f"| {r['collate_per_s']:.0f} | {r['collate_per_s'] / r['samples_per_s']:.1f} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
