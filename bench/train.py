"""The one training loop every adapter uses.

Budgets are in training images. Stages run in order, each with its own optimizer over its trainable
modules. Every step reseeds the global RNG from (seed, rank, images seen) and every example draws its
noise from its own stream, so a resumed run equals an uninterrupted one bit for bit (CPU), and W ranks
equal one process with the same global batch. Checkpoints are atomic and a re-run of the same command
resumes from the latest one.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bench.checkpoint import CheckpointStore
from bench.config import RunConfig, dump_run_config
from bench.data.spec import build_dataset
from bench.data.stream import make_loader
from bench.ema import EMA
from bench.io import append_jsonl, atomic_write_json, atomic_write_text
from bench.method import Batch, Method, Stage, build_method

_STOP = {"requested": False}


class TrainingDiverged(RuntimeError):
    pass


def request_stop(*_: Any) -> None:
    """Ask the loop to checkpoint and return at the end of the current step (preemption, time limit)."""
    _STOP["requested"] = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
            else torch.device("cpu")
    return torch.device(name)


def init_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def stage_budgets(cfg: RunConfig, stages: list[Stage]) -> list[int]:
    """Images per stage, rounded to whole global batches (at least one step each)."""
    if cfg.stage_images is not None:
        if len(cfg.stage_images) != len(stages):
            raise ValueError(f"stage_images has {len(cfg.stage_images)} entries, method has {len(stages)} stages")
        raw = [float(x) for x in cfg.stage_images]
    else:
        total = sum(s.share for s in stages)
        raw = [cfg.train.images * s.share / total for s in stages]
    b = cfg.train.batch
    return [max(1, round(x / b)) * b for x in raw]


def seed_step(seed: int, rank: int, images: int) -> None:
    """Reseed the global RNG (dropout etc.) from (seed, rank, images seen): resume-exact."""
    torch.manual_seed((seed * 1_000_003 + rank * 7_919 + images) % (1 << 62))


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    if parts == 1:
        return [batch]
    n = batch.size
    if n % parts:
        raise ValueError(f"local batch {n} is not divisible by accumulate={parts}")
    k = n // parts
    sl = [slice(i * k, (i + 1) * k) for i in range(parts)]
    pick = lambda t, s: None if t is None else t[s]  # noqa: E731
    return [Batch({r: x[s] for r, x in batch.images.items()}, pick(batch.labels, s), pick(batch.text, s),
                  batch.rng.subset(s)) for s in sl]


def all_reduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average gradients over ranks (flattened, one collective), whatever the method's module structure."""
    grads = [p.grad for p in params if p.grad is not None]
    if world <= 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def build_optimizer(method: Method, stage: Stage, cfg: RunConfig) -> tuple[torch.optim.Optimizer, list]:
    mods = method.modules()
    names = list(stage.trainable) if stage.trainable is not None else list(mods)
    unknown = [n for n in names if n not in mods]
    if unknown:
        raise ValueError(f"stage {stage.name!r} trains unknown modules {unknown}; modules: {list(mods)}")
    for n, m in mods.items():
        m.requires_grad_(n in names)
    groups, params = [], []
    for n in names:
        ps = [p for p in mods[n].parameters() if p.requires_grad]
        if ps:
            groups.append({"params": ps, "lr_mult": stage.lr_mult.get(n, 1.0), "lr": cfg.train.lr})
            params += ps
    t = cfg.train
    kw = dict(lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[t.optimizer](groups, **kw)
    return opt, params


def check_conditioning(method: Method, dataset: Any, cfg: RunConfig) -> None:
    """The method's conditioning must match what the data carries (one clear line otherwise)."""
    from bench.method import ConfigError

    mc, dc = method.config, int(getattr(dataset, "num_classes", 0) or 0)
    if mc.num_classes and mc.num_classes != dc:
        raise ConfigError(f"method {cfg.method!r} is configured for {mc.num_classes} classes "
                          f"(method_config.num_classes) but dataset {cfg.data.kind!r} has {dc}")
    if mc.conditioning == "text" and cfg.data.text is None and not getattr(dataset, "text_dim", 0) \
            and "text" not in dataset[0]:
        raise ConfigError(f"method {cfg.method!r} is text-conditional but dataset {cfg.data.kind!r} carries no "
                          "caption embeddings (set data.text)")


def train(cfg: RunConfig, run_dir: str | Path, *, stop_after_images: int | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    rank, world = init_distributed(device)
    torch.manual_seed(cfg.seed)          # network initialisation (identical on every rank)
    method = build_method(cfg.method, cfg.preset, cfg.method_config).to(device)
    dataset = build_dataset(cfg.data)
    check_conditioning(method, dataset, cfg)
    stages = method.stages()
    budgets = stage_budgets(cfg, stages)
    store = CheckpointStore(run_dir / "ckpt", keep=t.keep_checkpoints)
    if rank == 0:
        atomic_write_text(run_dir / "config.yaml", dump_run_config(cfg))

    state = store.load_latest(map_location=device)
    stage_idx = state["stage_idx"] if state else 0
    stage_done = state["stage_images"] if state else 0
    images = state["images"] if state else 0
    flops = state["flops"] if state else 0.0
    for s in stages[: stage_idx + 1]:     # rebuild the structure of every stage entered so far
        if s.enter:
            s.enter()
    method.to(device)
    ema = EMA(method, t.ema_halflife_kimg, t.ema_rampup)
    if state:
        method.load_state_dict(state["method"])
        ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"]["torch"])

    autocast = device.type == "cuda" and t.precision in ("auto", "bf16")
    _STOP["requested"] = False
    total = sum(budgets)
    bar = None
    if t.progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=min(images, total), unit="img", desc=f"train {cfg.method}",
                   dynamic_ncols=True, mininterval=1.0)
    result = {"done": False}
    try:
        while stage_idx < len(stages):
            stage = stages[stage_idx]
            if stage_done >= budgets[stage_idx]:          # stage finished: move to the next one
                stage_idx, stage_done = stage_idx + 1, 0
                if stage_idx < len(stages):
                    nxt = stages[stage_idx]
                    if nxt.init_from_ema:
                        ema.copy_to(method, index=0)
                    if nxt.enter:
                        nxt.enter()
                    method.to(device)
                    ema = EMA(method, t.ema_halflife_kimg, t.ema_rampup)
                continue
            out = _run_stage(cfg, method, ema, stage, stage_idx, budgets[stage_idx], stage_done, images, flops,
                             state if state and state["stage_idx"] == stage_idx else None,
                             dataset, store, run_dir, device, rank, world, autocast, bar, stop_after_images)
            state = None
            stage_done, images, flops, stopped = out
            if stopped:
                result = {"done": False}
                break
        else:
            result = {"done": True}
    finally:
        if bar is not None:
            bar.close()
    result.update(images=images, flops=flops, stage=stages[min(stage_idx, len(stages) - 1)].name,
                  stage_budgets=budgets, world=world)
    if rank == 0:
        atomic_write_json(run_dir / "train_summary.json", result)
    return result


def _save(store, method, ema, opt, stage_idx, stage_done, images, flops, rank) -> None:
    if rank != 0:
        return
    store.save(images, {
        "method": method.state_dict(), "ema": ema.state_dict(),
        "optimizer": None if opt is None else opt.state_dict(),
        "stage_idx": stage_idx, "stage_images": stage_done, "images": images, "flops": flops,
        "rng": {"torch": torch.get_rng_state()},
    })


def _run_stage(cfg, method, ema, stage, stage_idx, budget, stage_done, images, flops, state, dataset, store,
               run_dir, device, rank, world, autocast, bar, stop_after_images):
    t = cfg.train
    opt, params = build_optimizer(method, stage, cfg)
    if state is not None and state.get("optimizer") is not None:
        opt.load_state_dict(state["optimizer"])
    mods = method.modules()
    trainable = set(stage.trainable) if stage.trainable is not None else set(mods)
    for n, m in mods.items():
        m.train(n in trainable)               # frozen modules keep eval behaviour (dropout off)
    seed_step(cfg.seed, rank, images)
    from bench.flops import training_flops     # the interface does not count FLOPs; bench.flops does
    flops_per_example = training_flops(method, stage)
    loader = make_loader(dataset, seed=cfg.seed, start=images, global_batch=t.batch, resolutions=stage.resolutions,
                         rank=rank, world=world, workers=t.workers)
    next_ckpt = (images // t.checkpoint_images + 1) * t.checkpoint_images
    next_log = (images // t.log_images + 1) * t.log_images
    acc: dict[str, float] = {}
    acc_n, tick, tick_images = 0, time.perf_counter(), images
    for batch in loader:
        if stage_done >= budget:
            break
        seed_step(cfg.seed, rank, images)
        method.stage_progress(stage, stage_done / budget)
        lr = t.lr * min(1.0, (stage_done + t.batch) / t.warmup_images) if t.warmup_images else t.lr
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        if batch.rng.device != device:     # generators live beside the data (CUDA ones on GPU)
            batch.rng = type(batch.rng)(batch.rng.seeds, device)
        batch = batch.to(device)
        terms: dict[str, float] = {}
        for micro in split_batch(batch, t.accumulate):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss, logs = method.loss(micro, stage)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"non-finite loss ({loss.item()}) at {images} images, stage {stage.name!r}; "
                    f"the last good checkpoint in {store.folder} is kept")
            (loss / t.accumulate).backward()
            for k, v in {"loss": loss.item(), **logs}.items():
                terms[k] = terms.get(k, 0.0) + float(v) / t.accumulate
        all_reduce_grads(params, world)
        if t.grad_clip is not None:
            terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, t.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)
        images += t.batch
        stage_done += t.batch
        flops += flops_per_example * t.batch
        ema.update(method, t.batch, images)
        method.after_step(stage, stage_done // t.batch, images)
        for k, v in terms.items():
            acc[k] = acc.get(k, 0.0) + v
        acc_n += 1
        if bar is not None:
            bar.update(t.batch)
            bar.set_postfix(stage=stage.name, loss=f"{terms['loss']:.4f}", refresh=False)
        stop = _STOP["requested"] or (stop_after_images is not None and images >= stop_after_images)
        if world > 1:   # the scheduler signals rank 0 only: agree, so every rank stops at the same step
            flag = torch.tensor([float(stop)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if rank == 0 and (images >= next_log or stage_done >= budget or stop):
            now = time.perf_counter()
            append_jsonl(run_dir / "log.jsonl", {
                "images": images, "stage": stage.name, "stage_images": stage_done, "lr": lr,
                **{k: v / acc_n for k, v in acc.items()},
                "img_per_s": (images - tick_images) / max(now - tick, 1e-9), "flops": flops,
                "time": time.time()})
            acc, acc_n, tick, tick_images = {}, 0, now, images
            next_log = (images // t.log_images + 1) * t.log_images
        if images >= next_ckpt or stage_done >= budget or stop:
            _save(store, method, ema, opt, stage_idx, stage_done, images, flops, rank)
            next_ckpt = (images // t.checkpoint_images + 1) * t.checkpoint_images
        if stop:
            return stage_done, images, flops, True
    return stage_done, images, flops, False


def check_finite_params(method: Method) -> bool:
    return all(torch.isfinite(p).all() for m in method.modules().values() for p in m.parameters())


def steps_for(images: int, batch: int) -> int:
    return math.ceil(images / batch)
