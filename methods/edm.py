"""EDM baseline (Karras, Aittala, Aila, Laine 2022): preconditioning, lognormal σ, λ(σ)-weighted loss,
Heun sampler with stochastic churn (Alg. 2). CARDS.md §1.

Open choices, written down:
- the loss is the per-element mean of λ(σ)·‖D − y‖² (EDM sums and scales by a constant; only the LR scale differs);
- `imagenet256` has no EDM paper config: ADM-256 architecture with the ImageNet-64 sampler settings;
- CFG (guidance != 1) needs label_dropout > 0 in training; EDM itself trains without it (guidance 1).
"""
from __future__ import annotations

from typing import Any

import torch

from bench.diffusion.edm import edm_loss_weight, edm_precond, edm_sampler, karras_sigmas, lognormal_sigma
from bench.diffusion.guidance import cfg_combine
from bench.diffusion.rng import StackedRandom
from bench.method import Batch, Condition, Method, MethodConfig, Stage, register
from bench.nets.unet import build_unet


class EDMConfig(MethodConfig):
    unet: str = "cpu-tiny"                       # bench.nets.unet.UNET_PRESETS key
    unet_overrides: dict[str, Any] = {}
    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    steps: int = 18                              # sampler steps N (NFE = 2N - 1 with Heun)
    solver: str = "heun"
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = float("inf")
    S_noise: float = 1.0


class EDMDenoiser(torch.nn.Module):
    """D(x; σ) = c_skip x + c_out F(c_in x; c_noise), computed in float32 around the backbone."""

    def __init__(self, cfg: EDMConfig, out_channels: int | None = None):
        super().__init__()
        self.sigma_data = cfg.sigma_data
        self.net = build_unet(cfg.resolution, cfg.unet, in_channels=cfg.channels,
                              out_channels=out_channels or cfg.channels, num_classes=cfg.num_classes,
                              text_dim=cfg.text_dim if cfg.conditioning == "text" else 0, **cfg.unet_overrides)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> torch.Tensor:
        sigma = sigma.float().reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        c_skip, c_out, c_in, c_noise = edm_precond(sigma, self.sigma_data)
        F_x = self.net((c_in * x).float(), c_noise.reshape(-1), labels, text)
        return c_skip * x.float() + c_out * F_x.float()


def drop_condition(labels: torch.Tensor | None, text: torch.Tensor | None, p: float,
                   rng: StackedRandom) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Label dropout for classifier-free guidance: dropped labels become -1 (null), dropped text zeros."""
    if p <= 0:
        return labels, text
    drop = rng.rand((len(rng),)) < p
    if labels is not None:
        labels = torch.where(drop.to(labels.device), torch.full_like(labels, -1), labels)
    if text is not None:
        keep = (~drop).to(text.device, text.dtype).reshape(-1, *([1] * (text.ndim - 1)))
        text = text * keep
    return labels, text


def null_condition(cond: Condition, n: int = 0) -> Condition:
    return cond.null()


def edm_loss(denoiser: torch.nn.Module, batch: Batch, cfg: EDMConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """EDM's loss: ln σ ~ N(P_mean, P_std²), λ(σ)·‖D(y + σn; σ) − y‖² (per-element mean), label dropout."""
    y, rng = batch.top(), batch.rng
    labels, text = drop_condition(batch.labels, batch.text, cfg.label_dropout, rng)
    sigma = lognormal_sigma(rng.randn((y.shape[0],)), cfg.P_mean, cfg.P_std).to(y.device)
    noise = rng.randn(y.shape).to(y.device) * sigma.reshape(-1, 1, 1, 1)
    D = denoiser(y + noise, sigma, labels, text)
    weight = edm_loss_weight(sigma, cfg.sigma_data).reshape(-1, 1, 1, 1)
    per_example = (weight * (D - y) ** 2).mean(dim=(1, 2, 3))
    return per_example.mean(), {"sigma_mean": sigma.detach().mean()}


