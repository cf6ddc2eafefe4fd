"""Relay Diffusion (Teng, Zheng, Ding, Hong, Wangni, Yang, Tang, ICLR 2024, arXiv 2309.03350; CARDS.md §5;
repo THUDM/RelayDiffusion, built on NVlabs/edm).

What this adapter implements (each mechanism is tested in tests/test_relay.py):
- Stage "base": plain EDM at the low resolution r = resolution / up_scale — methods.edm.EDM itself
  (preconditioning, lognormal σ, λ(σ) loss, Heun + churn sampler), its denoiser is module ``base``.
- Stage "relay": blurring diffusion at the full resolution (module ``relay``, an EDMDenoiser):
  u ~ U(0, 1) clamped below at Φ((ln 7.5e−3 − P_mean)/P_std)·L (as the official code, factor L included);
  σ = exp(P_mean + P_std Φ⁻¹(u·L)); σ_B = B_max sin²(πu/2); the input is the per-patch (s×s) DCT blur
  of the sharp image plus σ(ε + s_blk·ε_blk) with block noise ε_blk (circular s×s box filter of a second
  white field / s); EDM preconditioning on σ; target = the sharp image; weight λ(σ) clamped at 1e5;
  label dropout for CFG.
- The relay sampler: stage-1 EDM sampler (or the CelebA-HQ "SDE-Heun") → nearest ×s upsampling →
  blur-aware Heun sampler (bench.diffusion.blur.blur_heun_sampler) on the Karras grid truncated below
  ``truncation_sigma``, blur time u(t) = Φ((ln t − P_mean)/P_std)/L_s, γ-mixing with fresh block noise,
  CFG ``w·D_c − (w−1)·D_u`` in stage 2 only (stage 1 uses ``base_guidance``, 1 as shipped). NFE is the
  sum of both stages. All noise comes from the per-image streams: stage 1 first, then stage 2.

Open choices, written down:
- ``label_dropout`` (stage 2) = 0.1 in the class-conditional presets: the official train.py never sets
  one although ImageNet sampling uses CFG 3.5 (CARDS §5 pitfall iii). Stage 1 trains without it
  (``base_label_dropout`` 0, as EDM) since the shipped sampler never guides stage 1.
- Stage shares. cpu-tiny 0.5 / 0.5. Paper presets: the README gives one number (1250M ImageNet / 47M
  CelebA-HQ training samples) and batch 4096 / 1024 for both stages; we assume equal images per stage,
  so the shares are the stages' FLOP shares: measured 0.658 TFLOPs (ADM-64 at 64 px) vs 6.72 TFLOPs
  (ADM-256 at 256 px) per example, fwd + bwd → 0.09 / 0.91.
- ``steps`` passed to ``sample`` sets the stage-1 steps; the stage-2 grid (before truncation) scales by
  the same factor (at least 2 points), so FID-vs-NFE sweeps move both stages together.
- Early checkpoints: while only stage "base" has been entered, ``sample`` returns the nearest-upsampled
  stage-1 sample (the fully blurred end state), so intermediate FID is meaningful.
- The shipped samplers post-process the saved PNGs (PIL ImageEnhance: ImageNet brightness 1.06;
  CelebA-HQ contrast 0.9 → brightness 1.05 → colour 0.99). The paper presets reproduce this as shipped
  (``output_*`` fields, applied in float without the intermediate uint8 rounding); set them to 1 to ablate.
- Stage 2 of the CelebA-HQ sampler supports churn in the official code with S_churn = 0 by default; no
  churn is built in stage 2. EDM's augmentation pipeline (CelebA-HQ: augment 0.2) is not built.
- ImageNet stage 1 uses EMA half-life 50 Mimg, stage 2 EDM's default 0.5 Mimg; the trainer has one EMA
  list per run: train_defaults give [50 Mimg, 0.5 Mimg]. The base net is frozen in stage 2 holding the
  primary EMA (init_from_ema), so sampling with EMA index 1 is the shipped pairing.
- Not reproduced: the official hard-coded ``repeat_dims = 64`` (we tile the factor table over any size).
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from bench.diffusion.blur import (block_noise, blur_factors, blur_heun_sampler, blur_sigma, dct_blur,
                                  sampler_u, train_u_floor, truncated_karras_grid, truncated_lognormal_sigma)
from bench.diffusion.edm import call_denoiser, edm_loss_weight, edm_sampler, karras_sigmas
from bench.diffusion.guidance import guided
from bench.diffusion.rng import StackedRandom
from bench.method import Batch, Condition, ConfigError, Method, MethodConfig, Stage, register
from bench.nets.unet import UNET_PRESETS
from methods.edm import EDM, EDMConfig, EDMDenoiser, drop_condition, null_condition


class RelayConfig(MethodConfig):
    up_scale: int = Field(2, ge=2, description="s: patch size of the blur and resolution ratio of the stages")
    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = Field(1.2, gt=0)
    # stage 1: plain EDM at resolution / up_scale
    base_unet: str = "cpu-tiny"
    base_unet_overrides: dict[str, Any] = {}
    base_label_dropout: float = Field(0.0, ge=0, lt=1)
    base_share: float = Field(0.5, gt=0)
    base_steps: int = Field(18, ge=1)
    base_sigma_min: float = Field(0.002, gt=0)
    base_sigma_max: float = Field(80.0, gt=0)
    base_rho: float = Field(7.0, gt=0)
    base_solver: str = Field("heun", pattern="^(heun|euler|sde_heun)$")
    base_sde_scale: float = Field(0.05, ge=0, lt=1, description="sde_heun: injected noise g = scale·t_next")
    S_churn: float = Field(0.0, ge=0)
    S_min: float = 0.0
    S_max: float = float("inf")
    S_noise: float = 1.0
    base_guidance: float = 1.0
    # stage 2: blurring diffusion at full resolution
    unet: str = "cpu-tiny"
    unet_overrides: dict[str, Any] = {}
    relay_share: float = Field(0.5, gt=0)
    prob_length: float = Field(0.93, gt=0, le=1, description="L: training σ lognormal truncated at this quantile")
    blur_sigma_max: float = Field(3.0, ge=0, description="B_max of σ_B(u) = B_max sin²(πu/2)")
    min_scale: float = Field(0.001, ge=0, lt=1, description="m: floor of the blur factors")
    block_scale: float = Field(0.15, ge=0, description="s_blk: weight of block noise (training and sampling)")
    train_sigma_floor: float = Field(7.5e-3, gt=0, description="σ whose CDF·L is the lower clamp of u")
    loss_weight_max: float = Field(1e5, gt=0)
    steps: int = Field(40, ge=2, description="stage-2 Karras grid points before truncation")
    sigma_min: float = Field(0.008, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    rho: float = Field(7.0, gt=0)
    truncation_sigma: float = Field(0.9, gt=0, description="stage 2 starts at the first grid σ below this")
    truncation_t: float = Field(0.93, gt=0, description="L_s of the sampler's blur time u(t)")
    s_noise: float = Field(0.2, ge=0, lt=1, description="fresh-noise fraction of the stage-2 sampler")
    # post-processing of the shipped sampling scripts (1 = off)
    output_contrast: float = Field(1.0, ge=0)
    output_brightness: float = Field(1.0, ge=0)
    output_color: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "RelayConfig":
        if self.resolution % self.up_scale:
            raise ValueError(f"resolution {self.resolution} is not divisible by up_scale {self.up_scale}")
        for f in ("base_unet", "unet"):
            if getattr(self, f) not in UNET_PRESETS:
                raise ValueError(f"{f}: unknown UNet preset {getattr(self, f)!r}; presets: {', '.join(UNET_PRESETS)}")
        if not self.sigma_min < self.truncation_sigma:
            raise ValueError(f"truncation_sigma ({self.truncation_sigma}) must exceed sigma_min ({self.sigma_min})")
        if self.conditioning == "class" and self.num_classes <= 0:
            raise ValueError("conditioning='class' needs num_classes > 0")
        return self

    @property
    def base_resolution(self) -> int:
        return self.resolution // self.up_scale


def _edm_config(cfg: RelayConfig, stage: str) -> EDMConfig:
    """The EDM configuration of one stage's network (stage 1 also uses its loss and sampler settings)."""
    common = dict(channels=cfg.channels, num_classes=cfg.num_classes, conditioning=cfg.conditioning,
                  sigma_data=cfg.sigma_data, P_mean=cfg.P_mean, P_std=cfg.P_std)
    if stage == "base":
        solver = "heun" if cfg.base_solver == "sde_heun" else cfg.base_solver
        return EDMConfig(resolution=cfg.base_resolution, unet=cfg.base_unet, unet_overrides=cfg.base_unet_overrides,
                         label_dropout=cfg.base_label_dropout, sigma_min=cfg.base_sigma_min,
                         sigma_max=cfg.base_sigma_max, rho=cfg.base_rho, steps=cfg.base_steps, solver=solver,
                         S_churn=cfg.S_churn, S_min=cfg.S_min, S_max=cfg.S_max, S_noise=cfg.S_noise, **common)
    return EDMConfig(resolution=cfg.resolution, unet=cfg.unet, unet_overrides=cfg.unet_overrides,
                     label_dropout=cfg.label_dropout, **common)


