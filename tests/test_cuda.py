"""CUDA: every model's forward and backward on the GPU equal the CPU's, and TorchRec DMP over nccl
with fbgemm-gpu's CUDA kernels (fused Adagrad in the backward) trains like the in-process CPU
trainer under every sharding type. Skipped without a GPU: CI has none; `benchmarks/gpu_check.sh`
runs this file on a GPU machine."""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist

from lifelong.embeddings.plan import describe
from lifelong.embeddings.state import gather_full_state, load_full_state
from lifelong.models.base import loss as ctr_loss
from lifelong.trainers.inputs import make_collator
from lifelong.trainers.model_setup import plain_model, sharded_model
from tests.helpers import local_steps, start_ranks, tiny_job, tiny_samples, train_steps
from tests.test_zoo import ALL, cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_float32():
    """Full float32 on the GPU (no TF32 in matmuls or cuDNN convolutions), as on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _step(model, batch):
    """Logits and every parameter's gradient of one forward and backward (DIEN's negatives drawn
    from the same host seed on either device)."""
    torch.manual_seed(1)
    model.zero_grad(set_to_none=True)
    out = model(batch)
    ctr_loss(batch, out).backward()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach().cpu(), grads


@pytest.mark.parametrize("name", ALL + ["sim_hard@collate", "eta+cache", "twin+cache+dedup", "lic+cache+dedup"])
def test_model_on_cuda_equals_cpu_forward_and_backward(name):
    samples, meta = tiny_samples()
    base, *opts = name.replace("@collate", "").split("+")
    config = {"k": 6} if name == "sim_hard@collate" else cfg(base)
    job = tiny_job(base, meta, config, key_cache_every=int("cache" in opts), dedup_ids="dedup" in opts)
    torch.manual_seed(0)
    cpu = plain_model(job)
    gpu = plain_model(job)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA)
    if cpu.sparse.key_cache is not None:
        cpu.refresh_keys()
        gpu.refresh_keys()
    batch = make_collator(job)(samples.slice(0, 48))
    want_logits, want_grads = _step(cpu, batch)
    got_logits, got_grads = _step(gpu, batch.to(CUDA))
    assert torch.allclose(got_logits, want_logits, atol=1e-4, rtol=1e-4), (got_logits - want_logits).abs().max()
    assert got_grads.keys() == want_grads.keys()
    assert any(g.abs().max() > 0 for g in want_grads.values())
    for n, want in want_grads.items():
        scale = want.abs().max().clamp(min=1e-3)
        assert torch.allclose(got_grads[n], want, atol=1e-4 * scale, rtol=1e-3), (n, (got_grads[n] - want).abs().max())


def _fused_steps(rank, init_file, job, init, tables, out):
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=1)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model, opt, plan = sharded_model(job, CUDA, dist.group.WORLD)
    load_full_state(model, init)
    train_steps(job, model, opt, tables, CUDA)
    torch.save({"state": gather_full_state(model), "plan": describe(plan)}, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise", "column_wise", "data_parallel", None])
def test_dmp_on_cuda_with_nccl_steps_like_the_local_cpu_trainer(sharding):
    """Three steps of row-wise Adagrad (fbgemm's fused CUDA kernel) + Adam on one nccl rank, each
    table forced to `sharding` (None: the planner's choice), end where the in-process CPU trainer's
    three steps end: every table and dense weight agrees."""
    samples, meta = tiny_samples()
    job = tiny_job("twin", meta, {"k": 6}, users=True, sparse_optimizer="rowwise_adagrad", sparse_lr=0.3,
                   dense_lr=1e-2)
    if sharding is not None:
        job = replace(job, sharding={t: [sharding] for t in ("item", "cat", "user")})
    tables = [samples.slice(16 * i, 16) for i in range(3)]
    model, init = local_steps(job, tables)
    item = "sparse.embeddings.embeddings.item.weight"
    assert (model.state_dict()[item] - init[item]).abs().max() > 1e-2
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "state")
        start_ranks(_fused_steps, (os.path.join(tmp, "pg"), job, init, tables, out), 1)
        got = torch.load(out, weights_only=True)
    for table in ("item", "cat", "user"):
        line = next(x for x in got["plan"].splitlines() if f".{table}: " in x)
        assert sharding is None or f": {sharding} (" in line, got["plan"]
    for name, want in model.state_dict().items():
        assert torch.allclose(got["state"][name], want, atol=1e-4), (name, (got["state"][name] - want).abs().max())
