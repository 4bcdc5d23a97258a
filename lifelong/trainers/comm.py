"""DDP's gradient all-reduce for CPU ranks, as a DDP communication hook.

- All ranks on one host: `NodeExchange`, through memory the ranks share.
- Two ranks on different hosts: `exchange_mean`, one gloo all-to-all.
- Otherwise DDP's own all-reduce.

No `from __future__ import annotations`: DDP checks the hook's annotations as objects."""

import logging
import os
import select
import socket
import time
import uuid
import weakref
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

# bound here: shard-bench counts TorchRec's all-to-alls by patching `dist.all_to_all_single`; this
# one is DDP's gradient exchange, which it counts as the all-reduce payload
_all_to_all_single = dist.all_to_all_single
CHUNK = 2**20  # floats a rank writes per round of `NodeExchange` (4 MB; the mapped file holds 2 x W of them)
DEFAULT_TIMEOUT_S = 1800.0  # torch's default for gloo groups, when the group's own is not readable


def exchange_mean(pg: dist.ProcessGroup, buf: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    """The ranks' mean of `buf` (1-D): every rank sends its whole buffer to the others in one
    all-to-all and sums the W copies in rank order (the same sum, bit for bit, on every rank).
    Gloo's ring all-reduce takes several round trips; for two ranks this moves the same bytes in
    one (0.76 MB: ~1.0 vs ~2.2 ms on this repository's 2-core machine)."""
    world = dist.get_world_size(pg)
    out = torch.empty(world * buf.numel(), dtype=buf.dtype, device=buf.device)
    sent = buf.repeat(world)  # (W * n,) one copy for each rank
    fut = _all_to_all_single(out, sent, group=pg, async_op=True).get_future()
    return fut.then(lambda _: out.view(world, -1).sum(0).div_(world))  # (W, n) -> (n,)


def exchange_mean_hook(pg: dist.ProcessGroup, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's communication hook: `exchange_mean` of the bucket's gradients."""
    return exchange_mean(pg, bucket.buffer())


def host_id() -> str:
    """This host, as every process on it sees it (the kernel's boot id where there is one)."""
    boot = Path("/proc/sys/kernel/random/boot_id")
    return f"{socket.gethostname()}/{boot.read_text().strip() if boot.exists() else ''}"


def group_timeout_s(pg: dist.ProcessGroup) -> float:
    """The group's collective timeout (seconds), or torch's default for gloo if it cannot be read."""
    try:
        return pg._get_backend(torch.device("cpu")).options._timeout.total_seconds()
    except (AttributeError, RuntimeError):
        return DEFAULT_TIMEOUT_S


class NodeExchange:
    """The ranks' mean of 1-D float32 CPU buffers, for a group whose ranks all run on one host.

    Each rank writes its buffer into its slot of a file every rank maps (`/dev/shm`), tells each
    peer through the peer's FIFO, waits for every peer's word, and sums the W slots in rank order:
    the same sum, bit for bit, on every rank, in the calling thread, with no socket and no thread
    of gloo's in between. Buffers longer than `CHUNK` go in rounds. Two slot sets alternate, so a
    rank that is a round ahead never overwrites a slot a peer still reads. A peer silent for the
    group's timeout raises `TimeoutError`, one that has exited `RuntimeError` within a second (as
    gloo's closed socket would). The files are unlinked once every rank holds them open. Build with
    `open`."""

    def __init__(self, rank: int, world: int, slots: torch.Tensor, inbox: int, outboxes: list[int],
                 peers: dict[int, int], timeout_s: float) -> None:
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.peers = peers  # rank -> pid
        self.slots = slots  # (2, W, chunk) float32, shared
        self.chunk = slots.shape[2]
        self.inbox, self.outboxes = inbox, outboxes
        self.rounds = 0
        self._close = weakref.finalize(self, _close_fds, [inbox, *outboxes])

    @classmethod
    def open(cls, pg: dist.ProcessGroup, timeout_s: Optional[float] = None) -> Optional["NodeExchange"]:
        """The exchange among `pg`'s ranks (a collective: every rank calls it), or None on every rank
        when they do not all run on this host or its shared-memory folder lacks room."""
        rank, world = dist.get_rank(pg), dist.get_world_size(pg)
        folder = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path("/tmp")
        floats = 2 * world * CHUNK  # (2, W, CHUNK): two slot sets
        size = 4 * floats
        stat = os.statvfs(folder)
        seen: list = [None] * world
        dist.all_gather_object(seen, (host_id(), stat.f_bavail * stat.f_frsize >= 2 * size,
                                      f"lifelong-exchange-{uuid.uuid4().hex}", os.getpid()), group=pg)
        if len({s[0] for s in seen}) > 1 or not all(s[1] for s in seen):
            return None
        base = folder / seen[0][2]  # rank 0's name
        paths = [Path(f"{base}.{r}") for r in range(world)]
        if rank == 0:
            fd = os.open(base, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, size)
            os.close(fd)
        os.mkfifo(paths[rank], 0o600)
        # read end opened read-write: the FIFO always has a writer, so a read never sees end-of-file
        inbox = os.open(paths[rank], os.O_RDWR | os.O_NONBLOCK)
        dist.barrier(group=pg)
        # one host, yet not one shared-memory folder (e.g. containers on one kernel): no exchange
        visible: list = [None] * world
        dist.all_gather_object(visible, all(p.exists() for p in [base, *paths]), group=pg)
        if all(visible):
            slots = torch.from_file(str(base), shared=True, size=floats, dtype=torch.float32).view(2, world, CHUNK)
            outboxes = [os.open(paths[r], os.O_WRONLY) for r in range(world) if r != rank]
        dist.barrier(group=pg)  # every rank holds every file open
        paths[rank].unlink()
        if rank == 0:
            base.unlink()
        if not all(visible):
            os.close(inbox)
            return None
        peers = {r: s[3] for r, s in enumerate(seen) if r != rank}
        return cls(rank, world, slots, inbox, outboxes, peers, timeout_s or group_timeout_s(pg))

    def mean_(self, buf: torch.Tensor) -> torch.Tensor:
        """`buf` (1-D float32, CPU) replaced by the ranks' mean of it; returns it."""
        if buf.dtype != torch.float32 or buf.device.type != "cpu" or buf.dim() != 1:
            raise ValueError(f"NodeExchange averages 1-D float32 CPU buffers, not {buf.dtype} "
                             f"{tuple(buf.shape)} on {buf.device}")
        for start in range(0, buf.numel(), self.chunk):
            part = buf[start:start + self.chunk]
            slots = self.slots[self.rounds % 2, :, :part.numel()]  # (W, n) this round's slot set
            self.rounds += 1
            slots[self.rank].copy_(part)
            for fd in self.outboxes:
                os.write(fd, b"\0")
            self._wait()
            torch.sum(slots, 0, out=part).div_(self.world)  # (W, n) -> (n,) in rank order
        return buf

    def _wait(self) -> None:
        """Until W - 1 more bytes came: this round's, from every peer. Bytes carry no sender, so a fast
        peer's next-round byte may stand in for a slow one's; still no rank can count r rounds' bytes
        before every peer has written its round-r slot (each writes it before its byte, one byte a
        round to each peer), so the slots summed next are complete. Later bytes stay queued."""
        missing, deadline = self.world - 1, time.monotonic() + self.timeout_s
        while missing:
            try:
                missing -= len(os.read(self.inbox, missing))
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"rank {self.rank}: {missing} of {self.world - 1} peer(s) did not reach "
                                       f"gradient exchange round {self.rounds} in {self.timeout_s:g} s") from None
                if not select.select([self.inbox], [], [], min(left, 1.0))[0]:
                    gone = [f"rank {r} (pid {pid})" for r, pid in self.peers.items() if not _alive(pid)]
                    if gone:
                        raise RuntimeError(f"rank {self.rank}: {', '.join(gone)} exited before gradient "
                                           f"exchange round {self.rounds}") from None

    def close(self) -> None:
        self._close()


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (not exited, nor a zombie awaiting its parent)."""
    if os.path.isdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def node_exchange_hook(ex: NodeExchange, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's communication hook: the bucket's gradients averaged in place through `ex`."""
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(ex.mean_(bucket.buffer()))
    return fut


def use_exchange(model: torch.nn.Module, pg: dist.ProcessGroup) -> Optional[str]:
    """Give each DDP module inside `model` a gloo group's faster exchange: `NodeExchange` when all
    ranks run on one host, else `exchange_mean` for two ranks (else DDP's all-reduce stays). Returns
    which ("shared memory", "all-to-all") or None. A collective where `pg` is gloo: every rank calls it."""
    ddps = [m for m in model.modules() if isinstance(m, DistributedDataParallel)]
    if not ddps or dist.get_world_size(pg) < 2 or dist.get_backend(pg) != "gloo":
        return None
    float32 = all(p.dtype == torch.float32 for m in ddps for p in m.parameters() if p.requires_grad)
    ex = NodeExchange.open(pg) if float32 else None
    if ex is not None:
        state, hook, kind = ex, node_exchange_hook, "shared memory"
    elif dist.get_world_size(pg) == 2:
        state, hook, kind = pg, exchange_mean_hook, "all-to-all"
    else:
        return None
    for m in ddps:
        m.register_comm_hook(state, hook)
    log.info("gradient exchange of %d DDP module(s): %s", len(ddps), kind)
    return kind