# ---- stage-1 sampler variant and output post-processing --------------------------------------------

def sde_heun_sampler(denoise, x_init_noise: torch.Tensor, sigmas: torch.Tensor, rng: StackedRandom,
                     sde_scale: float = 0.05, net_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """RDM's CelebA-HQ stage-1 sampler: per step inject ``g = sde_scale·t_{i+1}`` noise and contract by
    ``a = √(t_{i+1}² − g²)/t_i``: ``x' = x + (a−1) t_i d + g ε``; Heun re-does it with the averaged slope
    and fresh noise (not on the last step, where g = 0 and x' = D). Returns (x float64, nfe)."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).to(x_init_noise.device)
    x = x_init_noise.to(torch.float64) * sig[0]
    nfe = 0
    for i in range(sig.numel() - 1):
        t_cur, t_next = sig[i], sig[i + 1]
        denoised, n = call_denoiser(denoise, x, t_cur, net_dtype)
        nfe += n
        d_cur = (x - denoised) / t_cur
        g = sde_scale * t_next
        a = (t_next ** 2 - g ** 2).sqrt() / t_cur
        x_next = x + (a - 1) * t_cur * d_cur + g * rng.randn_like(x)
        if float(t_next) > 0:
            denoised, n = call_denoiser(denoise, x_next, t_next, net_dtype)
            nfe += n
            d_prime = (x_next - denoised) / t_next
            x_next = x + (a - 1) * t_cur * (d_cur + d_prime) / 2 + g * rng.randn_like(x)
        x = x_next
    return x, nfe


def enhance(x: torch.Tensor, contrast: float = 1.0, brightness: float = 1.0, color: float = 1.0) -> torch.Tensor:
    """PIL ImageEnhance Contrast → Brightness → Color on [-1, 1] images (clipped after each, like uint8):
    contrast blends with the image's mean luma, brightness with black, colour with the luma image."""
    v = (x.float() + 1) / 2
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device).reshape(1, 3, 1, 1)
    luma = (lambda t: (t * w).sum(1, keepdim=True)) if x.shape[1] == 3 else (lambda t: t.mean(1, keepdim=True))
    if contrast != 1.0:
        mean = luma(v).mean(dim=(1, 2, 3), keepdim=True)
        v = (mean + contrast * (v - mean)).clamp(0, 1)
    if brightness != 1.0:
        v = (brightness * v).clamp(0, 1)
    if color != 1.0 and x.shape[1] == 3:
        gray = luma(v)
        v = (gray + color * (v - gray)).clamp(0, 1)
    return v * 2 - 1


