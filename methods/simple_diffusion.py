"""simple diffusion (SiD1; Hoogeboom, Heek, Salimans, ICML 2023; CARDS.md §3). No official code.

What this adapter implements (each mechanism is tested in tests/test_simple_diffusion.py):
- Continuous-time VP process ``z_t = α_t x + σ_t ε``, t ~ U(0, 1), ``α_t² = sigmoid(λ(t))`` with the cosine
  logSNR clipped to [−15, 15] and one of three schedules (bench.diffusion.schedules):
  ``cosine`` (unshifted), ``shifted`` (``+ 2 log(ref/d)``), ``interpolated``
  (``t·λ_shift(ref_low) + (1−t)·λ_shift(ref_high)``: the strong shift of the low reference at high noise).
- v-prediction, loss = unweighted MSE in ε-space with ``ε̂ = σ z + α v̂`` (no min-SNR weighting).
- Multiscale loss ``L = Σ_s (1/s)·L^{s×s}`` over ``multiscale`` sizes s, where L^{s×s} is the MSE between the
  s×s average-pooled ε and ε̂ (the same ε pooled). ``multiscale: null`` = the plain full-resolution MSE.
- U-ViT (bench.nets.uvit): conv ResBlock stages down to a low grid, transformer stack there, mirrored up path
  with skips; dropout only on grids ≤ ``dropout_max_res`` (never the top grid); optional input DWT (Haar or
  LeGall 5/3, sub-bands on channels, inverse at the output) or patching.
- Sampler: DDPM ancestral steps on a uniform-in-t grid of the training schedule, x̂ = α z − σ v̂ clipped to
  [−1, 1]. Unguided by default (SiD1 reports unguided numbers); CFG (on v̂, one batched call = 2 NFE) when
  guidance ≠ 1 and the model was trained with label_dropout > 0.

Open choices, written down:
- Noise conditioning: the network is fed the logSNR λ(t) (sinusoidal embedding of the raw value).
- L^{s×s} is the mean over channels and pixels of the pooled squared error (the card's 1/s² with a mean over C).
- Sampling: ``steps`` network calls at t = 1, 1 − 1/steps, …, 1/steps; the last step goes to λ = +inf and so
  returns the clipped x̂ itself rather than z at t = 0 (α(0) ≈ 1, σ(0) < 2e-3 for the shifts used here).
- The start latent is unit Gaussian noise (α(1)² < 1e-6 for every preset).
- Paper presets: the U-ViT of the 2B ImageNet-256 model (36 transformer blocks of width 2048 at 16×16 ≈ 2B
  params, matching the ~2B of W.A.L.T Table 2); conv stage widths / blocks, heads, dropout 0.1, the use of the
  multiscale loss at 256 (on) and 128 (off), and the 512 input transform (LeGall 5/3, one level, then the 256
  body) are our choices where the card is silent. Schedule references: shifted with ref 64 (128, 256);
  interpolated 32 → 256 for 512 (the card's recollection).
- Text-to-image (``coco256``; CARDS §3 is silent on the text path beyond "T5-XXL + cross-attention"): the
  T5-XXL encoder's token sequence (text_dim 4096, up to 128 tokens — our choice) enters every transformer block
  of the 16×16 stack through a pre-LN cross-attention sub-layer, its masked mean is added to the conditioning
  embedding, the conv stages see it only through that embedding. Null text for CFG dropout: the paper does
  not say and there is no code; we use a learned null token (``null_text: learned``; ``zero`` = a fixed zero
  token). CFG dropout 0.1 and the 128-token length are ours. ``text_conditioning: pooled`` keeps the single
  pooled open_clip vector.
- train_defaults: batch 2048 and 500K steps (card, 256 model), also used for 128 / 512 (REG lists 800
  epochs ≈ 1.0B images at 512, the same count); lr 1e-4, 10k warm-up steps, EMA 0.9999 per step and bf16
  are not in the card (our choice).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator

from bench.diffusion.guidance import v_prediction_x_fn
from bench.diffusion.param import eps_from_v
from bench.diffusion.rng import StackedRandom
from bench.diffusion.samplers import vp_ancestral_sampler
from bench.diffusion.schedules import (alpha_sigma_from_logsnr, logsnr_cosine, logsnr_cosine_interpolated,
                                       logsnr_cosine_shifted)
from bench.method import Batch, Condition, ConfigError, Method, MethodConfig, Stage, register, validate_model
from bench.nets.uvit import UViT, UViTConfig
from methods._text import TextOptions
from methods.edm import drop_condition

SCHEDULES = ("cosine", "shifted", "interpolated")

# ---- U-ViT sizes -------------------------------------------------------------------------------------

# Toy: Haar DWT 32→16 (12 channels), one conv stage at 16, transformer (2 blocks, width 128) at 8×8.
# Widths 64 keep 4 channels per GroupNorm group (see bench.nets.unet.group_norm).
_TINY_UVIT = dict(channels=(64,), num_blocks=1, transformer_width=128, transformer_depth=2, heads=4,
                  dropout=0.1, dropout_max_res=8, input_transform="haar")
# The ~2B ImageNet-256 U-ViT body: conv stages 256→128→64→32, transformer 36 × 2048 at 16×16.
_UVIT_BODY = dict(num_blocks=2, transformer_width=2048, transformer_depth=36, heads=16, dropout=0.1,
                  dropout_max_res=16)
UVIT_PRESETS: dict[str, dict[str, Any]] = {
    "cpu-tiny": _TINY_UVIT,
    "uvit128": dict(_UVIT_BODY, channels=(128, 256, 512)),
    "uvit256": dict(_UVIT_BODY, channels=(128, 256, 512, 768)),
    "uvit512": dict(_UVIT_BODY, channels=(128, 256, 512, 768), input_transform="legall53", transform_levels=1),
}


class SimpleDiffusionConfig(TextOptions):
    uvit: str | dict[str, Any] = "cpu-tiny"         # UVIT_PRESETS key or UViTConfig fields
    uvit_overrides: dict[str, Any] = {}
    schedule: str = "shifted"                         # cosine | shifted | interpolated
    ref_resolution: int = Field(64, ge=1, description="reference resolution of the shifted schedule")
    ref_low: int = Field(32, ge=1, description="interpolated: reference at high noise (t → 1)")
    ref_high: int = Field(256, ge=1, description="interpolated: reference at low noise (t → 0)")
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    multiscale: list[int] | None = None              # pooled sizes s of the multiscale loss (None: plain MSE)
    steps: int = Field(512, ge=1, description="default sampling steps (= NFE unguided)")
    clip_x: bool = True

    @field_validator("uvit")
    @classmethod
    def _uvit(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        if isinstance(v, str) and v not in UVIT_PRESETS:
            raise ValueError(f"unknown U-ViT preset {v!r}; presets: {', '.join(UVIT_PRESETS)}")
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        if v not in SCHEDULES:
            raise ValueError(f"expected one of {', '.join(SCHEDULES)}, got {v!r}")
        return v

    @field_validator("multiscale")
    @classmethod
    def _multiscale(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        d = info.data.get("resolution")
        if v is None or d is None:
            return v
        if not v or any(s < 1 or s > d or d % s for s in v):
            raise ValueError(f"expected sizes that divide the resolution {d}")
        if max(v) != d or len(set(v)) != len(v):
            raise ValueError(f"expected distinct sizes ending at the resolution {d}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "SimpleDiffusionConfig":
        if self.schedule == "interpolated" and self.ref_low > self.ref_high:
            raise ValueError(f"ref_low ({self.ref_low}) must be <= ref_high ({self.ref_high})")
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"logsnr_min ({self.logsnr_min}) must be < logsnr_max ({self.logsnr_max})")
        return self


def multiscale_sizes(resolution: int, lowest: int = 32) -> list[int]:
    """The paper's multiscale set {lowest, 2·lowest, …, resolution}."""
    sizes, s = [], resolution
    while s >= lowest:
        sizes.append(s)
        s //= 2
    return sorted(sizes)


