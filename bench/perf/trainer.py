"""`bench perf trainer`: the training loop's cost, measured side by side in one command.

- overhead: `bench.train` vs a bare PyTorch loop (forward, backward, Adam) on the same method, batch and
  pre-collated data; timings alternate A/B over several repeats, start-up subtracted, median ratio;
- breakdown_ms: one step split into data / forward_backward / grad_sync / optimizer / ema, timed with the
  trainer's own pieces (device synchronised between phases, so only here, never in training);
- scalar_reads_per_step: device-to-host reads (``aten._local_scalar_dense`` — what ``.item()``, ``bool()``,
  ``float()`` of a tensor dispatch to — plus ``Tensor.tolist``) inside each step of a real `bench.train`
  run, on non-log steps and on sync (log / checkpoint) steps;
- scaling_2_ranks: 2-rank gloo throughput / (2 × 1-rank throughput), equal per-rank batch, one thread per
  rank, both measured in this command;
- peak_memory_bytes (CUDA: max allocated; CPU: peak RSS of the process), flops_per_image, mfu
  (achieved FLOP/s / the device's dense bf16 peak; null on CPU or an unknown GPU without --peak-flops).
"""
from __future__ import annotations

import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, most specific first (vendor data sheets).
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12), ("A100", 312e12),
             ("L40S", 362e12), ("L40", 181e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12),
             ("RTX 3090", 71e12), ("V100", 125e12), ("MI300X", 1307e12), ("MI250", 362e12)]


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16 if k in name), None)


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss"


class ScalarReads(TorchDispatchMode):
    """Counts device-to-host reads while ``on``: ``aten._local_scalar_dense`` and ``Tensor.tolist``
    (which reads without dispatching that op)."""

    def __init__(self) -> None:
        super().__init__()
        self.n, self.on = 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on and func is torch.ops.aten._local_scalar_dense.default:
            self.n += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        mode = self

        def tolist(t, *a, **k):
            if mode.on:
                mode.n += 1
            return mode._tolist(t, *a, **k)
        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


def count_scalar_reads(cfg, run_dir: str | Path) -> dict[str, Any]:
    """Run `bench.train` on ``cfg`` and count host reads per step, split by sync / non-sync steps."""
    from bench import train as T

    mode, steps = ScalarReads(), []

    def hook(event: str, images: int, synced: bool) -> None:
        if event == "start":
            mode.n, mode.on = 0, True
        else:
            mode.on = False
            steps.append((images, synced, mode.n))

    T.STEP_HOOKS.append(hook)
    try:
        with mode:
            T.train(cfg, run_dir)
    finally:
        T.STEP_HOOKS.remove(hook)
    plain = [n for _, s, n in steps if not s]
    synced = [n for _, s, n in steps if s]
    return {"steps": len(steps), "non_sync_steps": len(plain), "sync_steps": len(synced),
            "per_non_sync_step_max": max(plain, default=0), "per_non_sync_step_mean": statistics.fmean(plain or [0]),
            "per_sync_step_max": max(synced, default=0), "per_step": steps}


# ---- timing --------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _run_config(args, device: torch.device, images: int, batch: int | None = None, threads: int | None = None):
    from bench.config import load_run_config
    from bench.method import build_method

    m = build_method(args.method, args.preset)
    stage = m.stages()[0]
    opts: dict[str, Any] = {"n": 4096, "num_classes": m.config.num_classes or 0}
    if m.config.conditioning == "text":
        opts["text_dim"] = m.config.text_dim
    data = {"kind": "synthetic", "resolution": m.config.resolution, "options": opts}
    return load_run_config(data={
        "method": args.method, "preset": args.preset, "data": data, "stage_images": None,
        "train": {"images": images, "batch": batch or args.batch, "checkpoint_images": 10 ** 12,
                  "log_images": args.log_images, "warmup_images": 0, "progress": False, "device": str(device),
                  "threads": threads}})


def breakdown(args, device: torch.device, steps: int) -> dict[str, float]:
    """Median ms per phase of one step, with the trainer's optimizer and EMA."""
    from bench.data.spec import build_dataset
    from bench.data.stream import make_loader
    from bench.ema import EMA
    from bench.method import build_method
    from bench.train import build_optimizer, device_batches

    cfg = _run_config(args, device, args.batch * steps)
    torch.manual_seed(0)
    method = build_method(args.method, args.preset).to(device)
    stage = method.stages()[0]
    opt, params = build_optimizer(method, stage, cfg)
    ema = EMA(method, cfg.train.ema_halflife_kimg, cfg.train.ema_rampup, modules=stage.trainable)
    loader = device_batches(make_loader(build_dataset(cfg.data), seed=0, start=0, global_batch=args.batch,
                                        resolutions=stage.resolutions), device)
    phases: dict[str, list[float]] = collections.defaultdict(list)
    images = 0
    for step in range(steps + 2):
        marks = [time.perf_counter()]

        def mark() -> None:
            _sync(device)
            marks.append(time.perf_counter())
        b = next(loader)
        mark()
        loss, _ = method.loss(b, stage)
        loss.backward()
        mark()
        mark()                                   # grad sync: none on one rank (see scaling_2_ranks)
        opt.step()
        opt.zero_grad(set_to_none=True)
        mark()
        images += args.batch
        ema.update(method, args.batch, images)
        mark()
        if step >= 2:                            # two warm-up steps
            for name, a, b_ in zip(("data", "forward_backward", "grad_sync", "optimizer", "ema"), marks, marks[1:]):
                phases[name].append(1000 * (b_ - a))
    return {k: statistics.median(v) for k, v in phases.items()}