@register
class EDM(Method):
    name = "edm"
    Config = EDMConfig
    conditioning = ("none", "class", "text")
    description = "EDM baseline: preconditioned denoiser, lognormal σ, Heun + churn sampler"
    paper = "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models"
    presets = {
        "cpu-tiny": dict(resolution=32, unet="cpu-tiny", steps=18),
        "cpu-tiny-cond": dict(resolution=32, unet="cpu-tiny", steps=18, conditioning="class", num_classes=4,
                              label_dropout=0.1),
        # the demo / `bench sanity` scale: 16-px clip art, 10 classes (README "Learning evidence")
        "cpu-demo": dict(resolution=16, unet="cpu-tiny", steps=18, conditioning="class", num_classes=10),
        "imagenet64": dict(resolution=64, conditioning="class", num_classes=1000, unet="adm64",
                           unet_overrides={"dropout": 0.10}, steps=256, S_churn=40, S_min=0.05, S_max=50,
                           S_noise=1.003),
        "imagenet256": dict(resolution=256, conditioning="class", num_classes=1000, unet="adm256",
                            unet_overrides={"dropout": 0.10}, steps=256, S_churn=40, S_min=0.05, S_max=50,
                            S_noise=1.003),
    }
    # Training settings of the paper per preset (applied by suites unless overridden). CARDS.md §1.
    train_defaults = {
        "cpu-tiny": dict(batch=32, lr=2e-4, warmup_images=2_000, ema_halflife_kimg=[5.0]),
        "cpu-demo": dict(batch=32, lr=1e-3, warmup_images=1_000, ema_halflife_kimg=[2.0]),
        "imagenet64": dict(batch=4096, lr=1e-4, warmup_images=10_000_000, ema_halflife_kimg=[50_000.0],
                           images=2_500_000_000),
    }

    deterministic_overrides = {"unet_overrides": {"dropout": 0.0}}

    def __init__(self, config: EDMConfig):
        super().__init__(config)
        self.denoiser = EDMDenoiser(config)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"denoiser": self.denoiser}

    def stages(self) -> list[Stage]:
        return [Stage("main", 1.0, (self.config.resolution,))]

    def loss(self, batch: Batch, stage: Stage) -> tuple[torch.Tensor, dict[str, float]]:
        return edm_loss(self.denoiser, batch, self.config)

    def default_steps(self) -> int:
        return self.config.steps

    def denoise_fn(self, cond: Condition | None, guidance: float):
        """D(x; σ) with optional classifier-free guidance (one batched call for cond + uncond)."""
        cond = cond or Condition()

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            if guidance == 1.0 or (cond.labels is None and cond.text is None):
                return self.denoiser(x, sigma, cond.labels, cond.text)
            unc = null_condition(cond, x.shape[0])
            cat = lambda a, b: None if a is None else torch.cat([a, b])  # noqa: E731
            both = self.denoiser(torch.cat([x, x]), sigma, cat(cond.labels, unc.labels), cat(cond.text, unc.text))
            d_cond, d_uncond = both.chunk(2)
            return cfg_combine(d_uncond, d_cond, guidance)
        return denoise

    @torch.no_grad()
    def sample(self, rng: StackedRandom, cond: Condition | None = None, steps: int | None = None,
               guidance: float = 1.0) -> tuple[torch.Tensor, int]:
        cfg = self.config
        n = len(rng)
        sigmas = karras_sigmas(steps or cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).to(self.device)
        noise = rng.randn((n, cfg.channels, cfg.resolution, cfg.resolution)).to(self.device)
        x, nfe = edm_sampler(self.denoise_fn(cond, guidance), noise, sigmas, rng=rng, S_churn=cfg.S_churn,
                             S_min=cfg.S_min, S_max=cfg.S_max, S_noise=cfg.S_noise, solver=cfg.solver)
        guided = guidance != 1.0 and cond is not None and (cond.labels is not None or cond.text is not None)
        return x.float().clamp(-1, 1), nfe * (2 if guided else 1)