# ---- the method --------------------------------------------------------------------------------------

def _paper_train(batch: int, images: int, ema_kimg: list[float]) -> dict[str, Any]:
    return dict(batch=batch, lr=1e-4, warmup_images=10_000_000, ema_halflife_kimg=ema_kimg, images=images)


@register
class RelayDiffusion(Method):
    name = "relay"
    Config = RelayConfig
    conditioning = ("none", "class")
    description = "Relay Diffusion: EDM at low resolution, then blurring diffusion with block noise at high resolution"
    paper = "Teng et al. 2023, Relay Diffusion: Unifying diffusion process across resolutions (ICLR 2024)"
    presets = {
        "cpu-tiny": dict(resolution=32, up_scale=2, conditioning="class", num_classes=4, label_dropout=0.1,
                         base_unet="cpu-tiny", unet="cpu-tiny",
                         base_steps=18, steps=40, rho=7.0, truncation_sigma=0.9, truncation_t=0.93,
                         prob_length=0.93, blur_sigma_max=3.0, block_scale=0.15),
        "cpu-demo": dict(resolution=16, up_scale=2, conditioning="class", num_classes=10, label_dropout=0.1,
                         base_unet="cpu-tiny", unet="cpu-tiny",
                         base_steps=18, steps=40, rho=7.0, truncation_sigma=0.9, truncation_t=0.93,
                         prob_length=0.93, blur_sigma_max=3.0, block_scale=0.15),
        "imagenet256": dict(resolution=256, up_scale=4, conditioning="class", num_classes=1000, label_dropout=0.1,
                            base_unet="adm64", base_unet_overrides={"dropout": 0.1},
                            unet="adm256", unet_overrides={"dropout": 0.1},
                            base_steps=256, S_churn=40, S_min=0.05, S_max=50, S_noise=1.003,
                            steps=200, rho=100.0, truncation_sigma=0.9, truncation_t=0.93, prob_length=0.93,
                            blur_sigma_max=3.0, block_scale=0.15, s_noise=0.2, output_brightness=1.06,
                            base_share=0.09, relay_share=0.91),
        "celebahq256": dict(resolution=256, up_scale=4, conditioning="none",
                            base_unet="adm64", base_unet_overrides={"dropout": 0.15},
                            unet="adm256", unet_overrides={"dropout": 0.2},
                            base_steps=120, base_solver="sde_heun", base_sde_scale=0.05,
                            steps=150, rho=7.0, truncation_sigma=0.95, truncation_t=1.05, prob_length=0.89,
                            blur_sigma_max=2.0, block_scale=0.15, s_noise=0.2,
                            output_contrast=0.9, output_brightness=1.05, output_color=0.99,
                            base_share=0.09, relay_share=0.91),
    }
    train_defaults = {
        "cpu-tiny": dict(batch=32, lr=2e-4, warmup_images=2_000, ema_halflife_kimg=[5.0]),
        "cpu-demo": dict(batch=32, lr=1e-3, warmup_images=1_000, ema_halflife_kimg=[2.0]),
        "imagenet256": _paper_train(4096, 1_250_000_000, [50_000.0, 500.0]),
        "celebahq256": _paper_train(1024, 47_000_000, [500.0]),
    }
    deterministic_overrides = {"base_unet_overrides": {"dropout": 0.0}, "unet_overrides": {"dropout": 0.0}}

    def __init__(self, config: RelayConfig):
        super().__init__(config)
        try:
            self.stage1 = EDM(_edm_config(config, "base"))
            self.relay = EDMDenoiser(_edm_config(config, "relay"))
        except ValueError as err:
            raise ConfigError(f"relay: {err}") from None
        self._active: int | None = None          # index of the last stage entered (None: sample both)

    # ---- state --------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"base": self.stage1.denoiser, "relay": self.relay}

    def stages(self) -> list[Stage]:
        cfg = self.config
        return [Stage("base", cfg.base_share, (cfg.base_resolution,), trainable=("base",),
                      enter=partial(self._enter, 0), info={"index": 0}),
                # init_from_ema: the frozen base holds its EMA weights through stage 2 (what is sampled).
                Stage("relay", cfg.relay_share, (cfg.resolution,), trainable=("relay",),
                      enter=partial(self._enter, 1), init_from_ema=True, info={"index": 1})]

    def _enter(self, index: int) -> None:
        self._active = index

    # ---- training -----------------------------------------------------------------------------
    def loss(self, batch: Batch, stage: Stage) -> tuple[torch.Tensor, dict[str, float]]:
        if stage.name == "base":
            return self.stage1.loss(batch, stage)
        return self.relay_loss(batch)

    def relay_inputs(self, y: torch.Tensor, rng: StackedRandom
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw u, ε, ε' from the per-example streams (in that order) and build the blurred noisy input.
        Returns (x = blur_u(y) + σ(ε + s_blk ε_blk), σ (N,), σ_B (N,), u (N,)), float64 schedules."""
        cfg, n = self.config, y.shape[0]
        u_floor = train_u_floor(cfg.P_mean, cfg.P_std, cfg.prob_length, cfg.train_sigma_floor)
        u = rng.rand((n,), dtype=torch.float64).to(y.device).clamp(min=u_floor)
        sigma = truncated_lognormal_sigma(u, cfg.P_mean, cfg.P_std, cfg.prob_length)
        sig_b = blur_sigma(u, cfg.blur_sigma_max)
        eps = rng.randn(y.shape).to(y.device)
        eps_blk = block_noise(rng.randn(y.shape).to(y.device), cfg.up_scale)
        noise = (eps + cfg.block_scale * eps_blk) * sigma.to(y.dtype).reshape(-1, 1, 1, 1)
        blurred = dct_blur(y.to(torch.float64), cfg.up_scale, sig_b, cfg.min_scale).to(y.dtype)
        return blurred + noise, sigma, sig_b, u

    def relay_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, y, rng = self.config, batch.top(), batch.rng
        if y.shape[-1] != cfg.resolution:
            raise ConfigError(f"relay stage: expected {cfg.resolution}-px images, the batch carries {y.shape[-1]} px")
        labels, text = drop_condition(batch.labels, batch.text, cfg.label_dropout, rng)
        x, sigma, sig_b, _ = self.relay_inputs(y.float(), rng)
        D = self.relay(x, sigma.float(), labels, text)
        weight = edm_loss_weight(sigma, cfg.sigma_data).clamp(max=cfg.loss_weight_max).float().reshape(-1, 1, 1, 1)
        per_example = (weight * (D - y) ** 2).mean(dim=(1, 2, 3))
        return per_example.mean(), {"sigma_mean": sigma.detach().mean(), "blur_sigma_mean": sig_b.detach().mean()}

    # ---- sampling -----------------------------------------------------------------------------
    def default_steps(self) -> int:
        return self.config.base_steps

    def _steps(self, steps: int | None) -> tuple[int, int]:
        return relay_steps(self.config, steps)

    def sample_base(self, rng: StackedRandom, cond: Condition, steps: int) -> tuple[torch.Tensor, int]:
        """Stage 1 at the low resolution: float64, not clamped (handed on as the official code does)."""
        cfg, n, r = self.config, len(rng), self.config.base_resolution
        sigmas = karras_sigmas(steps, cfg.base_sigma_min, cfg.base_sigma_max, cfg.base_rho).to(self.device)
        noise = rng.randn((n, cfg.channels, r, r)).to(self.device)
        denoise = self.stage1.denoise_fn(cond, cfg.base_guidance)
        guided_mult = 2 if cfg.base_guidance != 1.0 and (cond.labels is not None or cond.text is not None) else 1
        if cfg.base_solver == "sde_heun":
            x, nfe = sde_heun_sampler(denoise, noise, sigmas, rng, cfg.base_sde_scale)
        else:
            x, nfe = edm_sampler(denoise, noise.double(), sigmas, rng=rng, S_churn=cfg.S_churn, S_min=cfg.S_min,
                                 S_max=cfg.S_max, S_noise=cfg.S_noise, solver=cfg.base_solver)
        return x, nfe * guided_mult

    def upsample(self, x_low: torch.Tensor) -> torch.Tensor:
        """Nearest ×s (F.interpolate's default mode, as the official scripts)."""
        return F.interpolate(x_low, scale_factor=self.config.up_scale, mode="nearest")

    def blur_factors_at(self, t: torch.Tensor) -> torch.Tensor:
        """Â_t: the (s, s) blur factors of the sampler at noise level t."""
        cfg = self.config
        u = sampler_u(t, cfg.P_mean, cfg.P_std, cfg.truncation_t)
        return blur_factors(blur_sigma(u, cfg.blur_sigma_max), cfg.up_scale, cfg.min_scale)

    def relay_noise(self, rng: StackedRandom, like: torch.Tensor) -> torch.Tensor:
        """A fresh ``ε + s_blk·ε_blk`` (ε drawn first, then the field ε' of the block noise)."""
        eps = rng.randn_like(like)
        return eps + self.config.block_scale * block_noise(rng.randn_like(like), self.config.up_scale)

    def _relay_denoiser(self, cond: Condition, guidance: float):
        use_cfg = guidance != 1.0 and (cond.labels is not None or cond.text is not None)
        unc = null_condition(cond, 0)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, int]:
            if not use_cfg:
                return self.relay(x, sigma, cond.labels, cond.text), 1
            return guided(self.relay, x, (sigma, cond.labels, cond.text), (sigma, unc.labels, unc.text), guidance)
        return denoise

    def sample_relay(self, x_low: torch.Tensor, rng: StackedRandom, cond: Condition, grid_points: int,
                     guidance: float = 1.0) -> tuple[torch.Tensor, int]:
        """Stage 2 from a stage-1 sample: start at up(x_low) + t_0(ε + s_blk ε_blk), blur-aware Heun."""
        cfg = self.config
        grid = truncated_karras_grid(grid_points, cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.truncation_sigma)
        return blur_heun_sampler(self._relay_denoiser(cond, guidance), self.upsample(x_low), grid.to(self.device),
                                 self.blur_factors_at, partial(self.relay_noise, rng), cfg.up_scale, cfg.s_noise)

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = x.float().clamp(-1, 1)
        if (cfg.output_contrast, cfg.output_brightness, cfg.output_color) != (1.0, 1.0, 1.0):
            x = enhance(x, cfg.output_contrast, cfg.output_brightness, cfg.output_color)
        return x.clamp(-1, 1)

    @torch.no_grad()
    def sample(self, rng: StackedRandom, cond: Condition | None = None, steps: int | None = None,
               guidance: float = 1.0) -> tuple[torch.Tensor, int]:
        cond = cond or Condition()
        n1, n2 = self._steps(steps)
        x_low, nfe1 = self.sample_base(rng, cond, n1)
        if self._active == 0:                    # only stage 1 trained so far: the fully blurred state
            return self.postprocess(self.upsample(x_low.float().clamp(-1, 1))), nfe1
        x, nfe2 = self.sample_relay(x_low, rng, cond, n2, guidance)
        return self.postprocess(x), nfe1 + nfe2

    def sampling_nfe(self, steps: int | None = None, guidance: float = 1.0, conditional: bool = True) -> int:
        return relay_nfe(self.config, steps, guidance, conditional)


def relay_steps(cfg: RelayConfig, steps: int | None) -> tuple[int, int]:
    """(stage-1 steps, stage-2 grid points): ``steps`` sets stage 1; the stage-2 grid scales with it."""
    if steps is None:
        return cfg.base_steps, cfg.steps
    return int(steps), max(2, round(cfg.steps * steps / cfg.base_steps))


def relay_nfe(cfg: RelayConfig, steps: int | None = None, guidance: float = 1.0, conditional: bool = True) -> int:
    """NFE per image without building the networks: stage 1 (Heun / SDE-Heun 2N−1, Euler N) + stage 2
    (2K−1 over the K grid points below truncation), each doubled where guided."""
    n1, n2 = relay_steps(cfg, steps)
    k = truncated_karras_grid(n2, cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.truncation_sigma).numel() - 1
    first = n1 if cfg.base_solver == "euler" else 2 * n1 - 1
    first *= 2 if cfg.base_guidance != 1.0 and conditional else 1
    return first + (2 * k - 1) * (2 if guidance != 1.0 and conditional else 1)

__all__ = ["RelayConfig", "RelayDiffusion", "relay_steps", "relay_nfe", "sde_heun_sampler", "enhance"]
