"""The Method contract, checked for every registered method (each new adapter is covered automatically)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.checkpoint import CheckpointStore, load_checkpoint
from bench.diffusion.rng import StackedRandom
from bench.method import build_method, load_all
from bench.sample import load_run
from bench.train import train
from helpers import (adam_weight_atol, assert_reduction_close, net_reduction_shape, reduction_atol, state_equal,
                     tiny_preset, tiny_run_config)

METHODS = sorted(load_all())
ROOT = Path(__file__).resolve().parents[1]


def _stage_split_images(method: str, preset: str, batch: int) -> int:
    """Training length that crosses every stage boundary with a few steps per stage."""
    m = build_method(method, preset)
    return 2 * batch * len(m.stages())


@pytest.mark.parametrize("name", METHODS)
def test_two_steps_finite_loss_and_weights_change(name, tmp_path):
    cls = load_all()[name]
    preset = tiny_preset(cls)
    cfg = tiny_run_config(name, preset, images=8 * len(build_method(name, preset).stages()), batch=4)
    torch.manual_seed(cfg.seed)
    before = build_method(name, preset).state_dict()
    out = train(cfg, tmp_path / "run")
    assert out["done"]
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert logs and all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
    state = load_checkpoint(CheckpointStore(tmp_path / "run" / "ckpt").latest())["method"]
    changed = any(not torch.equal(before[k][n], state[k][n]) for k in before if k in state
                  for n in before[k] if n in state[k] and before[k][n].shape == state[k][n].shape)
    assert changed, "training did not change any weight"
    assert out["flops"] > 0


def _count_calls(method) -> list[int]:
    calls = [0]
    for name in method.sampling_modules():
        method.modules()[name].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("name", METHODS)
def test_sample_shape_range_nfe(name):
    cls = load_all()[name]
    m = build_method(name, tiny_preset(cls))
    for mod in m.modules().values():
        mod.eval()
    calls = _count_calls(m)
    steps = 3
    x, nfe = m.sample(StackedRandom([0, 1, 2]), m.example_condition(3), steps=steps)
    c = m.config
    assert x.shape == (3, c.channels, c.resolution, c.resolution)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x.min() >= -1 and x.max() <= 1
    assert isinstance(nfe, int) and nfe >= 1
    assert nfe == calls[0], f"reported NFE {nfe} != network calls {calls[0]}"


@pytest.mark.parametrize("name", METHODS)
def test_per_image_seeds_independent_of_batch(name):
    cls = load_all()[name]
    m = build_method(name, tiny_preset(cls))
    for mod in m.modules().values():
        mod.eval()
    # Give the (zero-initialised) output layers weights so samples depend on the network.
    torch.manual_seed(0)
    with torch.no_grad():
        for mod in m.modules().values():
            for p in mod.parameters():
                p.add_(0.02 * torch.randn_like(p))
    cond = m.example_condition(4)
    full, nfe = m.sample(StackedRandom([10, 11, 12, 13]), cond, steps=3)
    half, _ = m.sample(StackedRandom([12, 13]), cond.select(slice(2, 4)), steps=3)
    # The noise is per seed (bit-exact); the network's arithmetic on a batch of 4 vs 2 may sum in another
    # order, so images agree within the rounding of NFE passes through the net (outputs in [-1, 1]).
    length, depth = net_reduction_shape(*(m.modules()[k] for k in m.sampling_modules()))
    assert_reduction_close(full[2:], half, length, depth * max(nfe, 1), magnitude=1.0, what="batch 4 vs 2")
    other, _ = m.sample(StackedRandom([14, 15]), cond.select(slice(2, 4)), steps=3)
    assert not torch.allclose(other, half), "different seeds gave the same images"


@pytest.mark.parametrize("name", METHODS)
def test_save_load_identical_samples(name, tmp_path):
    cls = load_all()[name]
    preset = tiny_preset(cls)
    cfg = tiny_run_config(name, preset, images=4 * len(build_method(name, preset).stages()), batch=4)
    train(cfg, tmp_path / "run")
    a, _ = load_run(tmp_path / "run")
    b, _ = load_run(tmp_path / "run")
    cond = a.example_condition(2)
    xa, _ = a.sample(StackedRandom([5, 6]), cond, steps=3)
    xb, _ = b.sample(StackedRandom([5, 6]), cond, steps=3)
    assert torch.equal(xa, xb)


@pytest.mark.parametrize("name", METHODS)
def test_resume_is_bit_exact(name, tmp_path):
    """N steps straight == N/2 steps, a stop, and N/2 resumed (crossing stage boundaries)."""
    cls = load_all()[name]
    preset = tiny_preset(cls)
    images = _stage_split_images(name, preset, 4)
    cfg = tiny_run_config(name, preset, images=images, batch=4, checkpoint_images=4)
    straight = train(cfg, tmp_path / "a")
    half = train(cfg, tmp_path / "b", stop_after_images=images // 2)
    assert not half["done"] and half["images"] >= images // 2
    resumed = train(cfg, tmp_path / "b")
    assert resumed["done"] and straight["done"]
    sa = load_checkpoint(CheckpointStore(tmp_path / "a" / "ckpt").latest())
    sb = load_checkpoint(CheckpointStore(tmp_path / "b" / "ckpt").latest())
    assert sa["images"] == sb["images"] == straight["images"] == sum(straight["stage_budgets"])
    assert state_equal(sa["method"], sb["method"]), "resumed weights differ from the uninterrupted run"
    for ea, eb in zip(sa["ema"]["shadows"], sb["ema"]["shadows"]):
        assert state_equal(ea, eb), "resumed EMA differs"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_DDP_CHILD = """
