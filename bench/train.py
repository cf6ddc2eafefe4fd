"""The one training loop every adapter uses.

Budgets are in training images. Stages run in order, each with its own optimizer over its trainable
modules. Every step reseeds the global RNG from (seed, rank, images seen) and every example draws its
noise from its own stream, so a resumed run equals an uninterrupted one bit for bit (CPU), and W ranks
equal one process with the same global batch. Checkpoints are atomic and a re-run of the same command
resumes from the latest one.

Hot path: no device→host read in a steady-state step. Loss, logged terms, grad norm and a non-finite
count accumulate on the device and are read once at each *sync point* — a log step, a checkpoint, the
end of a stage or a requested stop — where the ranks also agree on the stop flag in one collective. A
non-finite loss therefore stops the run within one log interval, before anything is checkpointed.
Gradients are averaged by ``bench.distributed.GradSync`` while backward runs.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist

from bench.checkpoint import CheckpointStore
from bench.config import RunConfig, dump_run_config
from bench.data.spec import build_dataset
from bench.data.stream import make_loader
from bench.distributed import GradSync, distributed, resolve_device  # noqa: F401 (re-exported)
from bench.ema import EMA
from bench.io import append_jsonl, atomic_write_json, atomic_write_text
from bench.loggers import RunLoggers
from bench.method import Batch, Method, Stage, build_method

_STOP = {"requested": False}
# Called with ("start", images, False) once a step has its batch and ("end", images, synced) after it,
# synced = the step was a sync point; benchmarks and tests use it to count host reads inside steps (the
# data pipeline, which runs in loader workers on a cluster, stays outside). Empty in normal runs.
STEP_HOOKS: list[Callable[[str, int, bool], None]] = []


class TrainingDiverged(RuntimeError):
    pass


def request_stop(*_: Any) -> None:
    """Ask the loop to checkpoint and return at the end of the current step (preemption, time limit)."""
    _STOP["requested"] = True


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


def build_optimizer(method: Method, stage: Stage, cfg: RunConfig, world: int = 1) -> tuple[Any, list]:
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
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[t.optimizer]
    kw: dict[str, Any] = dict(lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    # One fused kernel for the whole update where torch has it (Adam/AdamW on CUDA and CPU), else foreach.
    kw["fused" if cls is not torch.optim.RAdam else "foreach"] = True
    if t.shard == "optimizer" and world > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return ZeroRedundancyOptimizer(groups, optimizer_class=cls, **kw), params
    return cls(groups, **kw), params


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



def _prepare_modules(method: Method, device: torch.device, t: Any) -> None:
    """Device placement, memory format and compilation; before the EMA binds to the parameters."""
    method.to(device)
    if _channels_last(method, device, t):
        for m in method.modules().values():
            m.to(memory_format=torch.channels_last)
    if t.compile:
        for m in method.modules().values():
            m.compile()


def _channels_last(method: Method, device: torch.device, t: Any) -> bool:
    if t.channels_last == "off" or (t.channels_last == "auto" and device.type != "cuda"):
        return False
    return any(isinstance(x, torch.nn.Conv2d) for m in method.modules().values() for x in m.modules())


def device_batches(loader: Iterable[Batch], device: torch.device, channels_last: bool = False) -> Iterator[Batch]:
    """Batches on ``device`` with their per-example generators beside them. On CUDA the next batch is
    copied on a side stream while the current step runs (pinned memory, non-blocking), so the step
    never waits for the host-to-device transfer."""
    def prep(b: Batch) -> Batch:
        if b.rng.device != device:          # generators live beside the data (CUDA ones on GPU)
            b.rng = type(b.rng)(b.rng.seeds, device)
        b = b.to(device)
        if channels_last:
            b.images = {r: x.contiguous(memory_format=torch.channels_last) for r, x in b.images.items()}
        return b

    if device.type != "cuda":
        for b in loader:
            yield prep(b)
        return
    side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    it = iter(loader)

    def fetch() -> Batch | None:
        try:
            b = next(it)
        except StopIteration:
            return None
        with torch.cuda.stream(side):
            return prep(b)

    nxt = fetch()
    while nxt is not None:
        main.wait_stream(side)
        cur = nxt
        for x in [*cur.images.values(), cur.labels, cur.text]:
            if x is not None:
                x.record_stream(main)     # the caching allocator must not reuse them while main reads
        nxt = fetch()
        yield cur


def train(cfg: RunConfig, run_dir: str | Path, *, stop_after_images: int | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    if device.type == "cuda" and t.precision != "fp32":
        torch.backends.cuda.matmul.allow_tf32 = True      # fp32 matmuls outside autocast
        torch.backends.cudnn.allow_tf32 = True
    with distributed(device) as (rank, world):
        return _train(cfg, run_dir, device, rank, world, stop_after_images)


def _train(cfg: RunConfig, run_dir: Path, device: torch.device, rank: int, world: int,
           stop_after_images: int | None) -> dict[str, Any]:
    t = cfg.train
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
    _prepare_modules(method, device, t)
    ema = _stage_ema(method, stages[min(stage_idx, len(stages) - 1)], t)
    if state:
        method.load_state_dict(state["method"])
        ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"]["torch"])

    autocast = device.type == "cuda" and t.precision in ("auto", "bf16")
    _STOP["requested"] = False
    loggers = RunLoggers(run_dir, cfg, rank, start_images=images)   # TensorBoard / wandb / previews
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
                    _prepare_modules(method, device, t)
                    ema = _stage_ema(method, nxt, t)
                continue
            out = _run_stage(cfg, method, ema, stage, stage_idx, budgets[stage_idx], stage_done, images, flops,
                             state if state and state["stage_idx"] == stage_idx else None,
                             dataset, store, run_dir, device, rank, world, autocast, bar, stop_after_images,
                             loggers)
            state = None
            stage_done, images, flops, stopped = out
            if stopped:
                result = {"done": False}
                break
        else:
            result = {"done": True}
    finally:
        loggers.close()
        if bar is not None:
            bar.close()
    result.update(images=images, flops=flops, stage=stages[min(stage_idx, len(stages) - 1)].name,
                  stage_budgets=budgets, world=world)
    if rank == 0:
        atomic_write_json(run_dir / "train_summary.json", result)
    return result


def _stage_ema(method: Method, stage: Stage, t: Any) -> EMA:
    return EMA(method, t.ema_halflife_kimg, t.ema_rampup, modules=stage.trainable)


def _save(store, method, ema, opt, stage_idx, stage_done, images, flops, rank) -> None:
    if hasattr(opt, "consolidate_state_dict"):      # ZeRO: gather the full state on rank 0 (all ranks call)
        opt.consolidate_state_dict(to=0)
    if rank != 0:
        return
    store.save(images, {
        "method": method.state_dict(), "ema": ema.state_dict(),
        "optimizer": None if opt is None else opt.state_dict(),
        "stage_idx": stage_idx, "stage_images": stage_done, "images": images, "flops": flops,
        "rng": {"torch": torch.get_rng_state()},
    })


def _accumulate(acc: dict[str, Any], terms: dict[str, Any], scale: float) -> None:
    """Running sums of logged terms; tensors stay on the device (no host read)."""
    for k, v in terms.items():
        v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
        acc[k] = acc[k] + v * scale if k in acc else v * scale


def _sync_read(flags: torch.Tensor, acc: dict[str, Any], n: int) -> tuple[list[float], dict[str, float]]:
    """The flags and the means of the accumulated terms, in one device-to-host read."""
    keys = [k for k, v in acc.items() if isinstance(v, torch.Tensor)]
    vals = torch.cat([flags.float(), *(acc[k].reshape(1).to(flags.device) for k in keys)]).tolist()
    out = {k: float(v) / n for k, v in acc.items() if not isinstance(v, torch.Tensor)}
    out.update({k: v / n for k, v in zip(keys, vals[len(flags):])})
    return vals[:len(flags)], {k: out[k] for k in acc}


def _run_stage(cfg, method, ema, stage, stage_idx, budget, stage_done, images, flops, state, dataset, store,
               run_dir, device, rank, world, autocast, bar, stop_after_images, loggers):
    t = cfg.train
    opt, params = build_optimizer(method, stage, cfg, world)
    if state is not None and state.get("optimizer") is not None:
        opt.load_state_dict(state["optimizer"])
    sync = GradSync(params, world, t.bucket_mb) if world > 1 else None
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
    acc: dict[str, Any] = {}
    nonfinite = torch.zeros((), device=device)           # non-finite losses since the last sync point
    acc_n, tick, tick_images = 0, time.perf_counter(), images
    try:
        for batch in device_batches(loader, device, _channels_last(method, device, t)):
            if stage_done >= budget:
                break
            for hook in STEP_HOOKS:
                hook("start", images, False)
            seed_step(cfg.seed, rank, images)
            method.stage_progress(stage, stage_done / budget)
            lr = t.lr * min(1.0, (stage_done + t.batch) / t.warmup_images) if t.warmup_images else t.lr
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            micros = split_batch(batch, t.accumulate)
            for i, micro in enumerate(micros):
                last = i == len(micros) - 1
                with (sync.no_sync() if sync is not None and not last else contextlib.nullcontext()):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                        loss, logs = method.loss(micro, stage)
                    (loss / t.accumulate).backward()
                nonfinite += (~torch.isfinite(loss.detach())).float()
                _accumulate(acc, {"loss": loss, **logs}, 1.0 / t.accumulate)
            if sync is not None:
                sync.finish()
            if t.grad_clip is not None:
                _accumulate(acc, {"grad_norm": torch.nn.utils.clip_grad_norm_(params, t.grad_clip)}, 1.0)
            opt.step()
            if sync is not None:
                sync.zero_grad()
            else:
                opt.zero_grad(set_to_none=True)
            images += t.batch
            stage_done += t.batch
            flops += flops_per_example * t.batch
            ema.update(method, t.batch, images)
            method.after_step(stage, stage_done // t.batch, images)
            acc_n += 1
            if bar is not None:
                bar.update(t.batch)
            at_log = images >= next_log or stage_done >= budget
            at_ckpt = images >= next_ckpt or stage_done >= budget
            forced = stop_after_images is not None and images >= stop_after_images
            synced = at_log or at_ckpt or forced
            stop = forced
            if synced:
                # The one host read (and, with W > 1, the one collective) of this log interval.
                flags = torch.stack([torch.tensor(float(_STOP["requested"]), device=device), nonfinite])
                if world > 1:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                (requested, bad), means = _sync_read(flags, acc, max(acc_n, 1))
                if bad:
                    raise TrainingDiverged(
                        f"non-finite loss between {tick_images} and {images} images, stage {stage.name!r}; "
                        f"the last good checkpoint {store.latest() or '(none yet)'} is kept")
                stop = stop or bool(requested)
                if rank == 0 and (at_log or stop):
                    now = time.perf_counter()
                    record = {
                        "images": images, "stage": stage.name, "stage_images": stage_done, "lr": lr, **means,
                        "img_per_s": (images - tick_images) / max(now - tick, 1e-9), "flops": flops,
                        "time": time.time()}
                    append_jsonl(run_dir / "log.jsonl", record)
                    loggers.scalars(record)
                    if bar is not None:
                        bar.set_postfix(stage=stage.name, loss=f"{means['loss']:.4f}", refresh=False)
                if at_log or stop:
                    acc, acc_n, tick, tick_images = {}, 0, time.perf_counter(), images
                    next_log = (images // t.log_images + 1) * t.log_images
                if at_ckpt or stop:
                    _save(store, method, ema, opt, stage_idx, stage_done, images, flops, rank)
                    next_ckpt = (images // t.checkpoint_images + 1) * t.checkpoint_images
            for hook in STEP_HOOKS:
                hook("end", images, synced)
            loggers.preview(method, ema, images)    # every train.preview_images images, rank 0; own RNG
            if stop:
                return stage_done, images, flops, True
    finally:
        if sync is not None:
            sync.close()
    return stage_done, images, flops, False


def check_finite_params(method: Method) -> bool:
    return all(torch.isfinite(p).all() for m in method.modules().values() for p in m.parameters())


def steps_for(images: int, batch: int) -> int:
    return math.ceil(images / batch)
