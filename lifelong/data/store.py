"""The sequence store: every user's history once, in memory as flat arrays with per-user offsets.

Samples of the "store" layout hold `hist_end` (how many of the user's history events precede the
sample) instead of copies of the history; `SequenceStore.lists` gives the same last-`max_len`
slices the "copy" layout stores, so collate produces identical batches from either layout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lifelong.data.samples import HIST_COLUMNS, STORE_DIR, concat_ranges, list_arrays


def store_path(samples_dir: str | Path, layout: str) -> Optional[Path]:
    """Where the sequence store of a samples directory lives; None unless the layout is "store"."""
    return (Path(samples_dir) / STORE_DIR).resolve() if layout == "store" else None


class SequenceStore:
    """Histories of all users (store rows: user_id and list columns hist_item/hist_cat/hist_ts)."""

    def __init__(self, table: pa.Table, source: str = "sequence store") -> None:
        self.source = source
        users = table.column("user_id").to_numpy().astype(np.int64)
        if len(np.unique(users)) != len(users):
            raise ValueError(f"{source}: a user appears in more than one store row")
        self.row = np.full(int(users.max(initial=0)) + 1, -1, np.int64)  # user id -> store row
        self.row[users] = np.arange(len(users))
        lists = {name: list_arrays(table.column(name)) for name in HIST_COLUMNS}
        self.offsets = lists["hist_item"][0]  # (users + 1,), the same for every column
        self.values = {name: values.astype(np.int64) for name, (_, values) in lists.items()}

    @classmethod
    def read(cls, path: str | Path) -> "SequenceStore":
        return cls(pq.read_table(path), str(path))

    @property
    def events(self) -> int:
        return int(self.offsets[-1])

    def lists(self, users: np.ndarray, ends: np.ndarray, max_len: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Offsets (B+1,) and flat values of each sample's last `max_len` history events before `ends`."""
        idx, offsets = concat_ranges(*self.ranges(users, ends, max_len))
        return offsets, {name: v[idx] for name, v in self.values.items()}

    def ranges(self, users: np.ndarray, ends: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Each sample's last `max_len` history events before `ends` as store positions [start, stop)
        into `values`, (B,) each: for a reader that takes only some columns at some of them."""
        users = users.astype(np.int64)
        rows = np.where(users < len(self.row), self.row[np.minimum(users, len(self.row) - 1)], -1)
        if (rows < 0).any():
            raise KeyError(f"{self.source}: no history for user_id {int(users[rows < 0][0])}")
        base, length = self.offsets[rows], np.diff(self.offsets)[rows]
        ends = ends.astype(np.int64)
        if (ends > length).any() or (ends < 0).any():
            i = int(np.flatnonzero((ends > length) | (ends < 0))[0])
            raise ValueError(f"{self.source}: sample of user_id {int(users[i])} ends at history event "
                             f"{int(ends[i])}, the user has {int(length[i])}")
        return base + np.maximum(ends - max_len, 0), base + ends

    def expand(self, samples: pa.Table, max_len: int) -> pa.Table:
        """Store-layout samples -> copy-layout samples (hist_end replaced by the list columns)."""
        offsets, values = self.lists(samples.column("user_id").to_numpy(), samples.column("hist_end").to_numpy(),
                                     max_len)
        lists = {name: pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values[name]))
                 for name in HIST_COLUMNS}
        cols: dict[str, pa.Array] = {}
        for name in samples.column_names:  # the copy layout's column order: lists where hist_end was
            cols.update(lists if name == "hist_end" else {name: samples.column(name)})
        return pa.table(cols)
