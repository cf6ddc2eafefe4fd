"""The trainer's hot path: no host reads in steady-state steps, overlapped gradient sync (accumulation,
many buckets, ZeRO-1) equal to one process, process groups that end cleanly on success and on error,
the EMA over trained modules only, compiled == eager."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.checkpoint import CheckpointStore, load_checkpoint
from bench.ema import EMA
from bench.method import build_method, load_all
from bench.perf.trainer import count_scalar_reads
from test_train import toy  # noqa: F401  (fixture: registers the two-stage toy method)
from helpers import (adam_weight_atol, assert_reduction_close, net_reduction_shape, reduction_atol, tiny_preset,
                     tiny_run_config)

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted(load_all())


@pytest.mark.parametrize("name", METHODS)
def test_no_host_reads_on_non_log_steps(name, tmp_path):
    preset = tiny_preset(load_all()[name])
    stages = len(build_method(name, preset).stages())
    cfg = tiny_run_config(name, preset, images=4 * 4 * stages, batch=4, log_images=12, grad_clip=1.0)
    reads = count_scalar_reads(cfg, tmp_path / "run")
    assert reads["non_sync_steps"] >= stages, reads
    assert reads["per_non_sync_step_max"] == 0, [s for s in reads["per_step"] if not s[1] and s[2]]
    # the counter sees the one read of each sync point (flags + logged means together)
    assert reads["per_sync_step_max"] == 1, reads


# ---- 2-rank runs ------------------------------------------------------------------------------------------
_CHILD = """
import json, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from bench.config import load_run_config
from bench.method import REGISTRY
from bench.train import train
import torch.distributed as dist
from test_train import Toy
REGISTRY[Toy.name] = Toy
cfg = load_run_config(data=json.loads({cfg!r}))
try:
    train(cfg, {run!r}, stop_after_images={stop!r})
