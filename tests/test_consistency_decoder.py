"""Consistency decoder (cdec): scalings, timesteps, latent pipeline, SD VAE loading, plain baseline, rFID."""
from __future__ import annotations

import math

import pytest
import torch

from bench.consistency.decoder import (decoder_alpha_bar, decoder_sample, decoder_scalings, distilled_grid,
                                       normalise_latent, round_timesteps, sampling_timesteps, upsample_latent)
from bench.consistency.latents import SDVAEEncoder, sd_vae_asset_spec, to_diffusers_keys
from bench.diffusion.rng import StackedRandom
from bench.method import Batch, ConfigError, build_method
from methods.consistency_decoder import LatentCondition, reconstruct


@pytest.mark.parametrize("t,expected", [
    (1008, dict(sqrt_ab=0.022826886, sqrt_1mab=0.99973943, sigma=43.796574, c_skip=0.0057089527,
                c_out=0.49996742, c_in=1.0001955)),
    (512, dict(sqrt_ab=0.7016564, sqrt_1mab=0.71251548, sigma=1.0154764, c_skip=0.27810015,
               c_out=0.44857253, c_in=1.2591236)),
])
def test_decoder_scalings_at_1008_and_512(t, expected):
    ab = decoder_alpha_bar()
    c_skip, c_out, c_in = decoder_scalings(ab)
    got = dict(sqrt_ab=ab[t].sqrt(), sqrt_1mab=(1 - ab[t]).sqrt(), sigma=(1 / ab[t] - 1).sqrt(),
               c_skip=c_skip[t], c_out=c_out[t], c_in=c_in[t])
    for k, v in expected.items():
        assert float(got[k]) == pytest.approx(v, rel=2e-7), k
    # closed forms of the card
    a = float(ab[t])
    assert float(c_in[t]) == pytest.approx(1 / math.sqrt(1 - 0.75 * a))
    assert float(c_skip[t]) == pytest.approx(0.25 * math.sqrt(a) / (1 - 0.75 * a))
    # the network module carries the same numbers
    m = build_method("cdec", "cpu-tiny")
    assert float(m.student.c_out[t]) == pytest.approx(v if k == "c_out" else expected["c_out"], rel=1e-6)


def test_timesteps_on_the_distilled_grid():
    assert sampling_timesteps(2) == [1008, 512]
    assert round_timesteps(torch.tensor([1023, 511, 0, 15, 16])).tolist() == [1008, 512, 16, 16, 32]
    g = distilled_grid()
    assert g.numel() == 64 and g[0] == 0 and g[-1] == 1008 and bool((g.diff() == 16).all())


def test_latent_normalisation_and_nearest_upsampling():
    z = torch.zeros(1, 4, 2, 2)
    z[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    zn = normalise_latent(z)
    means = [0.38862467, 0.02253063, 0.07381133, -0.0171294]
    stds = [0.9654121, 1.0440036, 0.76147926, 0.77022034]
    for c in range(4):
        assert float(zn[0, c, 0, 0]) == pytest.approx((0.18215 * (c + 1) - means[c]) / stds[c], rel=1e-6)
        assert float(zn[0, c, 1, 1]) == pytest.approx(-means[c] / stds[c], rel=1e-6)
    up = upsample_latent(zn)
    assert up.shape == (1, 4, 16, 16) and torch.equal(up[:, :, :8, :8], zn[:, :, :1, :1].expand(-1, -1, 8, 8))


def test_two_step_loop_follows_the_decoder_scheduler():
    ab = decoder_alpha_bar()
    seen = []

    def predict(x_t, t):
        seen.append((x_t.clone(), int(t[0])))
        return 2 * x_t + 0.5                       # out of [-1, 1] on purpose
    x, nfe = decoder_sample(predict, (2, 3, 4, 4), [1008, 512], ab, StackedRandom([3, 4]), clamp=True)
    ref = StackedRandom([3, 4])
    e1, e2 = ref.randn((2, 3, 4, 4)), ref.randn((2, 3, 4, 4))
    assert nfe == 2 and [t for _, t in seen] == [1008, 512]
    torch.testing.assert_close(seen[0][0], math.sqrt(1 - float(ab[1008])) * e1)
    x0 = (2 * seen[0][0] + 0.5).clamp(-1, 1)
    torch.testing.assert_close(seen[1][0], math.sqrt(float(ab[512])) * x0 + math.sqrt(1 - float(ab[512])) * e2)
    assert x.abs().max() <= 1
    y, _ = decoder_sample(predict, (2, 3, 4, 4), [1008, 512], ab, StackedRandom([3, 4]), clamp=False)
    assert y.abs().max() > 1, "diffusers-style (no clamp) must differ from the original's per-step clamp"


def test_decoder_needs_latents_and_samples_with_two_nfe():
    m = build_method("cdec", "cpu-tiny")
    with pytest.raises(ConfigError, match="LatentCondition"):
        m.sample(StackedRandom([0]), None)
    cond = m.example_condition(2)
    assert isinstance(cond, LatentCondition) and cond.latents.shape == (2, 4, 4, 4)
    x, nfe = m.sample(StackedRandom([0, 1]), cond)
    assert x.shape == (2, 3, 32, 32) and nfe == 2


def test_distill_stage_loss_and_target_update():
    m = build_method("cdec", "cpu-tiny")
    teacher, distill = m.stages()
    g = torch.Generator().manual_seed(0)
    batch = Batch({32: torch.rand(2, 3, 32, 32, generator=g) * 2 - 1}, None, None, StackedRandom([0, 1]))
    assert torch.isfinite(m.loss(batch, teacher)[0])
    with torch.no_grad():
        for p in m.teacher.parameters():
            p.add_(0.01)
    distill.enter()
    assert all(torch.equal(a, b) for a, b in zip(m.student.parameters(), m.teacher.parameters()))
    loss, _ = m.loss(batch, distill)
    assert torch.isfinite(loss)
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.target.parameters()]
    m.after_step(distill, 1, 2)
    for b, t, s in zip(before, m.target.parameters(), m.student.parameters()):
        torch.testing.assert_close(t, 0.95 * b + 0.05 * s)


