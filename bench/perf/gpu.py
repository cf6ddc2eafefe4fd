"""`bench perf gpu`: every method's paper preset at its real resolution on one CUDA device.

Per method (and per compile mode): the stage at the preset's full resolution (all earlier stages' enter
hooks run first, so grown / nested networks are built), a fixed number of timed training steps —
forward + backward under bf16 autocast, the trainer's fused Adam, the trainer's EMA — after warm-up
steps, on synthetic batches of the right shapes. Reports img/s, MFU (measured FLOPs per image × img/s /
the device's dense bf16 peak), and peak memory. On a machine without CUDA it runs the same code on the
`cpu-tiny` presets (fp32, tiny batch, compile off) so CI keeps it working; those numbers are not GPU
numbers and the JSON says so.

Results are written after every method (atomically), so a run cut short keeps what it measured; a
time budget skips what would not fit (recorded as skipped, never guessed).
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import torch

# The preset each method's paper numbers come from (its real resolution) and a per-GPU batch that fits an
# 80–141 GB device with the full training state (params, grads, Adam, EMA) for the largest of them.
PAPER = {"edm": ("imagenet64", 64), "simple": ("imagenet256", 16), "mdm": ("imagenet256", 32),
         "relay": ("imagenet256", 16), "greedy": ("cc12m256", 16), "cd": ("imagenet64", 32),
         "ct": ("imagenet64", 32), "ict": ("imagenet64", 64), "cdec": ("sd", 16)}
CPU = ("cpu-tiny", 4)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench perf gpu")
    p.add_argument("--methods", default="all", help="comma-separated names (default: every registered method)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default: 10 on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 3 on CUDA, 1 on CPU)")
    p.add_argument("--compile", default=None, choices=["both", "on", "off"],
                   help="compile modes to measure (default: both on CUDA, off on CPU)")
    p.add_argument("--batch", type=int, default=None, help="override every method's batch")
    p.add_argument("--preset", action="append", default=[], metavar="METHOD=PRESET", help="override a preset")
    p.add_argument("--time-budget", type=float, default=285.0, help="seconds; methods that would not fit are skipped")
    p.add_argument("--peak-flops", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default="perf_gpu.json", metavar="FILE")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, preset: str, batch: int, device: torch.device, compile_: bool, steps: int, warmup: int,
            peak: float | None) -> dict[str, Any]:
    from bench.config import TrainConfig
    from bench.ema import EMA
    from bench.method import build_method
    from bench.train import build_optimizer

    torch.manual_seed(0)
    method = build_method(name, preset)
    stages = method.stages()
    for s in stages:                       # build the full-resolution model (grown / nested)
        if s.enter:
            s.enter()
    stage = stages[-1]
    method.to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
        if any(isinstance(x, torch.nn.Conv2d) for m in method.modules().values() for x in m.modules()):
            for m in method.modules().values():
                m.to(memory_format=torch.channels_last)
    from bench.flops import training_flops
    flops = training_flops(method, stage)
    if compile_:
        for m in method.modules().values():
            m.compile()

    class _Cfg:                            # what build_optimizer reads
        train = TrainConfig(lr=1e-4)
    opt, params = build_optimizer(method, stage, _Cfg)
    mods = method.modules()
    trainable = set(stage.trainable) if stage.trainable is not None else set(mods)
    for n, m in mods.items():
        m.train(n in trainable)
    ema = EMA(method, [10.0], None, modules=stage.trainable)
    autocast = device.type == "cuda"
    batches = [method.example_batch(stage, batch) for _ in range(2)]
    if device.type == "cuda":
        for b in batches:
            b.images = {r: x.contiguous(memory_format=torch.channels_last) for r, x in b.images.items()}

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, _ = method.loss(batches[i % 2], stage)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(method, batch, 10 ** 6)
        method.after_step(stage, i, 10 ** 6)

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    _sync(device)
    t1 = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    t2 = time.perf_counter()
    img_s = batch * steps / (t2 - t1)
    return {
        "method": name, "preset": preset, "stage": stage.name, "resolution": max(stage.resolutions),
        "batch": batch, "compile": compile_, "precision": "bf16-autocast" if autocast else "fp32",
        "params": method.param_count(), "trainable_params": sum(p.numel() for p in params),
        "flops_per_image": flops, "img_per_s": img_s, "step_ms": 1000 * (t2 - t1) / steps,
        "warmup_s": t1 - t0, "mfu": None if peak is None else flops * img_s / peak,
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
    }


def run_perf_gpu(args: argparse.Namespace) -> int:
    from bench.io import atomic_write_json
    from bench.method import load_all
    from bench.perf.trainer import peak_flops
    from bench.train import resolve_device

    a = _parse(list(getattr(args, "overrides", []) or []))
    device = resolve_device(a.device)
    cuda = device.type == "cuda"
    names = sorted(load_all()) if a.methods == "all" else [n.strip() for n in a.methods.split(",") if n.strip()]
    presets = dict(kv.split("=", 1) for kv in a.preset)
    steps = a.steps or (10 if cuda else 2)
    warmup = a.warmup if a.warmup is not None else (3 if cuda else 1)
    modes = {"both": [False, True], "on": [True], "off": [False]}[a.compile or ("both" if cuda else "off")]
    peak = peak_flops(device, a.peak_flops)
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "gpu": cuda, "peak_flops": peak,
        "torch": torch.__version__, "steps": steps, "warmup": warmup,
        "note": None if cuda else "no CUDA device: cpu-tiny presets in fp32 — a smoke run, not GPU numbers",
        "results": [], "skipped": []}
    start = time.perf_counter()
    for name in names:
        preset, batch = PAPER.get(name, CPU) if cuda else CPU
        preset = presets.get(name, preset)
        batch = a.batch or batch
        for comp in modes:
            spent = time.perf_counter() - start
            if spent > a.time_budget:
                out["skipped"].append({"method": name, "compile": comp, "reason": f"time budget ({spent:.0f} s)"})
                continue
            try:
                r = measure(name, preset, batch, device, comp, steps, warmup, peak)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                r = {"method": name, "preset": preset, "batch": batch, "compile": comp, "error": "out of memory"}
            except Exception as err:         # one method's failure must not lose the others' numbers
                r = {"method": name, "preset": preset, "batch": batch, "compile": comp,
                     "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
            out["results"].append(r)
            atomic_write_json(a.json, out)
            mfu = r.get("mfu")
            print(f"{name:7s} {preset:12s} compile={'on ' if comp else 'off'} batch {batch:3d}: " +
                  (r["error"] if "error" in r else
                   f"{r['img_per_s']:9.1f} img/s  MFU {'n/a' if mfu is None else f'{100 * mfu:5.1f} %'}  "
                   f"peak {(r['peak_memory_bytes'] or 0) / 2 ** 30:6.1f} GiB"), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    out["seconds"] = time.perf_counter() - start
    atomic_write_json(a.json, out)
    print(f"wrote {a.json} ({out['seconds']:.0f} s)")
    return 1 if any("error" in r for r in out["results"]) and not cuda else 0
