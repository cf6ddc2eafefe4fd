"""torch.distributed for the trainer: a process-group lifecycle that always ends cleanly, and gradient
averaging that overlaps backward.

Process group. ``distributed(device)`` initialises the group when WORLD_SIZE > 1 and destroys it on the
way out — after a barrier on success, so no rank leaves (and tears down its gloo threads) while another
still talks to it, and without one on an error, so a failing rank never waits for a peer that is gone.
A group left alive at interpreter exit is what made ranks abort with "terminate called without an
active exception" (SIGABRT, exit -6) after a complete run, marking finished SLURM jobs FAILED.

Gradient sync. Methods call their networks in their own ways (nested, several times per loss, through
frozen teachers), so the networks cannot all be wrapped in torch's DistributedDataParallel. ``GradSync``
does what DDP's reducer does, through ``register_post_accumulate_grad_hook``: the trainable parameters
are packed in reverse order into buckets (≈ ``bucket_mb`` each, backward produces gradients roughly in
that order), each parameter's ``.grad`` becomes a view into its bucket after the first step (no extra
copy of the gradients), and a bucket's asynchronous all-reduce starts as soon as its last gradient is
accumulated — while backward continues. Buckets always launch in index order, so every rank issues the
same sequence of collectives. ``no_sync()`` switches the hooks off for all but the last micro-step of an
accumulation round. Parameters that a stage never uses (no gradient on the first step) are left out of
the buckets and keep ``grad = None``, exactly as in one process; which parameters are used is checked to
agree across ranks once, on the first step.
"""
from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
            else torch.device("cpu")
    return torch.device(name)


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[tuple[int, int]]:
    """(rank, world) inside; a group this context created is destroyed on exit, whatever happens."""
    world = world_from_env()
    if world <= 1:
        yield 0, 1
        return
    owned = not dist.is_initialized()
    if owned:
        timeout = timedelta(seconds=float(os.environ.get("BENCH_DIST_TIMEOUT_S", "1800")))
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout, **kw)
    ok = False
    try:
        yield dist.get_rank(), dist.get_world_size()
        ok = True
    finally:
        if owned and dist.is_initialized():
            try:
                if ok:
                    dist.barrier()
            finally:
                dist.destroy_process_group()


def agree_max(values: list[float], device: torch.device, world: int) -> list[float]:
    """Element-wise max over ranks of a few flags, in one collective and one host read."""
    t = torch.tensor(values, dtype=torch.float32, device=device)
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


class _Bucket:
    def __init__(self, params: list[torch.nn.Parameter], device: torch.device, dtype: torch.dtype):
        self.params = params
        self.buffer = torch.zeros(sum(p.numel() for p in params), device=device, dtype=dtype)
        self.views: list[torch.Tensor] = []
        off = 0
        for p in params:
            self.views.append(self.buffer[off:off + p.numel()].view_as(p))
            off += p.numel()
        self.pending = len(params)
        self.work = None


class GradSync:
    """Average the gradients of ``params`` over ranks, overlapped with backward (see the module docstring).

    Use: ``with sync.no_sync(): backward()`` for all but the last micro-step, ``backward()`` for the
    last, then ``sync.finish()`` before reading gradients (clipping, the optimizer step).
    """

    def __init__(self, params: list[torch.nn.Parameter], world: int, bucket_mb: float = 25.0):
        self.params, self.world = [p for p in params if p.requires_grad], world
        self.bucket_bytes = int(bucket_mb * 2 ** 20)
        self.buckets: list[_Bucket] | None = None     # built after the first step, from what it used
        self.index: dict[int, tuple[int, int]] = {}   # id(param) -> (bucket, slot)
        self.enabled = True
        self.next_launch = 0
        self.handles = []

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        old, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = old

    # ---- first step: find the used parameters, build buckets, reduce synchronously -------------------
    def _build(self) -> None:
        used = torch.tensor([p.grad is not None for p in self.params], dtype=torch.int32,
                            device=self.params[0].device if self.params else "cpu")
        seen = used.clone()
        dist.all_reduce(seen)          # once per stage: every rank must use the same parameters
        if not torch.equal(seen, used * self.world):
            raise RuntimeError("ranks use different parameters in the same stage; gradient sync needs a "
                               "data-independent set of used parameters")
        live = [p for p, u in zip(self.params, used.tolist()) if u]
        self.buckets, group, size = [], [], 0
        for p in reversed(live):       # backward yields the last layers' gradients first
            group.append(p)
            size += p.numel() * p.element_size()
            if size >= self.bucket_bytes:
                self.buckets.append(_Bucket(group, p.device, p.dtype))
                group, size = [], 0
        if group:
            self.buckets.append(_Bucket(group, group[0].device, group[0].dtype))
        for b, bucket in enumerate(self.buckets):
            for s, (p, view) in enumerate(zip(bucket.params, bucket.views)):
                self.index[id(p)] = (b, s)
                view.copy_(p.grad)
                p.grad = view          # from now on backward accumulates straight into the bucket
                self.handles.append(p.register_post_accumulate_grad_hook(self._ready))

    def _ready(self, p: torch.nn.Parameter) -> None:
        if not self.enabled:
            return
        b, _ = self.index[id(p)]
        bucket = self.buckets[b]
        bucket.pending -= 1
        while self.next_launch < len(self.buckets) and self.buckets[self.next_launch].pending == 0:
            nxt = self.buckets[self.next_launch]
            nxt.work = dist.all_reduce(nxt.buffer, async_op=True)
            self.next_launch += 1

    def _rebind(self) -> None:
        """Put the bucket views back as .grad where something (zero_grad(set_to_none)) replaced them."""
        for bucket in self.buckets:
            for p, view in zip(bucket.params, bucket.views):
                if p.grad is None:
                    view.zero_()
                    p.grad = view
                elif p.grad.data_ptr() != view.data_ptr():
                    view.copy_(p.grad)
                    p.grad = view

    def finish(self) -> None:
        """Wait for every bucket's all-reduce and divide by the world size."""
        if self.world <= 1 or not self.params:
            return
        if self.buckets is None:
            self._build()
            for bucket in self.buckets:
                dist.all_reduce(bucket.buffer)
                bucket.buffer.div_(self.world)
        else:
            for bucket in self.buckets[self.next_launch:]:   # not launched: a hook did not fire
                bucket.work = dist.all_reduce(bucket.buffer, async_op=True)
            for bucket in self.buckets:
                bucket.work.wait()
                bucket.buffer.div_(self.world)
        self._reset()

    def _reset(self) -> None:
        self.next_launch = 0
        for bucket in self.buckets:
            bucket.pending, bucket.work = len(bucket.params), None

    def zero_grad(self) -> None:
        """Zero the gradients in place (their storage is the buckets')."""
        if self.buckets is None:
            for p in self.params:
                p.grad = None
            return
        self._rebind()
        for bucket in self.buckets:
            bucket.buffer.zero_()

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