# ---- the process (pure functions, tested against the card) -------------------------------------------

def sid_logsnr(t: torch.Tensor | float, cfg: SimpleDiffusionConfig) -> torch.Tensor:
    """λ(t) of the configured schedule (float64 for numbers, t's dtype for float tensors)."""
    lo, hi, d = cfg.logsnr_min, cfg.logsnr_max, cfg.resolution
    if cfg.schedule == "cosine":
        return logsnr_cosine(t, lo, hi)
    if cfg.schedule == "shifted":
        return logsnr_cosine_shifted(t, d, cfg.ref_resolution, lo, hi)
    return logsnr_cosine_interpolated(t, d, cfg.ref_low, cfg.ref_high, lo, hi)


def multiscale_eps_loss(eps: torch.Tensor, eps_hat: torch.Tensor, sizes: list[int] | None
                        ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Per-example ``Σ_s (1/s)·mean((pool_s ε − pool_s ε̂)²)`` (plain mean squared error when ``sizes`` is
    None) and the per-size terms (batch means). Pooling is average pooling to s×s."""
    if sizes is None:
        per = ((eps_hat - eps) ** 2).mean(dim=(1, 2, 3))
        return per, {eps.shape[-1]: per.mean()}
    d = eps.shape[-1]
    total = torch.zeros(eps.shape[0], dtype=eps.dtype, device=eps.device)
    terms: dict[int, torch.Tensor] = {}
    for s in sizes:
        k = d // s
        diff = eps_hat - eps if k == 1 else F.avg_pool2d(eps_hat, k) - F.avg_pool2d(eps, k)
        term = (diff ** 2).mean(dim=(1, 2, 3))
        total = total + term / s
        terms[s] = term.mean()
    return total, terms


def sampling_logsnr_grid(cfg: SimpleDiffusionConfig, steps: int) -> torch.Tensor:
    """Increasing logSNR grid: λ(t) at t = 1, 1 − 1/steps, …, 1/steps, then +inf (the final x̂)."""
    if steps < 1:
        raise ConfigError(f"steps: expected a positive integer, got {steps}")
    t = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
    lam = sid_logsnr(t, cfg)
    return torch.cat([lam, torch.tensor([float("inf")], dtype=torch.float64)])


class VPredictor(torch.nn.Module):
    """v̂(z, λ): the U-ViT fed the logSNR as its noise label."""

    def __init__(self, cfg: SimpleDiffusionConfig):
        super().__init__()
        base = UVIT_PRESETS[cfg.uvit] if isinstance(cfg.uvit, str) else cfg.uvit
        ucfg = validate_model(UViTConfig, {**base, **cfg.uvit_overrides}, prefix="method.uvit.")
        try:
            self.net = UViT(cfg.resolution, cfg.channels, cfg.num_classes,
                            cfg.text_dim if cfg.conditioning == "text" else 0, ucfg, cfg.text_mode(),
                            null_text=cfg.null_text)
        except ValueError as err:   # shape problems found while building (resolution, dropout placement)
            raise ConfigError(f"method.uvit: {err}") from None

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> torch.Tensor:
        lam = logsnr.float().reshape(-1).expand(z.shape[0]) if logsnr.numel() == 1 else logsnr.float()
        return self.net(z, lam, labels, text)


@register
class SimpleDiffusion(Method):
    name = "simple"
    Config = SimpleDiffusionConfig
    conditioning = ("none", "class", "text")
    description = "simple diffusion: shifted cosine logSNR, v-pred ε-loss, multiscale loss, U-ViT with DWT input"
    paper = "Hoogeboom, Heek, Salimans 2023, simple diffusion: End-to-end diffusion for high resolution images"
    presets = {
        "cpu-tiny": dict(resolution=32, uvit="cpu-tiny", schedule="shifted", ref_resolution=16,
                         multiscale=[8, 16, 32], steps=64),
        "cpu-tiny-interp": dict(resolution=32, uvit="cpu-tiny", schedule="interpolated", ref_low=8, ref_high=32,
                                multiscale=[8, 16, 32], steps=64),
        "cpu-tiny-cond": dict(resolution=32, uvit="cpu-tiny", schedule="shifted", ref_resolution=16,
                              multiscale=[8, 16, 32], steps=64, conditioning="class", num_classes=4,
                              label_dropout=0.1),
        "cpu-demo": dict(resolution=16, uvit=dict(_TINY_UVIT, dropout_max_res=4), schedule="shifted",
                         ref_resolution=8, multiscale=[4, 8, 16], steps=64, conditioning="class", num_classes=10,
                         label_dropout=0.1),
        "imagenet128": dict(resolution=128, conditioning="class", num_classes=1000, uvit="uvit128",
                            schedule="shifted", ref_resolution=64, multiscale=None, steps=512),
        "imagenet256": dict(resolution=256, conditioning="class", num_classes=1000, uvit="uvit256",
                            schedule="shifted", ref_resolution=64, multiscale=multiscale_sizes(256), steps=512),
        "imagenet512": dict(resolution=512, conditioning="class", num_classes=1000, uvit="uvit512",
                            schedule="interpolated", ref_low=32, ref_high=256, multiscale=multiscale_sizes(512),
                            steps=512),
        # Text-to-image at 256 (COCO FID-30K): the 256 U-ViT cross-attending to T5-XXL tokens (d_model 4096).
        "coco256": dict(resolution=256, conditioning="text", text_conditioning="tokens", text_dim=4096,
                        text_length=128, label_dropout=0.1, uvit="uvit256", schedule="shifted", ref_resolution=64,
                        multiscale=multiscale_sizes(256), steps=512),
    }
    _tiny_train = dict(batch=32, lr=2e-4, warmup_images=2_000, ema_halflife_kimg=[5.0])
    # Batch 2048 × 500K steps (card); EMA 0.9999 per step as a half-life of 2048·ln½/ln 0.9999 images.
    _paper_train = dict(batch=2048, lr=1e-4, warmup_images=10_000 * 2048, images=500_000 * 2048,
                        ema_halflife_kimg=[2048 * 6931.1 / 1000.0], ema_rampup=None, precision="bf16")
    train_defaults = {
        "cpu-tiny": _tiny_train, "cpu-tiny-interp": _tiny_train, "cpu-tiny-cond": _tiny_train,
        "cpu-demo": dict(batch=32, lr=1e-3, warmup_images=1_000, ema_halflife_kimg=[2.0]),
        "imagenet128": _paper_train, "imagenet256": _paper_train, "imagenet512": _paper_train,
        "coco256": _paper_train,
    }
    deterministic_overrides = {"uvit_overrides": {"dropout": 0.0}}

    def __init__(self, config: SimpleDiffusionConfig):
        super().__init__(config)
        if config.conditioning == "class" and config.num_classes <= 0:
            raise ConfigError("simple: conditioning='class' needs num_classes > 0")
        if config.conditioning == "text" and config.text_dim <= 0:
            raise ConfigError("simple: conditioning='text' needs text_dim > 0 (the caption encoder's width)")
        self.model = VPredictor(config)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def stages(self) -> list[Stage]:
        return [Stage("main", 1.0, (self.config.resolution,))]

    def logsnr(self, t: torch.Tensor | float) -> torch.Tensor:
        return sid_logsnr(t, self.config)

    def loss(self, batch: Batch, stage: Stage) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, x, rng = self.config, batch.top(), batch.rng
        n = x.shape[0]
        labels, text = drop_condition(batch.labels, batch.text, cfg.label_dropout, rng)
        t = rng.rand((n,), dtype=torch.float64).to(x.device)
        lam = self.logsnr(t)
        alpha, sigma = (c.to(x.dtype) for c in alpha_sigma_from_logsnr(lam))
        eps = rng.randn(x.shape).to(x.device, x.dtype)
        a, s = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
        z = a * x + s * eps
        v_hat = self.model(z, lam, labels, text).float()
        eps_hat = eps_from_v(z.float(), v_hat, alpha.float(), sigma.float())
        per_example, terms = multiscale_eps_loss(eps.float(), eps_hat, cfg.multiscale)
        logs = {f"loss_{s}": v.detach() for s, v in terms.items()}
        logs["logsnr_mean"] = lam.detach().mean()
        return per_example.mean(), logs

    def default_steps(self) -> int:
        return self.config.steps

    def predict_x_fn(self, cond: Condition | None, guidance: float):
        """x̂(z, λ) = α z − σ v̂, with CFG on v̂ when guided (one batched call, 2 NFE)."""
        return v_prediction_x_fn(self.model, cond, guidance)

    @torch.no_grad()
    def sample(self, rng: StackedRandom, cond: Condition | None = None, steps: int | None = None,
               guidance: float = 1.0) -> tuple[torch.Tensor, int]:
        cfg = self.config
        grid = sampling_logsnr_grid(cfg, steps or cfg.steps)
        z = rng.randn((len(rng), cfg.channels, cfg.resolution, cfg.resolution)).to(self.device)
        x, nfe = vp_ancestral_sampler(self.predict_x_fn(cond, guidance), z, grid, rng, clip_x=cfg.clip_x)
        return x.float().clamp(-1, 1), nfe
