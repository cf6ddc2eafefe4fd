"""Matryoshka Diffusion (methods/matryoshka.py, bench/nets/nested_unet.py) against CARDS.md §4."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.diffusion.rng import StackedRandom
from bench.diffusion.schedules import mdm_gammas, resampled_timesteps
from bench.method import Batch, Condition, ConfigError, build_method
from bench.nets.nested_unet import unet_forward
from bench.sample import load_run
from helpers import assert_reduction_close, net_reduction_shape
from bench.train import train
from helpers import tiny_run_config
from methods.matryoshka import MatryoshkaDiffusion, level_gammas, mixed_sizes


def _randomize(module: torch.nn.Module, seed: int = 0, skip_adapters: bool = True, scale: float = 0.05) -> None:
    """Give zero-initialised layers weights (a 'trained' network), leaving the adapters at zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if skip_adapters and "adapter" in name:
                continue
            p.add_(scale * torch.randn(p.shape, generator=g))


def _logsnr(g: torch.Tensor) -> float:
    return float(torch.log(g / (1 - g)))


# ---- schedule ------------------------------------------------------------------------------------

def test_shifted_gamma_oracles_and_monotone():
    g = mdm_gammas(1000)
    assert g.shape == (1001,) and g[0] == 1.0
    assert float(g[1]) == pytest.approx(0.999959, abs=5e-7)
    assert _logsnr(g[1]) == pytest.approx(10.095, abs=1e-3)
    assert _logsnr(g[500]) == pytest.approx(-0.025, abs=1e-3)
    hi256, lo = level_gammas(g[500], [4, 1], power=1.0)         # released 64→256 model
    assert _logsnr(hi256) == pytest.approx(-1.411, abs=1e-3)
    assert lo is g[500] or torch.equal(lo, g[500])              # the lowest level is not shifted
    hi1024, mid256, _ = level_gammas(g[500], [16, 4, 1], power=2.0)   # 64→256→1024 model
    assert _logsnr(hi1024) == pytest.approx(-5.570, abs=1e-3)
    assert _logsnr(mid256) == pytest.approx(-0.025 - math.log(16), abs=1e-3)
    # Every level's γ falls strictly with t; a higher resolution is always noisier (0 < t < T).
    levels = level_gammas(g, [16, 4, 1], power=2.0)
    for lv in levels:
        assert bool((lv[1:] < lv[:-1]).all())
    inner = slice(1, 1000)
    assert bool((levels[0][inner] < levels[1][inner]).all()) and bool((levels[1][inner] < levels[2][inner]).all())
    assert all(float(lv[0]) == 1.0 for lv in levels)            # γ_0 = 1 stays exact: the last sampler step is x̂


def test_resampled_time_grid_and_sampler_time_inputs():
    grid = resampled_timesteps(1000, 250)
    assert grid.numel() == 251 and int(grid[0]) == round(250 * 1001 / 251) == 997 and int(grid[-1]) == 0
    m = build_method("mdm", "cpu-tiny")
    seen: list[torch.Tensor] = []
    m.net.register_forward_hook(lambda mod, args, kwargs, out: seen.append(kwargs["noise_labels"].clone()),
                                with_kwargs=True)
    _, nfe = m.sample(StackedRandom([0, 1]), m.example_condition(2), steps=4)
    # ratio 1001/5 = 200.2 → t_k = 0, 200, 400, 601, 801; the network sees t − 1 on the first 4.
    assert [int(s[0]) for s in seen] == [800, 600, 399, 199]
    assert all(torch.equal(s, s[:1].expand_as(s)) for s in seen)
    assert nfe == 4
    _, nfe_cfg = m.sample(StackedRandom([0, 1]), m.example_condition(2), steps=4, guidance=3.0)
    assert nfe_cfg == 8 and len(seen) == 8                      # one batched cond+uncond call per step


# ---- training process ----------------------------------------------------------------------------

def _batch(m, stage, n: int, seeds=None) -> Batch:
    b = m.example_batch(stage, n)
    if seeds is not None:
        b.rng = StackedRandom(seeds)
    return b


