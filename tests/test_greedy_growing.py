"""Greedy Growing adapter (CARDS.md §6): shallow core model, growth, frozen-core phase, full phase, schedule shift."""
from __future__ import annotations

import math

import pytest
import torch

from bench.checkpoint import CheckpointStore, load_checkpoint
from bench.diffusion.rng import StackedRandom
from bench.diffusion.schedules import alpha_sigma_from_logsnr, logsnr_cosine
from bench.method import ConfigError, build_method
from bench.train import build_optimizer, train
from helpers import tiny_run_config
from methods.greedy_growing import GreedyConfig, GreedyGrowing


def _perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.02) -> None:
    """Give zero-initialised layers weights, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _latest(run) -> dict:
    return load_checkpoint(CheckpointStore(run / "ckpt").latest())


def test_trainer_freezes_core_in_b1_then_trains_it_in_b2(tmp_path, monkeypatch):
    seen: list[tuple[str, bool, bool, bool]] = []
    original = GreedyGrowing.loss

    def spy(self, batch, stage):
        shell = self.grown if self.is_grown else self.shallow
        seen.append((stage.name, self.core.training, any(p.requires_grad for p in self.core.parameters()),
                     shell.training))
        return original(self, batch, stage)

    monkeypatch.setattr(GreedyGrowing, "loss", spy)
    cfg = tiny_run_config("greedy", "cpu-tiny", images=24, batch=4, checkpoint_images=4, ema_rampup=None)
    cfg = cfg.model_copy(update={"stage_images": [8, 8, 8]})
    run = tmp_path / "run"
    train(cfg, run, stop_after_images=8)                       # end of stage A
    after_a = _latest(run)
    assert after_a["stage_idx"] == 0 and set(after_a["method"]) == {"core", "shallow"}
    train(cfg, run, stop_after_images=16)                      # end of B1 (resumed across the growth)
    after_b1 = _latest(run)
    assert after_b1["stage_idx"] == 1 and set(after_b1["method"]) == {"core", "grown"}
    # B1 started from the stage-A EMA of the core (init_from_ema) and never changed it, bit for bit.
    ema_core = after_a["ema"]["shadows"][0]["core"]
    for k, v in after_b1["method"]["core"].items():
        assert torch.equal(v, ema_core[k]), f"core weight {k} changed during the frozen phase"
    assert any(not torch.equal(v, after_a["method"]["core"][k]) for k, v in ema_core.items()), \
        "test needs an EMA that differs from the raw stage-A weights"
    train(cfg, run)                                            # B2
    final = _latest(run)
    assert final["stage_idx"] == 2
    assert any(not torch.equal(v, after_b1["method"]["core"][k]) for k, v in final["method"]["core"].items())
    # Train/eval mode and requires_grad as the stages ask: the core is frozen and in eval mode only in B1.
    by_stage = {name: {(c, g, s) for n, c, g, s in seen if n == name} for name in ("core", "grow-frozen", "grow-all")}
    # (the FLOP counter's loss before each stage's steps sees the same modes: it sets them as the trainer does)
    assert by_stage["core"] == {(True, True, True)}
    assert by_stage["grow-frozen"] == {(False, False, True)}
    assert by_stage["grow-all"] == {(True, True, True)}


def test_core_gradients_absent_in_b1_present_in_b2():
    m = build_method("greedy", "cpu-tiny", {"core_lr_mult": 0.1})
    m.grow()
    _perturb(m.grown.decoder.conv_out)                         # v̂ must depend on the core for B2's gradients
    _, b1, b2 = m.stages()
    cfg = tiny_run_config("greedy", "cpu-tiny")
    build_optimizer(m, b1, cfg)
    m.loss(m.example_batch(b1, 2), b1)[0].backward()
    assert all(p.grad is None for p in m.core.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.grown.encoder.parameters())
    m.grown.zero_grad(set_to_none=True)
    opt, _ = build_optimizer(m, b2, cfg)
    assert sorted(g["lr_mult"] for g in opt.param_groups) == [0.1, 1.0]
    m.loss(m.example_batch(b2, 2), b2)[0].backward()
    grads = [p.grad for p in m.core.blocks.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_grown_model_starts_at_trivial_predictor():
    m = build_method("greedy", "cpu-tiny")
    _perturb(m.core)
    _perturb(m.shallow)
    core_before = {k: v.clone() for k, v in m.core.state_dict().items()}
    m.grow()
    assert m.shallow is None and set(m.modules()) == {"core", "grown"}
    assert all(torch.equal(v, core_before[k]) for k, v in m.core.state_dict().items()), "core not reused as is"
    stage = m.stages()[1]
    z = torch.randn(3, 3, 32, 32)
    v_hat = m.predict_v(z, torch.tensor([0.3, -2.0, 5.0]), None, None)
    assert torch.equal(v_hat, torch.zeros_like(z))
    # The first loss after growth is the trivial predictor's: v̂ = 0 ⇒ ε̂ = σ z.
    batch = m.example_batch(stage, 3)
    loss, _ = m.loss(batch, stage)
    rng = StackedRandom(batch.rng.seeds)
    t = rng.rand((3,), dtype=torch.float64)
    eps = rng.randn((3, 3, 32, 32))
    alpha, sigma = (c.float().view(-1, 1, 1, 1) for c in alpha_sigma_from_logsnr(m.logsnr(t, 32)))
    x = batch.images[32]
    expected = ((sigma * (alpha * x + sigma * eps) - eps) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("over,grid", [({}, 8), ({"resolution": 64, "encoder_widths": (16, 32, 64)}, 8),
                                       ({"resolution": 64, "low_resolution": 32, "patch": 4,
                                         "encoder_widths": (32, 64, 64)}, 8)])
def test_grown_encoder_lands_on_core_grid_and_width(over, grid):
    m = build_method("greedy", "cpu-tiny", over)
    c = m.config
    m.grow()
    emb = m.core.embed(torch.zeros(2))
    h, skips = m.grown.encoder(torch.randn(2, 3, c.resolution, c.resolution), emb)
    assert h.shape == (2, c.core_width, grid, grid) == (2, c.core_width, c.core_grid, c.core_grid)
    assert len(skips) == len(c.encoder_widths) * c.encoder_blocks
    sh = m.stages()[0]
    assert sh.resolutions == (c.low_resolution,)


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="encoder_widths"):
        build_method("greedy", "cpu-tiny", {"resolution": 64})
    with pytest.raises(ConfigError, match="patch"):
        build_method("greedy", "cpu-tiny", {"patch": 3})
    with pytest.raises(ConfigError, match="must exceed low_resolution"):
        build_method("greedy", "cpu-tiny", {"low_resolution": 32, "patch": 8, "encoder_widths": (32, 64, 64)})
    for preset in GreedyGrowing.presets:      # paper presets validate (networks not built: too large for CI)
        cfg = GreedyConfig(**GreedyGrowing.presets[preset])
        # core tokens per side = the core resolution over the patch size (paper: 16; CPU presets: 8, the
        # 16-px demo's 8-px core: 4)
        assert cfg.core_grid == cfg.low_resolution // cfg.patch
        assert cfg.core_grid == ({"cpu-demo": 4}.get(preset, 8) if preset.startswith("cpu") else 16)


def test_schedule_shift_changes_with_growth():
    m = build_method("greedy", "cpu-tiny")
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    lam16, lam32 = m.logsnr(t, 16), m.logsnr(t, 32)
    torch.testing.assert_close(lam16 - lam32, torch.full_like(t, 2 * math.log(2)))
    torch.testing.assert_close(lam16[[0, 5, 10]], torch.tensor([15.0, 0.0, -15.0], dtype=torch.float64),
                               atol=1e-9, rtol=0)                       # ref 16: no shift at r0
    # The noise label fed to the core is the reference-resolution logSNR λ_cos(t): the same at both resolutions.
    captured: list[torch.Tensor] = []
    real_embed = m.core.embed
    m.core.embed = lambda noise, *rest: captured.append(noise.detach().clone()) or real_embed(noise, *rest)
    a, b1, _ = m.stages()
    batch_a = m.example_batch(a, 2)
    _, logs_a = m.loss(batch_a, a)
    m.grow()
    _, logs_b = m.loss(m.example_batch(b1, 2), b1)
    assert logs_a["shift"] == 0.0 and logs_b["shift"] == pytest.approx(-2 * math.log(2))
    assert logs_b["logsnr_mean"] == pytest.approx(logs_a["logsnr_mean"] - 2 * math.log(2))
    t = StackedRandom(batch_a.rng.seeds).rand((2,), dtype=torch.float64)
    torch.testing.assert_close(captured[0], captured[1])
    torch.testing.assert_close(captured[0].double(), logsnr_cosine(t), atol=1e-5, rtol=0)
    # The sampler's grid follows the working resolution too.
    torch.testing.assert_close(m.sampling_grid(4, 32)[:-1], m.sampling_grid(4, 16)[:-1] - 2 * math.log(2))


def test_core_dropout_off_in_eval_mode():
    m = build_method("greedy", "cpu-tiny")
    assert m.config.dropout > 0
    _perturb(m.core)
    h, emb = torch.randn(2, 128, 8, 8), m.core.embed(torch.zeros(2))
    m.core.train()
    assert not torch.equal(m.core.transform(h, emb), m.core.transform(h, emb))
    m.core.eval()
    assert torch.equal(m.core.transform(h, emb), m.core.transform(h, emb))


def test_sample_before_and_after_growth():
    m = build_method("greedy", "cpu-tiny")
    for mod in m.modules().values():
        _perturb(mod)
        mod.eval()
    low, nfe = m.sample(StackedRandom([0, 1]), steps=3)
    assert low.shape == (2, 3, 32, 32) and nfe == 3
    # Before growth: the 16-px sample, nearest-upsampled.
    torch.testing.assert_close(low, low[..., ::2, ::2].repeat_interleave(2, -1).repeat_interleave(2, -2))
    m.grow()
    _perturb(m.grown)
    m.grown.eval()
    high, nfe = m.sample(StackedRandom([0, 1]), steps=3)
    assert high.shape == (2, 3, 32, 32) and nfe == 3
    assert not torch.equal(high, high[..., ::2, ::2].repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_text_conditioning_and_cfg():
    m = build_method("greedy", "cpu-tiny", {"conditioning": "text", "text_dim": 8, "label_dropout": 0.5})
    m.grow()
    _perturb(m.grown)
    stage = m.stages()[1]
    loss, _ = m.loss(m.example_batch(stage, 4), stage)
    assert torch.isfinite(loss)
    cond = m.example_condition(2)
    for mod in m.modules().values():
        mod.eval()
    x1, nfe1 = m.sample(StackedRandom([3, 4]), cond, steps=2, guidance=1.0)
    x3, nfe3 = m.sample(StackedRandom([3, 4]), cond, steps=2, guidance=3.0)
    assert (nfe1, nfe3) == (2, 4)
    assert not torch.equal(x1, x3)


def test_flops_per_stage_count_the_frozen_core():
    from bench.flops import training_flops

    m = build_method("greedy", "cpu-tiny")
    a, b1, b2 = m.stages()
    flops = [training_flops(m, s) for s in (a, b1, b2)]        # measured on grown copies, method untouched
    assert not m.is_grown and all(p.requires_grad for p in m.core.parameters())
    assert 0 < flops[0] < flops[1] < flops[2]                  # B1 computes no weight gradients for the core
