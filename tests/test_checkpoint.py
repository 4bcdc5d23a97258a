"""Full training checkpoints (2 gloo ranks, DMP): resume at step N gives exactly the losses of an
uninterrupted run, and a checkpoint reshards on load (other plan, other world size)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import torch.distributed as dist

from lifelong.embeddings.state import gather_full_state
from lifelong.trainers import checkpoint
from lifelong.trainers.inputs import make_collator
from lifelong.trainers.model_setup import sharded_model
from lifelong.models.base import loss as ctr_loss
from tests.helpers import start_ranks, tiny_job, tiny_samples

N, NEXT, B = 3, 5, 16  # save after N steps, then compare NEXT more; B rows per rank and step
SAVE_PLAN = {"item": ["row_wise"], "cat": ["table_wise"], "user": ["row_wise"]}


def _job(sharding):
    samples, meta = tiny_samples(n_users=16)
    job = tiny_job("twin", meta, {"k": 6}, users=True, sparse_optimizer="rowwise_adagrad", sparse_lr=0.1,
                   dense_optimizer="adam", dense_lr=3e-3)
    return samples, type(job)(**{**job.__dict__, "sharding": sharding})


def _batches(samples, job, rank, world, steps):
    collate = make_collator(job)
    return [collate(samples.slice((s * world + rank) * B, B)) for s in range(steps)]


def _step(model, opt, batch) -> float:
    loss = ctr_loss(batch, model(batch))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


ITEM_W = "sparse.embeddings.embeddings.item.weight"


def _item_momentum(opt) -> torch.Tensor:
    """The item table's row-wise Adagrad state, whole (gathered from its shards when sharded)."""
    t = opt.state_dict()["state"][ITEM_W]["item.momentum1"]
    if not hasattr(t, "local_shards"):
        return t.detach().clone()
    full = torch.zeros(t.shape)
    for shard in t.local_shards():
        full[shard.metadata.shard_offsets[0]:][:shard.tensor.shape[0]] = shard.tensor
    dist.all_reduce(full)  # disjoint shards, zeros elsewhere
    return full