def test_sd_vae_source_loads_from_the_asset_folder(tmp_path):
    from safetensors.torch import save_file

    from bench.metrics.assets import AssetError, AssetFolder

    with pytest.raises(AssetError, match="sd-vae/diffusion_pytorch_model.safetensors"):
        build_method("cdec", "cpu-tiny", {"latent_source": "sd-vae", "assets": str(tmp_path)}).example_condition(1)
    torch.manual_seed(0)
    ref = SDVAEEncoder().eval()
    # a full AutoencoderKL file also holds decoder weights: they are ignored
    state = {k: v.contiguous() for k, v in ref.state_dict().items()} | {"decoder.conv_in.weight": torch.zeros(1)}
    src = tmp_path / "vae.safetensors"
    save_file(state, str(src))
    AssetFolder(tmp_path).add(sd_vae_asset_spec(), src, source="random-init test weights")
    m = build_method("cdec", "cpu-tiny", {"latent_source": "sd-vae", "assets": str(tmp_path)})
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(m.encode(images), ref(images))
    assert m.encode(images).shape == (2, 4, 4, 4)


def test_compvis_layout_is_renamed():
    w = torch.randn(512, 512, 1, 1)
    out = to_diffusers_keys({"first_stage_model.encoder.mid.attn_1.q.weight": w,
                             "encoder.down.1.block.0.nin_shortcut.bias": torch.zeros(256),
                             "encoder.down.2.downsample.conv.weight": torch.zeros(1),
                             "decoder.up.0.block.0.conv1.weight": torch.zeros(1)})
    assert set(out) == {"encoder.mid_block.attentions.0.to_q.weight",
                        "encoder.down_blocks.1.resnets.0.conv_shortcut.bias",
                        "encoder.down_blocks.2.downsamplers.0.conv.weight"}
    assert torch.equal(out["encoder.mid_block.attentions.0.to_q.weight"], w[:, :, 0, 0])


def test_plain_decoder_trains_and_rfid_compares_both(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures_metrics import session_asset_folder
    from helpers import tiny_run_config

    from bench.data.spec import build_dataset
    from bench.metrics.api import build_reference
    from bench.sample import load_run
    from bench.train import train
    from methods.consistency_decoder import reconstruction_fid

    cfg = tiny_run_config("cdec", "cpu-tiny-plain", images=8, batch=4)
    assert train(cfg, tmp_path / "plain")["done"]
    plain, _ = load_run(tmp_path / "plain")
    assert set(plain.modules()) == {"decoder"} and plain.default_steps() == 1
    cons = build_method("cdec", "cpu-tiny")
    for mod in cons.modules().values():
        mod.eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    x_plain, nfe = reconstruct(plain, images, [0, 1])
    assert nfe == 1 and torch.equal(x_plain, reconstruct(plain, images, [5, 6])[0]), "plain decoding is deterministic"
    assets = session_asset_folder()
    dataset = build_dataset(cfg.data)
    idx = list(range(8))
    ref = build_reference(dataset, tmp_path / "ref.npz", assets, indices=idx, pr_images=0, batch=8,
                          progress=False, device="cpu")
    out = reconstruction_fid({"consistency": cons, "plain": plain}, dataset, idx, str(ref), assets, batch=8)
    assert set(out) == {"consistency", "plain"}
    assert out["consistency"]["nfe"] == 2 and out["plain"]["nfe"] == 1
    fids = [r["metrics"]["fid"] for r in out.values()]
    assert all(math.isfinite(f) and f > 0 for f in fids) and fids[0] != fids[1]
