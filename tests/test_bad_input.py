"""Bad input fails loudly and names the file, column, feature or rank; nothing is dropped silently
and no NaN reaches a checkpoint."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lifelong.data.loaders import load_parquet_log
from lifelong.data.samples import SampleConfig, build_local, count_candidates
from lifelong.data.schema import LogMeta, LogSchemaError
from lifelong.trainers import checkpoint
from lifelong.trainers.local import batches
from lifelong.trainers.loop import NonFiniteLoss, train_epoch
from lifelong.trainers.model_setup import plain_model
from tests.helpers import tiny_job, tiny_samples


def _log(**overrides):
    cols = {"user_id": [1, 1, 1, 2], "item_id": [1, 2, 3, 2], "category_id": [1, 1, 2, 1],
            "timestamp": [10, 20, 30, 40], "label": [1, 0, 1, 1]}
    cols.update(overrides)
    return pa.table({k: pa.array(v) if not isinstance(v, pa.Array) else v for k, v in cols.items()})


def _write(tmp_path, table, name="log.parquet"):
    LogMeta("t", 2, 3, 2).save(tmp_path / "meta.json")
    pq.write_table(table, tmp_path / name)
    return tmp_path / name


def test_parquet_log_directory_and_missing_paths(tmp_path):
    """A directory of part files with meta.json inside loads; missing paths say so."""
    log = _log()
    _write(tmp_path, log.slice(0, 2), "part-0.parquet")
    pq.write_table(log.slice(2), tmp_path / "part-1.parquet")
    table, meta, dropped = load_parquet_log(tmp_path)
    assert table.num_rows == 4 and meta.n_items == 3 and dropped == {}
    with pytest.raises(LogSchemaError, match=r"nope\.parquet: not found"):
        load_parquet_log(tmp_path / "nope.parquet")
    (tmp_path / "meta.json").unlink()
    with pytest.raises(LogSchemaError, match="no meta.json inside"):
        load_parquet_log(tmp_path)


def test_corrupt_parquet_names_the_file(tmp_path):
    path = _write(tmp_path, _log())
    path.write_bytes(path.read_bytes()[:40])  # truncated: footer gone
    with pytest.raises(LogSchemaError, match=r"log\.parquet: cannot read Parquet"):
        load_parquet_log(path)


@pytest.mark.parametrize("table,message", [
    (_log().drop_columns(["timestamp"]), r"log\.parquet: missing column\(s\) \['timestamp'\]"),
    (_log().append_column("price", pa.array([1.0] * 4)), r"log\.parquet: unexpected column\(s\) \['price'\]"),
    (_log(item_id=pa.array(["1", "2", "3", "2"])), r"log\.parquet: column 'item_id' has type string"),
    (_log(item_id=[1, -3, 3, 2]), r"log\.parquet: column 'item_id' has id -3 < 1"),
    (_log(category_id=[1, 1, 9, 1]), r"log\.parquet: column 'category_id' has id 9 > vocabulary size 2"),
    (_log(label=[1, 0, 2, 1]), r"log\.parquet: column 'label' must be 0/1"),
    (_log(timestamp=pa.array([10, None, 30, 40], pa.int64())), r"log\.parquet: column 'timestamp' has 1 null"),
    (_log().append_column("dwell", pa.array([1.0, np.nan, 2.0, 3.0], pa.float32())),
     r"log\.parquet: column 'dwell' has 1 NaN"),
])
def test_schema_is_checked_before_training(tmp_path, table, message):
    with pytest.raises(LogSchemaError, match=message):
        load_parquet_log(_write(tmp_path, table))


def test_events_without_history_are_counted_not_lost():
    log = _log()  # user 2 has one event (no earlier history), user 1's first event has none either
    cfg = SampleConfig(max_len=8, short_len=2, min_history=1)
    samples = build_local(log, cfg)
    assert count_candidates(log, cfg) == 4 and samples.num_rows == 2  # the report's dropped = 4 - 2


def test_nan_loss_names_rank_and_step_and_never_reaches_a_checkpoint(tmp_path):
    samples, meta = tiny_samples()
    job = tiny_job("din", meta, batch_size=32)
    torch.manual_seed(0)
    model = plain_model(job)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "embeddings" not in n).fill_(float("nan"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLoss, match=r"rank 0: non-finite loss nan at step 0"):
        train_epoch(model, opt, batches(samples, job, 32, 0), torch.device("cpu"), show=False)
    with pytest.raises(ValueError, match="refusing to checkpoint.*non-finite"):
        checkpoint.assert_finite(model)