def test_independent_noise_per_level_and_shared_t():
    m = build_method("mdm", "cpu-tiny")
    stage = m.stages()[1]
    b = _batch(m, stage, 8)
    t, (e32, e16) = m.draw_training_noise(b, 2)
    assert t.shape == (8,) and t.dtype == torch.int64 and 0 <= int(t.min()) and int(t.max()) < 1000
    assert e32.shape == (8, 3, 32, 32) and e16.shape == (8, 3, 16, 16)
    pooled = F.avg_pool2d(e32, 2) * 2                           # what "pooled noise" would have been
    corr = torch.corrcoef(torch.stack([pooled.flatten(), e16.flatten()]))[0, 1]
    assert abs(float(corr)) < 0.1, f"low-res noise correlates with the pooled high-res noise ({float(corr):.3f})"
    for e in (e32, e16):
        assert float(e.std()) == pytest.approx(1.0, abs=0.05)
    # Per-example streams: example 5's draws do not depend on the rest of the batch.
    t_b, (e32_b, e16_b) = m.draw_training_noise(_batch(m, stage, 2, seeds=b.rng.seeds[4:6]), 2)
    assert torch.equal(t_b, t[4:6]) and torch.equal(e16_b, e16[4:6]) and torch.equal(e32_b, e32[4:6])


class _OracleNet(torch.nn.Module):
    """Stands in for the NestedUNet: checks the noisy inputs against the card's formulas and returns the
    true v (plus ``offset[r]`` at level r), so the ε-loss is known exactly."""

    def __init__(self, x0, eps, t, gammas, offsets):
        super().__init__()
        self.x0, self.eps, self.t, self.g, self.offsets = x0, eps, t, gammas, offsets
        self.sizes: list[int] = []

    def forward(self, zs, noise_labels, class_labels=None, text=None):
        assert torch.equal(noise_labels, self.t.float())       # the raw integer index is the time input
        self.sizes = [z.shape[0] for z in zs]
        out = []
        for z, x, e, g, off in zip(zs, self.x0, self.eps, self.g, self.offsets):
            k = z.shape[0]
            a, s = g[:k].sqrt().float().view(-1, 1, 1, 1), (1 - g[:k]).sqrt().float().view(-1, 1, 1, 1)
            torch.testing.assert_close(z, a * x[:k] + s * e[:k], rtol=0, atol=1e-5)
            out.append(a * e[:k] - s * x[:k] + off)            # v = α ε − σ x
        return out


def _oracle_setup(m, stage, n, offsets, power):
    b = _batch(m, stage, n)
    b.labels = None
    t = torch.arange(n) * 97 % 1000
    eps = [torch.randn(b.images[r].shape, generator=torch.Generator().manual_seed(r)) for r in stage.resolutions]
    m.draw_training_noise = lambda batch, levels: (t, eps)
    x0 = [b.images[r] for r in stage.resolutions]
    base = m.base_resolution
    # Independent oracle for γ^r: γ[t+1] from the iDDPM cosine, SNR / (r/base)^p.
    g = mdm_gammas(1000)[t + 1]
    gam = []
    for r in stage.resolutions:
        snr = g / (1 - g) / (r / base) ** power
        gam.append(snr / (1 + snr))
    m.net = _OracleNet(x0, eps, t, gam, offsets)
    return b, gam


def test_loss_is_eps_mse_of_v_prediction_with_shift():
    m = build_method("mdm", "cpu-tiny", {"label_dropout": 0.0, "use_mixed_ratio": False})
    stage = m.stages()[1]
    b, _ = _oracle_setup(m, stage, 4, [0.0, 0.0], power=1.0)
    loss, logs = m.loss(b, stage)
    assert float(loss) < 1e-10 and logs["mse_32"] < 1e-10 and logs["mse_16"] < 1e-10
    # A v error δ becomes an ε error α δ (ε̂ = σ z + α v̂): mse = mean_j γ_j δ².
    b, gam = _oracle_setup(m, stage, 4, [0.5, 0.0], power=1.0)
    loss, logs = m.loss(b, stage)
    assert logs["mse_32"] == pytest.approx(float((gam[0] * 0.25).mean()), rel=1e-5)
    assert logs["mse_16"] < 1e-10


