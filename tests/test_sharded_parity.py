"""Sharded (2 gloo ranks, DMP) vs unsharded: same outputs before and after one training step."""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist

from lifelong.embeddings.state import gather_full_state, load_full_state
from lifelong.trainers.inputs import make_collator
from lifelong.trainers.local import local_optimizer
from lifelong.trainers.loop import EarlyStopping, lr_groups, unwrap
from lifelong.trainers.model_setup import plain_model, sharded_model
from lifelong.models.base import loss as ctr_loss
from tests.helpers import local_steps, start_ranks, tiny_job, tiny_samples, train_steps

WORLD = 2
ITEM = "sparse.embeddings.embeddings.item.weight"  # the item table's weights in a model's state dict
LR_DENSE, LR_SPARSE = 0.05, 200.0  # embedding grads are tiny: a large LR makes their step visible


def refresh(model):
    """Refresh the key cache of a model that has one (plain, or DMP on every rank)."""
    module = unwrap(model)
    if module.sparse.key_cache is not None:
        module.refresh_keys(chunk=50)  # small chunks: several collective lookups


def _reference(job, batch_table, halves):
    """Unsharded model, one SGD step with DMP's gradient semantics (see test docstring)."""
    torch.manual_seed(0)
    model = plain_model(job)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    collate = make_collator(job)
    refresh(model)
    before = model(collate(batch_table)).logits.detach()
    emb = model.sparse_parameters()
    cache = list(model.sparse.key_cache.parameters()) if model.sparse.key_cache is not None else []
    dense = [p for p in model.parameters() if all(p is not e for e in emb + cache)]
    # Each rank's loss is the mean over its half. DDP averages dense grads over ranks, and so does
    # TorchRec's sharded embedding backward: both equal grads of the mean of the two half-losses.
    loss = sum(ctr_loss(b, model(b)) for b in (collate(h) for h in halves))
    loss.backward()
    with torch.no_grad():
        for p in dense:
            p -= LR_DENSE * p.grad / WORLD
        for p in emb:
            p -= LR_SPARSE * p.grad / WORLD
    refresh(model)
    after = model(collate(batch_table)).logits.detach()
    return init, before, after, model.state_dict()