finally:
    print("GROUP_ALIVE", dist.is_initialized(), flush=True)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(cfg, run: Path, stop: int | None = None, timeout: float = 240) -> list[tuple[int, str]]:
    code = _CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), cfg=json.dumps(cfg.model_dump(mode="json")),
                         run=str(run), stop=stop)
    port, procs = _free_port(), []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", BENCH_DIST_TIMEOUT_S="120")
        procs.append(subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", code], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise AssertionError("2-rank run hung: " + " | ".join((p.communicate()[0] or "")[-2000:] for p in procs))
    return [(p.returncode, o) for p, o in zip(procs, outs)]


def _weights(run: Path) -> dict:
    return load_checkpoint(CheckpointStore(run / "ckpt").latest())["method"]


def _assert_ddp_close(one: dict, two: dict, cfg, name: str, over: dict, steps: int) -> None:
    """Within the bound derived in tests/test_contract.py::test_ddp_two_ranks_match_one_process."""
    m = build_method(name, tiny_preset(load_all()[name]), over)
    _, depth = net_reduction_shape(*m.modules().values())
    res = max(r for s in m.stages() for r in s.resolutions)
    delta = reduction_atol(torch.float32, 1.0, cfg.train.batch * res * res, depth)
    for mod in one:
        for k, a in one[mod].items():
            if a.is_floating_point() and a.numel():
                tol = adam_weight_atol(cfg.train.lr, steps, delta) + \
                    reduction_atol(torch.float32, float(a.abs().max()), 1)
                worst = float((a - two[mod][k]).abs().max())
                assert worst <= tol, f"{mod}.{k}: {worst:.3g} > {tol:.3g}"


def test_ddp_accumulation_many_buckets_and_zero1_match_one_process(tmp_path):
    """Accumulation (no_sync on the first micro-step), buckets far smaller than one layer (every gradient
    its own bucket, launched in order from the hooks) and ZeRO-1, against one process."""
    name, over = "edm", {"unet_overrides": {"dropout": 0.0}}
    cfg = tiny_run_config(name, "cpu-tiny", images=16, batch=4, overrides=over, accumulate=2, bucket_mb=1e-4,
                          shard="optimizer", checkpoint_images=8)
    from bench.train import train
    train(cfg, tmp_path / "one")
    res = _two_ranks(cfg, tmp_path / "two")
    assert all(rc == 0 for rc, _ in res), "\n".join(o[-3000:] for _, o in res)
    assert all("GROUP_ALIVE False" in o for _, o in res), "a rank left its process group alive"
    _assert_ddp_close(_weights(tmp_path / "one"), _weights(tmp_path / "two"), cfg, name, over, steps=4)


def test_zero1_checkpoint_resumes_on_another_world_size(tmp_path):
    """2 ranks with sharded Adam state stop at 8 images; one process resumes to 16 == one process throughout."""
    name, over = "edm", {"unet_overrides": {"dropout": 0.0}}
    cfg = tiny_run_config(name, "cpu-tiny", images=16, batch=4, overrides=over, shard="optimizer",
                          checkpoint_images=4)
    from bench.train import train
    train(cfg, tmp_path / "one")
    res = _two_ranks(cfg, tmp_path / "mixed", stop=8)
    assert all(rc == 0 for rc, _ in res), "\n".join(o[-3000:] for _, o in res)
    state = load_checkpoint(CheckpointStore(tmp_path / "mixed" / "ckpt").latest())
    assert state["images"] == 8 and state["optimizer"]["state"], "no full optimizer state in the checkpoint"
    out = train(cfg, tmp_path / "mixed")
    assert out["done"] and out["images"] == 16
    _assert_ddp_close(_weights(tmp_path / "one"), _weights(tmp_path / "mixed"), cfg, name, over, steps=4)


def test_ddp_divergence_fails_both_ranks_cleanly(tmp_path, toy):
    """A NaN loss stops both ranks at the same sync point with a real error: exit 1, the group destroyed,
    no SIGABRT (-6) and no hang."""
    from bench.config import load_run_config
    cfg = load_run_config(data={
        "method": "toy-two-stage", "preset": "cpu-tiny", "method_config": {"blow_up_at": 6},
        "data": {"kind": "synthetic", "resolution": 8, "options": {"n": 16}},
        "train": {"images": 32, "batch": 4, "checkpoint_images": 4, "log_images": 4, "warmup_images": 0,
                  "progress": False, "device": "cpu"}})
    res = _two_ranks(cfg, tmp_path / "run")
    for rc, out in res:
        assert rc == 1 and "TrainingDiverged" in out and "GROUP_ALIVE False" in out, out[-3000:]
    assert load_checkpoint(CheckpointStore(tmp_path / "run" / "ckpt").latest())["images"] == 4


# ---- EMA -------------------------------------------------------------------------------------------------
def test_ema_averages_trained_modules_only_in_one_pass():
    m = build_method("cd", "cpu-tiny")
    m.stages()[1].enter()                                    # distill: teacher frozen, target self-updated
    ema = EMA(m, [0.5, 2.0], rampup=None, modules=("student",))
    assert set(ema.shadows[0]) == {"student"}
    before = {k: v.clone() for k, v in m.student.state_dict().items()}
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(1.0)
    ema.update(m, batch=10, images=100)
    for i, h in enumerate([500.0, 2000.0]):
        w = 1 - 0.5 ** (10 / h)
        for k, v in m.student.state_dict().items():
            if v.is_floating_point():
                expect = before[k].lerp(v, w)
                torch.testing.assert_close(ema.shadows[i]["student"][k], expect, rtol=0, atol=0)
    teacher = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    ema.copy_to(m, 0)
    assert all(torch.equal(teacher[k], v) for k, v in m.teacher.state_dict().items()), "copy_to touched a frozen net"
    restored = EMA.from_state(m, ema.state_dict())
    assert restored.names == ["student"]


# ---- compile --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_forward_backward_matches_eager():
    """train.compile uses nn.Module.compile (inductor): loss and gradients equal eager within the rounding
    of a reordered reduction through the network."""
    m = build_method("edm", "cpu-tiny", {"unet_overrides": {"dropout": 0.0}})
    stage = m.stages()[0]
    batch = m.example_batch(stage, 4)

    def grads():
        for p in m.modules()["denoiser"].parameters():
            p.grad = None
        b = m.example_batch(stage, 4)
        loss, _ = m.loss(b, stage)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.modules()["denoiser"].parameters()]

    del batch
    eager_loss, eager_g = grads()
    m.modules()["denoiser"].compile()
    comp_loss, comp_g = grads()
    length, depth = net_reduction_shape(m.modules()["denoiser"])
    assert_reduction_close(comp_loss.reshape(1), eager_loss.reshape(1), length * 4, depth, what="loss")
    res = m.config.resolution
    for i, (a, b) in enumerate(zip(comp_g, eager_g)):
        mag = max(float(a.abs().max()), float(b.abs().max()), 1e-3)
        assert_reduction_close(a, b, 4 * res * res, depth, magnitude=mag, what=f"grad {i}")