def _train_and_save(rank, init_file, out):
    """N steps, checkpoint, NEXT more steps (the uninterrupted run); saves losses, state, predictions."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    samples, job = _job(SAVE_PLAN)
    torch.manual_seed(0)
    model, opt, plan = sharded_model(job, torch.device("cpu"), dist.group.WORLD)
    batches = _batches(samples, job, rank, 2, N + NEXT)
    for b in batches[:N]:
        _step(model, opt, b)
    checkpoint.save(model, out + "/ckpt", job.to_dict(), "", {}, opt, {"epoch": 0, "step": N, "world_size": 2})
    full = gather_full_state(model)
    momentum = _item_momentum(opt)
    with torch.no_grad():
        model.eval()
        pred = model(make_collator(job)(samples.slice(0, 2 * B))).logits  # same rows on both ranks
        model.train()
    losses = [_step(model, opt, batches[N])]
    item1 = gather_full_state(model)[ITEM_W]  # after one more step
    losses += [_step(model, opt, b) for b in batches[N + 1:]]
    torch.save({"losses": losses, "pred": pred, "state": full, "momentum": momentum, "item1": item1},
               f"{out}/run.{rank}")
    dist.barrier()
    dist.destroy_process_group()


def _resume(rank, world, init_file, out, sharding, tag):
    """A fresh model (other seed) under `sharding` on `world` ranks, loaded from the checkpoint."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    samples, job = _job(sharding)
    torch.manual_seed(123)
    model, opt, _ = sharded_model(job, torch.device("cpu"), dist.group.WORLD)
    state = checkpoint.load(model, out + "/ckpt", opt)
    full = gather_full_state(model)
    momentum = _item_momentum(opt) if tag == "dp" else None  # the others may hold no or column shards
    with torch.no_grad():
        model.eval()
        pred = model(make_collator(job)(samples.slice(0, 2 * B))).logits
        model.train()
    losses, item1 = [], None
    if world == 2:
        batches = _batches(samples, job, rank, 2, N + NEXT)[N:]
        losses = [_step(model, opt, batches[0])]
        item1 = gather_full_state(model)[ITEM_W]
        losses += [_step(model, opt, b) for b in batches[1:]]
    torch.save({"losses": losses, "pred": pred, "state": full, "trainer": state, "momentum": momentum,
                "item1": item1}, f"{out}/{tag}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A directory holding `ckpt`, a checkpoint written by 2 ranks (row-wise item table), and the
    uninterrupted run's losses, state and predictions."""
    out = str(tmp_path_factory.mktemp("ckpt"))
    start_ranks(_train_and_save, (os.path.join(out, "pg0"), out), 2)
    return out


def test_resume_is_exact_and_checkpoints_reshard(saved):
    out = saved
    pg = lambda: os.path.join(out, f"pg{len(os.listdir(out))}")  # noqa: E731  fresh rendezvous file
    ref = [torch.load(f"{out}/run.{r}", weights_only=True) for r in range(2)]
    # 1. Same plan, same world: the next NEXT losses are exactly those of the uninterrupted run.
    start_ranks(_resume, (2, pg(), out, SAVE_PLAN, "same"), 2)
    same = [torch.load(f"{out}/same.{r}", weights_only=True) for r in range(2)]
    for r in range(2):
        assert same[r]["trainer"] == {"epoch": 0, "step": N, "world_size": 2}
        assert same[r]["losses"] == ref[r]["losses"], (same[r]["losses"], ref[r]["losses"])
    # 2. Other plan on 2 ranks, and 1 rank: tables gathered equal exactly, predictions within 1e-5.
    other = {"item": ["column_wise"], "cat": ["row_wise"], "user": ["table_wise"]}
    start_ranks(_resume, (2, pg(), out, other, "other"), 2)
    start_ranks(_resume, (1, pg(), out, {"item": ["table_wise"]}, "one"), 1)
    # data_parallel on CPU: every table replicated, its row-wise Adagrad state loaded from the fused one's
    dp = {t: ["data_parallel"] for t in ("item", "cat", "user")}
    start_ranks(_resume, (2, pg(), out, dp, "dp"), 2)
    for tag in ("other", "one", "dp"):
        got = torch.load(f"{out}/{tag}.0", weights_only=True)
        for name, want in ref[0]["state"].items():
            assert torch.equal(got["state"][name], want), (tag, name)
        gap = (got["pred"] - ref[0]["pred"]).abs().max()
        assert gap <= 1e-5, (tag, gap)
    # the fused row-wise Adagrad state, loaded into the replicated tables' optimiser: the same state,
    # and the next step moves the item table as the uninterrupted run's did (a fresh state would not)
    got = torch.load(f"{out}/dp.1", weights_only=True)
    assert ref[0]["momentum"].abs().sum() > 0 and torch.equal(got["momentum"], ref[0]["momentum"])
    moved = (ref[0]["item1"] - ref[0]["state"][ITEM_W]).abs().max()
    assert moved > 1e-4 and (got["item1"] - ref[0]["item1"]).abs().max() < 1e-3 * moved
    # Resuming under another plan continues training from the same point (not bit-exact: the
    # kernels sum gradients in another order), so the losses agree closely.
    for tag in ("other", "dp"):
        got = torch.load(f"{out}/{tag}.0", weights_only=True)["losses"]
        assert max(abs(a - b) for a, b in zip(got, ref[0]["losses"])) < 1e-3, tag


def _copy(src, run_dir, name, global_step):
    dst = os.path.join(run_dir, name)
    shutil.copytree(src, dst)
    state = {"epoch": 0, "step_in_epoch": global_step, "epoch_done": False, "global_step": global_step,
             "world_size": 2}
    with open(os.path.join(dst, checkpoint.STATE_FILE), "w") as f:
        json.dump(state, f)
    return dst


def test_newest_complete_checkpoint_is_found_and_torn_ones_are_named(saved, tmp_path):
    """A rerun resumes from the newest complete checkpoint on disk; a checkpoint missing one rank's
    shard, RNG state or trainer state, or with a torn DCP metadata file, is skipped and named."""
    src, run = os.path.join(saved, "ckpt"), tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray's file: not a checkpoint
    assert checkpoint.incomplete(src) is None
    old = _copy(src, run, "checkpoint_2026-01-01_00-00-00.000001", 10)
    new = _copy(src, run, "checkpoint_2026-01-01_00-00-05.000001", 20)
    assert checkpoint.latest(run, log=lambda _: None) == run / os.path.basename(new)
    # One rank's shard gone from the newest: the older one is used, and the message names the newest.
    os.remove(os.path.join(new, "__1_0.distcp"))
    said = []
    assert checkpoint.latest(run, log=said.append) == run / os.path.basename(old)
    assert len(said) == 1 and os.path.basename(new) in said[0] and "__1_0.distcp" in said[0], said
    # resolve(): a run directory means its newest complete checkpoint; a torn one named directly is refused.
    assert checkpoint.resolve(run, log=lambda _: None) == run / os.path.basename(old)
    with pytest.raises(ValueError, match="incomplete checkpoint.*__1_0.distcp"):
        checkpoint.resolve(new)
    # Every other way to be torn, on the older one too: then there is nothing to resume from.
    for damage, why in ((lambda d: os.remove(os.path.join(d, "rng_rank1.pt")), "rng_rank1.pt"),
                        (lambda d: open(os.path.join(d, ".metadata"), "wb").close(), "metadata unreadable"),
                        (lambda d: os.remove(os.path.join(d, checkpoint.STATE_FILE)), checkpoint.STATE_FILE)):
        shutil.rmtree(old)
        _copy(src, run, os.path.basename(old), 10)
        damage(old)
        said = []
        assert checkpoint.latest(run, log=said.append) is None
        assert any(os.path.basename(old) in line and why in line for line in said), (why, said)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpoint.resolve(run, log=lambda _: None)


def test_a_rerun_chooses_the_newest_complete_checkpoint_or_says_it_starts_afresh(saved, tmp_path):
    from lifelong.trainers.checkpoint import choose as choose_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    path, line = choose_checkpoint(str(run), registered=None)
    assert path is None and "training from scratch" in line and str(run) in line
    new = _copy(os.path.join(saved, "ckpt"), run, "checkpoint_2026-01-01_00-00-05.000001", 20)
    # Ray Train's controller never registered it (the race of a dying run): the scan still finds it.
    path, line = choose_checkpoint(str(run), registered=None)
    assert path == new and new in line
    os.remove(os.path.join(new, "__0_0.distcp"))
    path, line = choose_checkpoint(str(run), registered=new)
    assert path is None and "training from scratch" in line


def test_a_finished_run_is_known_from_its_newest_checkpoint_and_another_job_is_refused(saved, tmp_path):
    """What lets a rerun of a finished run report its metrics without starting a worker group."""
    run = tmp_path / "run"
    run.mkdir()
    assert checkpoint.finished(tmp_path / "absent", {}) is None
    path = _copy(os.path.join(saved, "ckpt"), run, "checkpoint_2026-01-01_00-00-05.000001", 20)
    job = checkpoint.read_job(path)
    assert checkpoint.finished(run, job) is None  # mid-epoch: epochs left
    with open(os.path.join(path, checkpoint.STATE_FILE), "w") as f:
        json.dump({"epoch": 0, "step_in_epoch": 20, "epoch_done": True, "global_step": 20, "world_size": 2}, f)
    with open(os.path.join(path, checkpoint.METRICS_FILE), "w") as f:
        json.dump({"valid_auc": 0.6}, f)
    found, metrics = checkpoint.finished(run, job)
    assert str(found) == path and metrics == {"valid_auc": 0.6, "global_step": 20}
    assert checkpoint.finished(run, {**job, "train": {**job["train"], "epochs": 2}}) is None  # one more to train
    with pytest.raises(ValueError, match=r"another job \(differs in \['model_config'\]\)"):
        checkpoint.finished(run, {**job, "model_config": {"k": 7}})


def test_saving_into_a_run_directory_keeps_the_newest_complete_checkpoints(tmp_path):
    """`save_in_run` (compare's runs inside one Ray Train run): every save is a new complete checkpoint
    of the run directory, the newest `keep` stay, and `latest` finds the newest."""
    from lifelong.trainers.model_setup import plain_model

    _, meta = tiny_samples()
    job = tiny_job("din", meta)
    model = plain_model(job)
    run = tmp_path / "run"
    for step in (1, 2, 3):
        path = checkpoint.save_in_run(model, run, job.to_dict(), "plan", {"step": step}, None,
                                      {"global_step": step, "epoch": 0, "epoch_done": False, "world_size": 1},
                                      keep=2)
        assert checkpoint.incomplete(path) is None and path.parent == run
    left = sorted(run.glob(checkpoint.CHECKPOINT_GLOB))
    assert len(left) == 2
    newest = checkpoint.latest(run, log=lambda _: None)
    assert json.loads((newest / checkpoint.METRICS_FILE).read_text()) == {"step": 3}
    assert sorted(json.loads((p / checkpoint.STATE_FILE).read_text())["global_step"] for p in left) == [2, 3]