def _worker(rank, init_file, job, table, halves, init, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model, opt, _ = sharded_model(job, torch.device("cpu"), dist.group.WORLD)
    load_full_state(model, init)
    collate = make_collator(job)
    mine = collate(halves[rank])
    refresh(model)
    before = model(mine).logits.detach()
    loss = ctr_loss(mine, model(mine))
    opt.zero_grad()
    loss.backward()
    opt.step()
    refresh(model)
    after = model(mine).logits.detach()
    full = gather_full_state(model)
    if rank == 0:
        torch.save({"before": before, "after": after, "state": full}, out + ".0")
    else:
        torch.save({"before": before, "after": after}, out + ".1")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("model,sharding", [
    ("sim_hard", {"item": ["row_wise"], "cat": ["table_wise"]}),
    ("din", {"item": ["column_wise"], "cat": ["row_wise"]}),
    ("sim_soft", {"item": ["table_wise"], "search_item": ["row_wise"], "search_cat": ["table_wise"]}),
    ("twin", {"item": ["row_wise"], "cat": ["column_wise"], "user": ["row_wise"]}),
    # cached GSU keys: the cache tables follow their source's sharding; refreshed on both ranks
    ("twin+cache", {"item": ["row_wise"], "cat": ["table_wise"], "user": ["row_wise"]}),
    ("eta+cache", {"item": ["table_wise"], "cat": ["table_wise"]}),  # a rank may hold no cache rows
    ("lic+cache+dedup", {"item": ["column_wise"], "cat": ["row_wise"]}),
    # data_parallel: on CPU the collections are replicated under DDP (plan.Plan.replicated)
    ("sim_hard", {"item": ["data_parallel"], "cat": ["data_parallel"]}),
    ("twin+cache", {"item": ["data_parallel"], "cat": ["data_parallel"], "user": ["data_parallel"]}),
    ("sim_soft", {"item": ["row_wise"], "cat": ["table_wise"], "search_item": ["data_parallel"],
                  "search_cat": ["data_parallel"]}),
    # no constraints, tables under train.replicate_mb: every collection replicated, the key cache with its source
    ("twin+cache+auto", {}),
])
def test_sharded_equals_unsharded_after_one_step(model, sharding):
    samples, meta = tiny_samples()
    model, *opts = model.split("+")
    job = tiny_job(model, meta, {} if model == "din" else {"k": 6}, users=model == "twin",
                   sparse_optimizer="sgd", sparse_lr=LR_SPARSE, dense_optimizer="sgd", dense_lr=LR_DENSE,
                   key_cache_every=int("cache" in opts), dedup_ids="dedup" in opts,
                   replicate_mb=4.0 if "auto" in opts else 0.0)
    job = type(job)(**{**job.__dict__, "sharding": sharding})
    batch = samples.slice(0, 32)
    halves = [batch.slice(0, 16), batch.slice(16, 16)]
    init, ref_before, ref_after, ref_state = _reference(job, batch, halves)
    emb_step = (ref_state[ITEM] - init[ITEM]).abs().max()
    assert emb_step > 1e-2, f"embedding step {emb_step} too small for the test to see"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        start_ranks(_worker, (os.path.join(tmp, "pg"), job, batch, halves, init, out), WORLD)
        r0, r1 = torch.load(out + ".0", weights_only=True), torch.load(out + ".1", weights_only=True)
    got_before = torch.cat([r0["before"], r1["before"]])
    got_after = torch.cat([r0["after"], r1["after"]])
    assert torch.allclose(got_before, ref_before, atol=1e-5), (got_before - ref_before).abs().max()
    assert not torch.allclose(ref_before, ref_after, atol=1e-3), "the step must change the outputs"
    assert torch.allclose(got_after, ref_after, atol=1e-4), (got_after - ref_after).abs().max()
    for name, ref in ref_state.items():
        assert torch.allclose(r0["state"][name], ref, atol=1e-5), (name, (r0["state"][name] - ref).abs().max())


def _fused_steps(rank, init_file, job, init, tables, out, lr_scale=1.0):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=1)
    model, opt, _ = sharded_model(job, torch.device("cpu"), dist.group.WORLD)
    if lr_scale != 1.0:  # as after lr_decay on a plateau (both the fused and the dense optimiser)
        stopper = EarlyStopping(2, {"decays": 1}, lr_decay=lr_scale)
        stopper.set_lr(model, opt, [g["lr"] for g in lr_groups(model, opt)])
    load_full_state(model, init)
    train_steps(job, model, opt, tables)
    torch.save(gather_full_state(model), out)
    dist.destroy_process_group()


@pytest.mark.parametrize("sparse,lr_scale,l2", [("rowwise_adagrad", 1.0, 0.0), ("adagrad", 1.0, 0.0),
                                                 ("rowwise_adagrad", 0.25, 0.0), ("rowwise_adagrad", 1.0, 0.05)])