import os, sys, json
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from bench.config import load_run_config
from bench.train import train
cfg = load_run_config(data=json.loads({cfg!r}))
train(cfg, {run!r})
"""


@pytest.mark.parametrize("name", METHODS)
def test_ddp_two_ranks_match_one_process(name, tmp_path):
    cls = load_all()[name]
    preset = tiny_preset(cls)
    over = dict(cls.deterministic_overrides)
    images = 2 * 4 * len(build_method(name, preset, over).stages())
    cfg = tiny_run_config(name, preset, images=images, batch=4, overrides=over)
    train(cfg, tmp_path / "one")
    code = _DDP_CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), cfg=json.dumps(cfg.model_dump(mode="json")),
                             run=str(tmp_path / "two"))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", code], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise AssertionError("2-rank run hung: " + " | ".join((p.communicate()[0] or "")[-2000:] for p in procs))
    assert all(p.returncode == 0 for p in procs), \
        "\n".join(f"rank {r}: exit {p.returncode}\n{o[-3000:]}" for r, (p, o) in enumerate(zip(procs, outs)))
    s1 = load_checkpoint(CheckpointStore(tmp_path / "one" / "ckpt").latest())["method"]
    s2 = load_checkpoint(CheckpointStore(tmp_path / "two" / "ckpt").latest())["method"]
    # 2 ranks average two half-batch gradients where one process sums the whole batch: gradients agree to a
    # relative δ = reduction_atol(f32, 1, B·R², depth); after k Adam steps the weights agree within
    # adam_weight_atol(lr, k, δ) (derivation in tests/helpers.py), plus their own rounding.
    m = build_method(name, preset, over)
    length, depth = net_reduction_shape(*m.modules().values())
    res = max(r for s in m.stages() for r in s.resolutions)
    delta = reduction_atol(torch.float32, 1.0, 4 * res * res, depth)
    steps = images // 4
    for mod in s1:
        for k, a in s1[mod].items():
            if a.is_floating_point():
                b = s2[mod][k]
                tol = adam_weight_atol(cfg.train.lr, steps, delta) + \
                    reduction_atol(torch.float32, float(a.abs().max()), 1)
                worst = float((a - b).abs().max()) if a.numel() else 0.0
                assert worst <= tol, f"DDP {mod}.{k} differs from one process by {worst:.3g} > {tol:.3g}"
