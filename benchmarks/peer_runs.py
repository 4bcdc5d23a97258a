"""The peers' side of `benchmarks/peers.py`: one training pass of a deepctr-torch or FuxiCTR model
on the files `peers.py` wrote, timed like ours (one thread, batch building included, evaluation
excluded). Runs in the peers' own venv (torch, deepctr-torch, fuxictr, keras_preprocessing), never
imports lifelong, and prints one JSON line:

    /tmp/peers-venv/bin/python benchmarks/peer_runs.py SYSTEM MODEL FOLDER [--zoo DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def deepctr(model_name: str, folder: Path, settings: dict) -> dict:
    """deepctr-torch's DIN or DIEN over `deepctr_{train,valid}.npz` (padded arrays, its `fit`)."""
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DIEN, DIN
    from sklearn.metrics import roc_auc_score

    dim, s, batch, seed = settings["dim"], settings["short_len"], settings["batch"], settings["seed"]
    vocab = settings["vocab"]
    seq = lambda name, table: VarLenSparseFeat(  # noqa: E731
        SparseFeat(name, vocab[table], dim, embedding_name=table), s, length_name="seq_length")
    columns = [SparseFeat("user", vocab["user"], dim), SparseFeat("item", vocab["item"], dim),
               SparseFeat("cat", vocab["cat"], dim), seq("hist_item", "item"), seq("hist_cat", "cat")]
    data = {name: dict(np.load(folder / f"deepctr_{name}.npz")) for name in ("train", "valid")}
    torch.manual_seed(seed)
    if model_name == "din":
        model = DIN(columns, ["item", "cat"], dnn_hidden_units=settings["head"],
                    att_hidden_size=settings["attention"], seed=seed)
    elif model_name == "dien":
        columns += [seq("neg_hist_item", "item"), seq("neg_hist_cat", "cat")]
        model = DIEN(columns, ["item", "cat"], gru_type="AUGRU", use_negsampling=True, alpha=0.05,
                     dnn_hidden_units=settings["head"], att_hidden_units=settings["attention"], seed=seed)
    else:
        raise SystemExit(f"deepctr-torch has no {model_name!r} here (din, dien)")
    model.compile("adam", "binary_crossentropy")
    keep = {c.name for c in columns} | {"seq_length"}
    x = {k: v for k, v in data["train"].items() if k in keep}
    cpu, wall = time.process_time(), time.perf_counter()
    model.fit(x, data["train"]["label"], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = len(data["train"]["label"])
    pred = model.predict({k: v for k, v in data["valid"].items() if k in keep}, batch_size=4096)
    return {"samples_per_cpu_s": n / cpu, "samples_per_s": n / wall,
            "valid_auc": float(roc_auc_score(data["valid"]["label"], pred))}


def split_name(model: str) -> tuple[str, str]:
    """"sdim-48x3" -> ("sdim", "48x3"): a model and its variant ("" for the default)."""
    base, _, variant = model.partition("-")
    return base, variant


def sdim_setting(variant: str) -> tuple[int, int]:
    """SDIM's hash functions x bits: "48x3" -> (48, 3); FuxiCTR's 2 x 4 by default."""
    return tuple(int(x) for x in variant.split("x")) if variant else (2, 4)


def fuxictr_params(model_name: str, settings: dict, folder: Path) -> dict:
    """FuxiCTR constructor arguments at the matched widths (its defaults otherwise)."""
    common = {"optimizer": "adam", "loss": "binary_crossentropy", "metrics": ["AUC", "logloss"],
              "learning_rate": 1e-3, "embedding_dim": settings["dim"], "dnn_hidden_units": list(settings["head"]),
              "batch_norm": False, "net_dropout": 0, "embedding_regularizer": 0, "net_regularizer": 0,
              "model_root": str(folder / "fuxictr_ckpt"), "verbose": 0, "gpu": -1}
    two_stage = {"attention_dim": settings["heads"] * settings["head_dim"], "num_heads": settings["heads"],
                 "short_seq_len": settings["short_len"] + 1}  # its short slice is [-short_seq_len:-1] of L + 1
    per_model = {
        "din": {"attention_hidden_units": list(settings["attention"])},
        "dien": {"attention_hidden_units": list(settings["attention"])},
        "twin": {**two_stage, "topk": settings["k"]},
        "eta": {**two_stage, "topk": settings["k"], "hash_bits": settings["eta_bits"]},
    }
    base, variant = split_name(model_name)
    hashes, tau = sdim_setting(variant if base == "sdim" else "")
    per_model["sdim"] = {**two_stage, "num_hashes": hashes, "hash_bits": tau}
    return {**common, **per_model[base]}


def fuxictr(model_name: str, folder: Path, settings: dict, zoo: Path) -> dict:
    """A FuxiCTR LongCTR zoo model on `fuxictr_*.parquet` through its own loader (`LongCTRDataLoader`:
    per-user sequences + item table, padded per batch) and its own `train_step`."""
    import logging

    sys.path.insert(0, str(zoo))
    logging.disable(logging.WARNING)
    np.unicode_ = np.str_  # keras_preprocessing 1.1.2 (its loader's pad_sequences) predates NumPy 2
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.torch_utils import seed_everything
    from longctr_dataloader import LongCTRDataLoader
    import DIEN, DIN, ETA, SDIM, TWIN  # noqa: E401  the zoo's packages

    classes = {"din": DIN.DIN, "dien": DIEN.DIEN, "twin": TWIN.TWIN, "eta": ETA.ETA, "sdim": SDIM.SDIM}
    feature_map = FeatureMap("peers", str(folder))
    feature_map.load(str(folder / "fuxictr_feature_map.json"), {"embedding_dim": settings["dim"]})
    seed_everything(seed=settings["seed"])
    base = split_name(model_name)[0]
    model = classes[base](feature_map, **fuxictr_params(model_name, settings, folder))
    # its loader pads at the front; its DIEN's GRU packing reads valid events first (peers' README)
    padding = "post" if base == "dien" else "pre"
    short_only = base in ("din", "dien")  # they attend over the whole padded sequence: cut to S
    max_len = settings["short_len"] if short_only else settings["max_len"]
    loader = lambda split: LongCTRDataLoader(  # noqa: E731
        feature_map, str(folder / f"fuxictr_{split}.parquet"), str(folder / "fuxictr_user_info.parquet"),
        str(folder / "fuxictr_item_info.parquet"), batch_size=settings["batch"], shuffle=False, num_workers=0,
        max_len=max_len, padding=padding)
    train = loader("train")
    model._max_gradient_norm, model._total_steps = 10.0, 0
    model.train()
    cpu, wall = time.process_time(), time.perf_counter()
    total = 0.0
    for i, batch in enumerate(train):  # what its `train_epoch` does, less the logging and mid-epoch evals
        model._batch_index = i
        total += model.train_step(batch).item()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = train.num_samples
    auc = model.evaluate(loader("valid"), metrics=["AUC"])["AUC"]
    return {"samples_per_cpu_s": n / cpu, "samples_per_s": n / wall, "valid_auc": float(auc),
            "train_loss": total / max(len(train), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("system", choices=("deepctr", "fuxictr"))
    p.add_argument("model")
    p.add_argument("folder", type=Path)
    p.add_argument("--zoo", type=Path, default=Path(__file__).resolve().parents[2] / "shared/peers/fuxictr-longctr")
    a = p.parse_args()
    torch.set_num_threads(1)
    settings = json.loads((a.folder / "settings.json").read_text())
    out = deepctr(a.model, a.folder, settings) if a.system == "deepctr" else fuxictr(a.model, a.folder, settings, a.zoo)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