def test_loss_weights_are_highest_resolution_first():
    m = build_method("mdm", "cpu-tiny-3lvl", {"label_dropout": 0.0})
    stage = m.stages()[2]
    assert m.config.stages[2].loss_weights == [16, 4, 1] and stage.resolutions == (64, 32, 16)
    b, gam = _oracle_setup(m, stage, 4, [0.1, 0.2, 0.3], power=2.0)
    loss, logs = m.loss(b, stage)
    mse = [float((g * d * d).mean()) for g, d in zip(gam, [0.1, 0.2, 0.3])]
    assert [logs["mse_64"], logs["mse_32"], logs["mse_16"]] == pytest.approx(mse, rel=1e-5)
    assert float(loss) == pytest.approx(16 * mse[0] + 4 * mse[1] + 1 * mse[2], rel=1e-5)
    assert float(loss) != pytest.approx(1 * mse[0] + 4 * mse[1] + 16 * mse[2], rel=1e-2)


def test_mixed_ratio_high_res_branch_sees_its_share():
    assert mixed_sizes([2, 1], 6, 2) == ([4, 6], [2 / 3, 1.0])
    assert mixed_sizes([2, 1], 3, 2)[0] == [2, 3]
    assert mixed_sizes([1, 1, 1], 6, 3)[0] == [2, 4, 6]
    assert mixed_sizes(None, 5, 2) == ([5, 5], [1.0, 1.0])
    # The real network: the outer level's input batch is exactly 2/3 of it, the base UNet sees all.
    m = build_method("mdm", "cpu-tiny")
    seen = {}
    m.net.outer[0].conv_in.register_forward_hook(lambda mod, a, out: seen.__setitem__("outer", a[0].shape[0]))
    m.net.base.conv_in.register_forward_hook(lambda mod, a, out: seen.__setitem__("base", a[0].shape[0]))
    stage = m.stages()[1]
    m.loss(_batch(m, stage, 6), stage)
    assert seen == {"outer": 4, "base": 6}
    # The loss: the high-res term is summed over the prefix, divided by m = 2/3, averaged over N.
    m = build_method("mdm", "cpu-tiny", {"label_dropout": 0.0})
    b, gam = _oracle_setup(m, stage, 6, [1.0, 0.0], power=1.0)
    loss, _ = m.loss(b, stage)
    assert m.net.sizes == [4, 6]
    assert float(loss) == pytest.approx(float(gam[0][:4].sum()) / (2 / 3) / 6, rel=1e-5)


# ---- architecture and progressive stages ---------------------------------------------------------

def test_unet_forward_matches_unet_and_nested_levels_start_at_inner_function():
    m = build_method("mdm", "cpu-tiny-3lvl")
    net = m.net
    assert net.resolutions == (64, 32, 16) and [o.config.nest_ratio for o in net.outer] == [2, 2]
    _randomize(net)
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(2, 3, r, r, generator=g) for r in (64, 32, 16)]
    t, labels = torch.tensor([10.0, 700.0]), torch.tensor([1, -1])
    out, feat = unet_forward(net.base, xs[2], t, labels)
    ref_out, ref_feat = net.base(xs[2], t, labels, return_features=True)
    assert torch.equal(out, ref_out) and torch.equal(feat, ref_feat)
    one = net(xs[2:], t, labels)
    two = net(xs[1:], t, labels)
    three = net(xs, t, labels)
    assert [o.shape[-1] for o in three] == [64, 32, 16]
    assert torch.equal(one[0], ref_out)
    assert torch.equal(two[1], one[0]) and torch.equal(three[2], one[0]) and torch.equal(three[1], two[0])
    assert not torch.equal(three[0], torch.zeros_like(three[0]))
    # Negative control: a non-zero in-adapter changes the inner output.
    with torch.no_grad():
        net.outer[0].in_adapter.weight.add_(0.1)
    assert not torch.allclose(net(xs[1:], t, labels)[1], one[0])