def test_local_trainer_steps_like_the_fused_sparse_optimiser(sparse, lr_scale, l2):
    """The in-process trainer and the DMP path train the same model: after 3 steps of row-wise (or
    per-element) Adagrad + Adam, every table and dense weight agrees. With lr_scale, the DMP run's
    rates are decayed through its optimiser's param groups (train.lr_decay's path) and must step
    like a local run configured with the decayed rates; with l2, both add train.embedding_l2."""
    samples, meta = tiny_samples()
    job = tiny_job("twin", meta, {"k": 6}, users=True, sparse_optimizer=sparse, sparse_lr=0.3 * lr_scale,
                   dense_lr=1e-2 * lr_scale, embedding_l2=l2)
    tables = [samples.slice(16 * i, 16) for i in range(3)]
    model, init = local_steps(job, tables)
    moved = (model.state_dict()[ITEM] - init[ITEM])
    assert moved.abs().max() > 1e-2
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "state")
        fused_job = replace(job, train=replace(job.train, sparse_lr=0.3, dense_lr=1e-2))
        start_ranks(_fused_steps, (os.path.join(tmp, "pg"), fused_job, init, tables, out, lr_scale), 1)
        got = torch.load(out, weights_only=True)
    for name, want in model.state_dict().items():
        assert torch.allclose(got[name], want, atol=1e-5), (name, (got[name] - want).abs().max())


def test_grad_clip_bounds_the_dense_step_and_leaves_the_tables_alone():
    """train.grad_clip clips the dense gradients' global norm only (what DMP's fused path can clip)."""
    from lifelong.trainers.loop import train_epoch

    samples, meta = tiny_samples()
    states = {}
    for clip in (0.0, 1e-3):
        job = tiny_job("din", meta, sparse_optimizer="sgd", sparse_lr=50.0, dense_optimizer="sgd", dense_lr=1.0,
                       grad_clip=clip)
        torch.manual_seed(0)
        model = plain_model(job)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        train_epoch(model, local_optimizer(job, model), [make_collator(job)(samples.slice(0, 32))],
                    torch.device("cpu"), show=False, grad_clip=job.train.grad_clip)
        states[clip] = {k: v - init[k] for k, v in model.state_dict().items()}  # the step
    tables = [k for k in states[0.0] if k.startswith("sparse.embeddings.")]
    dense = [k for k in states[0.0] if not k.startswith("sparse.embeddings.")]
    for k in tables:
        assert torch.equal(states[0.0][k], states[1e-3][k]), k
    norm = lambda st: torch.sqrt(sum((st[k] ** 2).sum() for k in dense))  # noqa: E731
    assert norm(states[0.0]) > 1e-2 and norm(states[1e-3]) <= 1e-3 * 1.0001


def _exchange_worker(rank, init_file, out):
    from torch.nn.parallel import DistributedDataParallel

    from lifelong.trainers.comm import exchange_mean_hook, use_exchange

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    grads = []
    for hook in (None, "shared memory", "all-to-all"):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(7, 300), torch.nn.Tanh(), torch.nn.Linear(300, 1))
        ddp = DistributedDataParallel(net, bucket_cap_mb=0.001)  # several buckets
        if hook == "all-to-all":
            ddp.register_comm_hook(dist.group.WORLD, exchange_mean_hook)
        elif hook:
            assert use_exchange(ddp, dist.group.WORLD) == hook  # two ranks on this host
        torch.manual_seed(1 + rank)  # each rank its own batch
        for _ in range(3):  # DDP rebuilds its buckets after the first step
            ddp.zero_grad()
            ddp(torch.randn(5, 7)).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    torch.save(grads, f"{out}.{rank}")
    dist.destroy_process_group()


def test_exchange_hooks_average_like_ddps_all_reduce():
    """Two gloo ranks: DDP with either exchange (`comm.NodeExchange` through shared memory, or
    `comm.exchange_mean_hook`'s all-to-all) leaves every gradient exactly as DDP's own all-reduce
    does (the mean over ranks), on both ranks alike."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "g")
        start_ranks(_exchange_worker, (os.path.join(tmp, "pg"), out), WORLD)
        (plain0, shm0, a2a0), (plain1, shm1, a2a1) = (torch.load(f"{out}.{r}", weights_only=True)
                                                      for r in range(WORLD))
    for grads in zip(plain0, shm0, a2a0, plain1, shm1, a2a1):
        assert all(torch.equal(grads[0], g) for g in grads[1:])
    assert any(not torch.equal(a, torch.zeros_like(a)) for a in shm0)
