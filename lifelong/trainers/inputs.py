"""What a trainer feeds its model, without Ray Train: the job's collator and its sequence store."""
from __future__ import annotations

from typing import Optional

from lifelong.data.store import SequenceStore
from lifelong.embeddings.collate import Collator, EvalCollator
from lifelong.models import entry
from lifelong.trainers.config import JobSpec


def make_collator(job: JobSpec, full_history: bool = False, store: Optional[SequenceStore] = None) -> Collator:
    """The collator for the job's model; `full_history` skips any collate-time GSU (diagnostics);
    `store` serves the histories of "store"-layout samples."""
    inputs = entry(job.model).module.inputs(job.arch())
    if (job.samples.layout == "store") != (store is not None):
        raise ValueError(f"samples.layout '{job.samples.layout}' needs a sequence store exactly when it is 'store'")
    return Collator(job.features, job.samples.short_len, job.samples.max_len, inputs.use_long,
                    None if full_history else inputs.prefilter, inputs.side_tables, store)


def make_eval_collator(job: JobSpec, store: Optional[SequenceStore] = None) -> EvalCollator:
    """The validation collator: the model's batches, and their full histories for the diagnostics."""
    return EvalCollator(make_collator(job, store=store), make_collator(job, full_history=True, store=store))


def load_store(config: dict) -> Optional[SequenceStore]:
    """The sequence store named by the loop config (each worker holds one copy), if any."""
    return SequenceStore.read(config["store"]) if config.get("store") else None