_RANK_CHILD = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import torch
from bench import train as T
from bench.config import load_run_config
cfg = load_run_config(data=json.loads({cfg!r}))
marks = []
T.STEP_HOOKS.append(lambda ev, images, synced: marks.append((ev, images, time.perf_counter())))
T.train(cfg, {run!r})
starts = [m for m in marks if m[0] == "start"]; ends = [m for m in marks if m[0] == "end"]
w = {warm}
t = ends[-1][2] - starts[w][2]; n = ends[-1][1] - starts[w][1]
if int(os.environ.get("RANK", "0")) == 0:
    json.dump({{"seconds": t, "images": n + cfg.train.batch}}, open({out!r}, "w"))
"""


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed_ranks(cfg, world: int, warm: int, timeout: float = 600) -> float:
    """Global img/s of `bench.train` on ``world`` gloo ranks (one thread each), warm-up steps excluded."""
    root = str(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        code = _RANK_CHILD.format(root=root, cfg=json.dumps(cfg.model_dump(mode="json")), run=os.path.join(tmp, "run"),
                                  warm=warm, out=out)
        port, procs = _free_port(), []
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
            if world == 1:
                for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                    env.pop(k)
            procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError("rank failed:\n" + "\n".join(o[-2000:] for o in logs))
        r = json.load(open(out))
    # images counted from the first timed step's start to the last step's end (the warm steps excluded)
    return (r["images"] - cfg.train.batch) / r["seconds"]


def scaling_2_ranks(args, device: torch.device) -> dict[str, float] | None:
    if device.type != "cpu":
        return None     # the gloo comparison is a CPU check; on GPUs measure with torchrun on the cluster
    warm, steps = 3, args.scaling_steps
    one = _run_config(args, device, args.batch * (steps + warm + 1), batch=args.batch, threads=1)
    two = _run_config(args, device, 2 * args.batch * (steps + warm + 1), batch=2 * args.batch, threads=1)
    r1 = _timed_ranks(one, 1, warm)
    r2 = _timed_ranks(two, 2, warm)
    return {"one_rank_img_per_s": r1, "two_ranks_img_per_s": r2, "scaling": r2 / (2 * r1)}


def run_perf_trainer(args) -> int:
    from bench.data.spec import build_dataset
    from bench.data.stream import make_loader
    from bench.method import build_method
    from bench.train import resolve_device, train

    device = resolve_device(args.device)
    torch.manual_seed(0)
    method = build_method(args.method, args.preset).to(device)
    stage = method.stages()[0]
    cfg = _run_config(args, device, args.batch * args.steps)
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
            _sync(device)
            t0 = time.perf_counter()
            train(c, tmp)
            _sync(device)
            return time.perf_counter() - t0

    bare, harness = [], []
    images = args.batch * args.steps
    say = _progress(args)
    for i in range(args.repeats):
        say(f"overhead: repeat {i + 1}/{args.repeats}")
        bare.append(_bare_loop(method, stage, batches, cfg.train.lr))
        harness.append(timed_train(cfg) - timed_train(short))
    b, h = statistics.median(bare), statistics.median(harness)
    say("scalar reads per step")
    with tempfile.TemporaryDirectory() as tmp:
        reads = count_scalar_reads(_run_config(args, device, args.batch * 8), tmp)
    say("breakdown")
    phases = breakdown(args, device, args.breakdown_steps)
    scaling = None
    if not args.no_scaling:
        say("2-rank scaling (gloo)")
        scaling = scaling_2_ranks(args, device)
    from bench.flops import training_flops
    flops = training_flops(method, stage)
    mem, mem_kind = peak_memory(device)
    peak = peak_flops(device, args.peak_flops)
    img_s = images / h
    result = {
        "method": args.method, "preset": args.preset, "batch": args.batch, "steps": args.steps,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "bare_img_per_s": images / b, "img_per_s": img_s, "overhead": h / b - 1,
        "breakdown_ms": phases,
        "scalar_reads_per_step": reads["per_non_sync_step_max"],
        "scalar_reads_per_sync_step": reads["per_sync_step_max"],
        "scaling_2_ranks": None if scaling is None else scaling["scaling"], "scaling_detail": scaling,
        "peak_memory_bytes": mem, "peak_memory_kind": mem_kind,
        "flops_per_image": flops, "peak_flops": peak, "mfu": None if peak is None else flops * img_s / peak,
    }
    print(f"method {args.method}/{args.preset}, batch {args.batch}, {args.steps} steps, device {device}")
    print(f"bare PyTorch loop : {b:.3f} s  ({images / b:.1f} img/s)")
    print(f"bench.train       : {h:.3f} s  ({img_s:.1f} img/s)  (start-up subtracted)")
    print("breakdown (ms)    : " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    print(f"host reads / step : {reads['per_non_sync_step_max']} on non-log steps, "
          f"{reads['per_sync_step_max']} on log/checkpoint steps")
    if scaling:
        print(f"2-rank scaling    : {scaling['scaling']:.3f} ({scaling['two_ranks_img_per_s']:.1f} img/s on 2 ranks vs "
              f"{scaling['one_rank_img_per_s']:.1f} on 1, one thread each)")
    mfu = "n/a" if peak is None else f"{100 * result['mfu']:.1f} %"
    print(f"peak memory       : {mem / 2 ** 20:.0f} MiB ({mem_kind}); FLOPs/image {flops:.3e}; MFU {mfu}")
    print(f"overhead          : {100 * (h / b - 1):+.1f} % of step time")
    if args.json:
        from bench.io import atomic_write_json
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _progress(args) -> Callable[[str], None]:
    return (lambda msg: print(f"[perf trainer] {msg}", file=sys.stderr, flush=True)) if not args.quiet else \
        (lambda msg: None)