def test_stage2_starts_from_stage1_model_exactly(tmp_path, monkeypatch):
    """Through the real trainer: at the first stage-2 loss the grown model's low-res output equals the
    stage-1 (EMA) model's output, and stage 1 left the outer level untouched."""
    cfg = tiny_run_config("mdm", "cpu-tiny", images=12, batch=4, lr=1e-3).model_copy(update={"stage_images": [8, 4]})
    train(cfg, tmp_path / "run", stop_after_images=8)
    stage1, _ = load_run(tmp_path / "run")
    assert stage1._active == 0
    g = torch.Generator().manual_seed(0)
    x32, x16 = torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 3, 16, 16, generator=g)
    t, labels = torch.tensor([5.0, 400.0, 990.0]), torch.tensor([0, 3, -1])
    captured: dict = {}
    original = MatryoshkaDiffusion.loss

    def spy(self, batch, stage):
        if stage.info["levels"] == 2 and not captured:      # before any stage-2 update
            with torch.no_grad():
                captured["low"] = self.net([x32, x16], t, labels)[1].clone()
            captured["outer"] = {k: v.clone() for k, v in self.net.outer.state_dict().items()}
        return original(self, batch, stage)

    monkeypatch.setattr(MatryoshkaDiffusion, "loss", spy)
    assert train(cfg, tmp_path / "run")["done"]
    with torch.no_grad():
        low_alone = stage1.net([x16], t, labels)[0]
    assert torch.equal(captured["low"], low_alone)
    torch.manual_seed(cfg.seed)                                 # the trainer's initialisation
    fresh = build_method("mdm", "cpu-tiny")
    assert all(torch.equal(v, captured["outer"][k]) for k, v in fresh.net.outer.state_dict().items())
    assert not all(torch.equal(v, stage1.net.base.state_dict()[k]) for k, v in fresh.net.base.state_dict().items())


def test_early_stage_sampling_upsamples_trained_levels_and_cfg_combines_v():
    m = build_method("mdm", "cpu-tiny")
    _randomize(m.net, skip_adapters=False)
    m.stages()[0].enter()
    calls = []
    m.net.register_forward_hook(lambda mod, args, out: calls.append(len(args[0])))
    x, nfe = m.sample(StackedRandom([0, 1]), m.example_condition(2), steps=3)
    assert x.shape == (2, 3, 32, 32) and calls == [1, 1, 1] and nfe == 3
    m.stages()[1].enter()
    g = torch.Generator().manual_seed(1)
    zs = [torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 16, 16, generator=g)]
    t, cond = torch.tensor([300.0, 300.0]), Condition(labels=torch.tensor([1, 2]))
    with torch.no_grad():
        c = m.net(zs, t, cond.labels)
        u = m.net(zs, t, torch.tensor([-1, -1]))
        v, mult = m._predict_v(zs, t, cond, 4.0)
    assert mult == 2
    # Batched (cond + uncond in one call) vs two calls: equal up to reduction order; v = 4c − 3u amplifies
    # the network's rounding by |4| + |3| = 7.
    length, depth = net_reduction_shape(m.net)
    for vi, ci, ui in zip(v, c, u):
        mag = 7.0 * max(float(ci.abs().max()), float(ui.abs().max()), 1.0)
        assert_reduction_close(vi, ui + 4.0 * (ci - ui), length, depth, magnitude=mag, what="CFG on v")


def test_text_conditioning_reaches_every_level():
    m = build_method("mdm", "cpu-tiny", {"conditioning": "text", "num_classes": 0, "text_dim": 8})
    _randomize(m.net)
    g = torch.Generator().manual_seed(2)
    zs = [torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 16, 16, generator=g)]
    t = torch.tensor([100.0, 800.0])
    txt_a, txt_b = torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g)   # (N, L, D) tokens
    with torch.no_grad():
        a, b = m.net(zs, t, text=txt_a), m.net(zs, t, text=txt_b)
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
    stage = m.stages()[1]
    loss, _ = m.loss(m.example_batch(stage, 3), stage)
    assert torch.isfinite(loss)
    x, _ = m.sample(StackedRandom([0, 1]), Condition(text=txt_a), steps=2, guidance=2.0)
    assert x.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("override, field", [
    ({"stages": [{"levels": 2}, {"levels": 1}]}, "levels must increase"),
    ({"stages": [{"levels": 1}]}, "last stage must train all 2 levels"),
    ({"stages": [{"levels": 1}, {"levels": 2, "mixed_ratio": [1, 1, 1]}]}, "mixed_ratio"),
    ({"stages": [{"levels": 1}, {"levels": 2, "loss_weights": [0, 0]}]}, "loss_weights"),
    ({"resolution": 30}, "not divisible"),
    ({"outer": [{"channels": [16, 32], "num_blocks": [1]}]}, "num_blocks"),
])
def test_config_errors_are_one_line(override, field):
    with pytest.raises(ConfigError) as err:
        build_method("mdm", "cpu-tiny", override)
    assert field in str(err.value) and "\n" not in str(err.value)
