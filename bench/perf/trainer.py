"""Trainer overhead: `bench.train` vs a bare PyTorch loop on the same method, batch and data.

Both loops run the method's own loss on the same pre-collated batches; the bare loop has only
forward, backward and Adam. The harness adds EMA, per-example RNG, logging, LR ramp, checkpoint-free
bookkeeping. Timings alternate A/B over several repeats and report the median ratio.
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch


def _bare_loop(method, stage, batches, lr: float) -> float:
    params = [p for m in method.modules().values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    for m in method.modules().values():
        m.train()
    t0 = time.perf_counter()
    for b in batches:
        loss, _ = method.loss(b, stage)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def run_perf_trainer(args) -> int:
    from bench.config import load_run_config
    from bench.data.spec import build_dataset
    from bench.data.stream import make_loader
    from bench.method import build_method
    from bench.train import resolve_device, train

    device = resolve_device(args.device)
    torch.manual_seed(0)
    data = {"kind": "synthetic", "resolution": 32, "options": {"n": 4096}}
    method = build_method(args.method, args.preset).to(device)
    stage = method.stages()[0]
    data["resolution"] = max(stage.resolutions)
    images = args.batch * args.steps
    cfg = load_run_config(data={
        "method": args.method, "preset": args.preset, "data": data,
        "train": {"images": images, "batch": args.batch, "checkpoint_images": 10 ** 12, "log_images": 10 ** 12,
                  "warmup_images": 0, "progress": False, "device": str(device)}})
    ds = build_dataset(cfg.data)
    loader = make_loader(ds, seed=0, start=0, global_batch=args.batch, resolutions=stage.resolutions)
    batches = [b.to(device) for b, _ in zip(loader, range(args.steps))]
    for b in batches:
        b.rng = type(b.rng)(b.rng.seeds, device)
    _bare_loop(method, stage, batches[:3], cfg.train.lr)           # warm-up
    # The harness time is T(steps + warm) - T(warm): start-up (model build, FLOP count, loader) cancels.
    warm = 3
    short = cfg.model_copy(deep=True)
    short.train.images = args.batch * warm
    cfg.train.images = args.batch * (args.steps + warm)

    def timed_train(c) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            train(c, tmp)
            return time.perf_counter() - t0

    bare, harness = [], []
    for _ in range(args.repeats):
        bare.append(_bare_loop(method, stage, batches, cfg.train.lr))
        harness.append(timed_train(cfg) - timed_train(short))
    b, h = statistics.median(bare), statistics.median(harness)
    print(f"method {args.method}/{args.preset}, batch {args.batch}, {args.steps} steps, device {device}")
    print(f"bare PyTorch loop : {b:.3f} s  ({images / b:.1f} img/s)")
    print(f"bench.train       : {h:.3f} s  ({images / h:.1f} img/s)  (start-up subtracted)")
    print(f"overhead          : {100 * (h / b - 1):+.1f} % of step time")
    return 0
