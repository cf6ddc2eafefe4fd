"""Matryoshka Diffusion Models (Gu, Zhai, Zhang, Susskind, Jaitly, ICLR 2024; CARDS.md §4; apple/ml-mdm).

What this adapter implements (each mechanism is tested in tests/test_matryoshka.py):
- NestedUNet (bench.nets.nested_unet): a base UNet at the lowest resolution wrapped by attention-free
  outer ResBlock levels, joined by zero-initialised in / out adapters; recursion to 3 levels.
- Extended-space forward process: ONE time index t per example shared by all levels, INDEPENDENT noise
  per level, ``z^r = sqrt(γ^r) D^r(x) + sqrt(1 − γ^r) ε^r`` with D^r the average pooling (done by the
  loader). γ is the iDDPM cosine ᾱ with γ_0 = 1 prepended (T = 1000); training draws t ∈ {0..T−1},
  uses γ[t+1] and feeds the raw integer t to the network. Level r with size ratio s_r to the lowest
  level uses SNR/s_r^p (p = ``shift_power`` of the stage: 1 in the released 64→256 model, 2 in 1024).
- v-prediction converted to ε, per-level ε-MSE (mean over C, H, W), ``Σ_r w_r MSE_r`` with weights
  given highest resolution first; ``mixed_ratio``: the level-r branch runs on the first
  floor(m_r N) examples of the (local) batch (m_r the cumulative fraction), its loss divided by m_r.
- Progressive training as stages: stage k trains the k lowest levels (stage 1 = the base UNet alone at
  the lowest resolution). The whole nested network exists from the start; a stage only adds levels to
  the loss, so the outer levels keep their initial weights (and zero adapters) until their stage:
  at its start the grown model computes exactly the previous stage's low-resolution function.
- Joint sampler: all levels denoised in parallel with their own γ^r on the resampled grid
  ``t_k = round(k (T+1)/(n+1))``; x̂ from v̂, clipped; DDPM posterior (or DDIM η); CFG on v (one batched
  cond + uncond call = 2 NFE); class- and text-conditional.
- Text (``text_conditioning: tokens``, presets ``coco256`` / ``cc12m256``; released cc12m configs): flan-t5-xl
  token features (d_model 2048, up to 128 tokens: ``max_token_length: 128``) projected by a linear ``lm_proj``
  to 2048 (``conditioning_feature_proj_dim``); their masked mean goes through the condition embedding into the
  time embedding (``forward_conditioning``); every attention layer of the inner UNet cross-attends to them
  with shared queries, self- and cross-attention outputs summed before the zero-init output conv, then an
  attention FFN (``use_attention_ffn``); 1 attention layer per ResBlock at 32×32 and 5 at 16×16
  (``num_attention_layers [0, 1, 5]``). The outer levels (attention-free) see the caption only through the
  pooled vector (``skip_cond_emb``). ``pooled`` (``t2i256`` / ``t2i1024``) keeps one pooled vector.

Open choices, written down:
- Stage shares are not in the paper's text: presets split the budget equally between stages.
- During an early stage (fewer levels than the model has), ``sample`` runs the levels trained so far
  and upsamples (bilinear) the highest of them to the target resolution, so intermediate checkpoints
  give meaningful images; a method that entered no stage samples with every level.
- The stages' ``mixed_ratio`` prefix is taken per local batch (per GPU, as in the official code), so a
  DDP run differs from one process with the same global batch; ``use_mixed_ratio: false`` (the
  ``deterministic_overrides``) switches it off for the DDP-equivalence check.
- Outer levels share the base UNet's embedding width and add its class / pooled-text vector to their
  own time embedding (MDM ``skip_cond_emb``); the base UNet is bench.nets.unet.UNet with strided-conv
  resampling. The "scale" micro-conditioning is NOT built. Padding tokens are always masked out of the
  cross-attention (the released 256 inner UNet has ``masked_cross_attention: 0`` and attends to T5's pad
  outputs; we mask them, as the issue asks, and our cache stores pads as zero rows, not T5 pad outputs).
- Null text (CFG): the released trainer / reader apply no caption dropout we could find, and its
  unconditional branch at sampling is the negative prompt "low quality" (clis/generate_batch.py). We train
  with ``label_dropout`` (0.1, ours) and drop to a learned null token (``null_text: learned``; ``zero`` = a
  fixed zero token); the empty-caption / negative-prompt encoding is not wired (it needs the trainer to hand
  the data's encoding of that prompt to the method).
- ``t2i1024``'s 256-level divides its input by the per-sample std (``skip_normalization: false`` in the
  released 1024 config) in both its stages; in the release it was off while the 256 model trained.
- train_defaults: lr 5e-5, warm-up 10k steps, grad-clip 2, AdamW (wd 0), EMA 0.9999 per step without
  ramp-up turned into an image half-life (batch × 6931); global batches (256 for 256 px, 128 for
  1024 px) and total images are not in the released configs → our choice / unset.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bench.diffusion.guidance import guided
from bench.diffusion.rng import StackedRandom
from bench.diffusion.samplers import ddim_step, ddpm_posterior_gamma_step
from bench.diffusion.schedules import mdm_gammas, resampled_timesteps, shift_gamma
from bench.method import Batch, Condition, ConfigError, Method, MethodConfig, Stage, register
from bench.nets.nested_unet import NestedUNet, OuterLevelConfig
from bench.nets.unet import UNET_PRESETS, UNetConfig, build_unet
from methods._text import TextOptions
from methods.edm import drop_condition, null_condition


class MDMStage(BaseModel):
    """One progressive-training stage: how many levels (from the lowest) are trained, and its loss."""

    model_config = ConfigDict(extra="forbid")

    levels: int = Field(..., ge=1, description="levels trained (1 = the base UNet alone)")
    share: float = Field(1.0, gt=0, description="share of the training budget")
    shift_power: float = Field(1.0, ge=0, description="p in SNR / s^p (released 64→256: 1; 1024: 2)")
    loss_weights: list[float] | None = Field(None, description="per level, highest resolution first; None = 1")
    mixed_ratio: list[float] | None = Field(None, description="per level, highest first, e.g. [2, 1]")

    @model_validator(mode="after")
    def _lengths(self) -> "MDMStage":
        for name in ("loss_weights", "mixed_ratio"):
            v = getattr(self, name)
            if v is not None and len(v) != self.levels:
                raise ValueError(f"{name}: expected {self.levels} entries (one per level, highest first), got {v}")
        if self.loss_weights is not None and (any(w < 0 for w in self.loss_weights) or not any(self.loss_weights)):
            raise ValueError(f"loss_weights: expected non-negative values, not all zero, got {self.loss_weights}")
        if self.mixed_ratio is not None and any(m <= 0 for m in self.mixed_ratio):
            raise ValueError(f"mixed_ratio: expected positive values, got {self.mixed_ratio}")
        return self


class MDMConfig(TextOptions):
    unet: str | dict[str, Any] = "cpu-tiny"          # base UNet: UNET_PRESETS key or UNetConfig fields
    unet_overrides: dict[str, Any] = {}
    outer: list[OuterLevelConfig] = [OuterLevelConfig()]   # from the level around the base UNet outwards
    stages: list[MDMStage] = [MDMStage(levels=1), MDMStage(levels=2, mixed_ratio=[2, 1])]
    T: int = Field(1000, ge=1, description="diffusion steps of the discrete schedule")
    cosine_s: float = 0.008
    schedule_shifted: bool = True                     # False: no per-level shift at all
    use_mixed_ratio: bool = True                      # apply the stages' mixed_ratio
    steps: int = Field(250, ge=1, description="default sampling steps (resampled grid)")
    sampler: str = Field("ddpm", pattern="^(ddpm|ddim)$")
    ddim_eta: float = Field(0.0, ge=0)
    clip_x0: bool = True                              # threshold x̂ to [-1, 1] (MDM threshold_function CLIP)

    @field_validator("unet")
    @classmethod
    def _unet(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        if isinstance(v, str) and v not in UNET_PRESETS:
            raise ValueError(f"unknown UNet preset {v!r}; presets: {', '.join(UNET_PRESETS)}")
        return v

    @model_validator(mode="after")
    def _structure(self) -> "MDMConfig":
        n_levels = len(self.outer) + 1
        ratio = math.prod(o.nest_ratio for o in self.outer)
        if self.resolution % ratio:
            raise ValueError(f"resolution {self.resolution} is not divisible by the product of the outer levels' "
                             f"nest ratios ({ratio})")
        levels = [s.levels for s in self.stages]
        if not levels or any(b <= a for a, b in zip(levels, levels[1:])) or levels[-1] != n_levels:
            raise ValueError(f"stages: levels must increase and the last stage must train all {n_levels} levels "
                             f"(1 base + {len(self.outer)} outer), got levels {levels}")
        if self.steps > self.T:
            raise ValueError(f"steps ({self.steps}) must be <= T ({self.T})")
        return self


# ---- the extended-space process (pure functions, tested against the card) ---------------------------

def level_gammas(gamma: torch.Tensor, scales: Sequence[float], power: float, shifted: bool = True
                 ) -> list[torch.Tensor]:
    """γ of each level (same order as ``scales``, the size ratio to the lowest level):
    ``SNR^r = SNR / s_r^p``; the lowest level (s = 1) keeps γ bit for bit."""
    return [gamma if (not shifted or s == 1) else shift_gamma(gamma, float(s), power) for s in scales]


def mixed_sizes(ratio: Sequence[float] | None, n: int, levels: int) -> tuple[list[int], list[float]]:
    """Examples each level sees (highest first) and their fractions m_r: cumulative shares of ``ratio``
    (MDM ``mixed_ratio`` '2:1' → [2/3, 1]); level r runs on the first floor(m_r n) examples (≥ 1)."""
    if ratio is None:
        return [n] * levels, [1.0] * levels
    total = float(sum(ratio))
    cum, acc = [], 0.0
    for r in ratio:
        acc += float(r)
        cum.append(acc / total)
    cum[-1] = 1.0
    return [max(1, math.floor(m * n + 1e-9)) for m in cum], cum


def eps_from_v_gamma(z: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """ε̂ implied by v̂ at z (VP, α = √γ, σ = √(1−γ)): ``ε̂ = σ z + α v̂``
    (= (z − √γ x̂)/√(1−γ) with x̂ = √γ z − √(1−γ) v̂)."""
    g = gamma.reshape(-1, *([1] * (z.ndim - 1))).to(z.dtype)
    return (1 - g).sqrt() * z + g.sqrt() * v


def x0_from_v_gamma(z: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``x̂ = √γ z − √(1−γ) v̂``."""
    g = gamma.reshape(-1, *([1] * (z.ndim - 1))).to(z.dtype)
    return g.sqrt() * z - (1 - g).sqrt() * v


def _integral_batch(fractions: Sequence[float], limit: int = 64) -> int:
    """Smallest batch in which every level gets exactly its mixed-ratio share (for FLOP counting)."""
    for n in range(2, limit + 1):
        if all(abs(m * n - round(m * n)) < 1e-9 for m in fractions):
            return n
    return 2


# ---- presets ---------------------------------------------------------------------------------------

# Widths 40 / 20 (not 32 / 16): GroupNorm then pools 5 channels per group, so the biases feeding the output
# norms are not dead parameters (with 1 channel per group their gradient is exactly zero and Adam turns the
# rounding noise into updates, which makes runs differ by the summation order).
_TINY_UNET = dict(model_channels=40, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,),
                  channels_per_head=32, dropout=0.0, resample="conv")
# The released 64×64 inner UNet: widths [256, 512, 768], 2 ResBlocks per level, attention at 32 and 16.
_MDM64_UNET = dict(model_channels=256, channel_mult=(1, 2, 3), num_blocks=2, attn_resolutions=(32, 16),
                   channels_per_head=64, dropout=0.0, resample="conv")
_OUTER256 = dict(channels=(64, 128, 256), num_blocks=(2, 2, 1))
# The released cc12m inner UNet with its text path: 1 / 5 attention layers per ResBlock at 32 / 16 with
# cross-attention to lm_proj(flan-t5-xl) (2048) and attention FFNs.
_MDM64_T2I_UNET = dict(_MDM64_UNET, attn_layers=(1, 5), attention_ffn=True, text_proj_dim=2048)
_T2I256 = dict(resolution=256, conditioning="text", text_conditioning="tokens", text_dim=2048, text_length=128,
               label_dropout=0.1, unet=_MDM64_T2I_UNET, outer=[_OUTER256],
               stages=[dict(levels=1, share=0.5), dict(levels=2, share=0.5, shift_power=1.0, mixed_ratio=[2, 1])],
               steps=250)


def _ema_kimg(batch: int) -> float:
    """EMA decay 0.9999 per step as an image half-life: batch · ln 0.5 / ln 0.9999 (in kimg)."""
    return batch * math.log(0.5) / math.log(0.9999) / 1000.0


def _paper_train(batch: int, precision: str) -> dict[str, Any]:
    return dict(batch=batch, lr=5e-5, optimizer="adamw", weight_decay=0.0, eps=1e-8, warmup_images=10_000 * batch,
                grad_clip=2.0, ema_halflife_kimg=[_ema_kimg(batch)], ema_rampup=None, precision=precision)


@register
class MatryoshkaDiffusion(Method):
    name = "mdm"
    Config = MDMConfig
    conditioning = ("none", "class", "text")
    description = "Matryoshka Diffusion: NestedUNet, joint multi-resolution diffusion, progressive stages"
    paper = "Gu et al. 2023, Matryoshka Diffusion Models (ICLR 2024)"
    presets = {
        "cpu-tiny": dict(resolution=32, conditioning="class", num_classes=4, label_dropout=0.1, unet=_TINY_UNET,
                         outer=[dict(channels=(20, 40), num_blocks=(1, 1))],
                         stages=[dict(levels=1, share=0.5),
                                 dict(levels=2, share=0.5, shift_power=1.0, mixed_ratio=[2, 1])],
                         steps=50),
        "cpu-demo": dict(resolution=16, conditioning="class", num_classes=10, label_dropout=0.1, unet=_TINY_UNET,
                         outer=[dict(channels=(20, 40), num_blocks=(1, 1))],
                         stages=[dict(levels=1, share=0.5),
                                 dict(levels=2, share=0.5, shift_power=1.0, mixed_ratio=[2, 1])],
                         steps=50),
        "cpu-tiny-3lvl": dict(resolution=64, conditioning="class", num_classes=4, label_dropout=0.1, unet=_TINY_UNET,
                              outer=[dict(channels=(20, 40), num_blocks=(1, 1)),
                                     dict(channels=(20, 20), num_blocks=(1, 1))],
                              stages=[dict(levels=1, share=1 / 3),
                                      dict(levels=2, share=1 / 3, shift_power=1.0, mixed_ratio=[2, 1]),
                                      dict(levels=3, share=1 / 3, shift_power=2.0, loss_weights=[16, 4, 1])],
                              steps=50),
        "imagenet256": dict(resolution=256, conditioning="class", num_classes=1000, label_dropout=0.1,
                            unet=_MDM64_UNET, outer=[_OUTER256],
                            stages=[dict(levels=1, share=0.5),
                                    dict(levels=2, share=0.5, shift_power=1.0, mixed_ratio=[2, 1])],
                            steps=250),
        "t2i256": dict(resolution=256, conditioning="text", text_dim=768, label_dropout=0.1,
                       unet=_MDM64_UNET, outer=[_OUTER256],
                       stages=[dict(levels=1, share=0.5),
                               dict(levels=2, share=0.5, shift_power=1.0, mixed_ratio=[2, 1])],
                       steps=250),
        "coco256": _T2I256,
        "cc12m256": _T2I256,
        "t2i1024": dict(resolution=1024, conditioning="text", text_dim=768, label_dropout=0.1,
                        unet=_MDM64_UNET,
                        outer=[dict(_OUTER256, normalize_input=True), dict(channels=(32, 32, 64), num_blocks=(2, 2, 1))],
                        stages=[dict(levels=1, share=1 / 3),
                                dict(levels=2, share=1 / 3, shift_power=1.0, mixed_ratio=[2, 1]),
                                dict(levels=3, share=1 / 3, shift_power=2.0, loss_weights=[16, 4, 1])],
                        steps=250),
    }
    train_defaults = {
        "cpu-tiny": dict(batch=32, lr=2e-4, warmup_images=2_000, grad_clip=2.0, ema_halflife_kimg=[5.0]),
        "cpu-tiny-3lvl": dict(batch=32, lr=2e-4, warmup_images=2_000, grad_clip=2.0, ema_halflife_kimg=[5.0]),
        "cpu-demo": dict(batch=32, lr=1e-3, warmup_images=1_000, grad_clip=2.0, ema_halflife_kimg=[2.0]),
        "imagenet256": _paper_train(256, "fp32"),
        "t2i256": _paper_train(256, "fp32"),
        "coco256": _paper_train(256, "fp32"),
        "cc12m256": _paper_train(256, "fp32"),
        "t2i1024": _paper_train(128, "bf16"),
    }
    # MDM trains without dropout; the per-local-batch mixed_ratio prefix is what makes 2 ranks differ.
    deterministic_overrides = {"use_mixed_ratio": False, "unet_overrides": {"dropout": 0.0}}

    def __init__(self, config: MDMConfig):
        super().__init__(config)
        cfg = config
        if cfg.conditioning == "class" and cfg.num_classes <= 0:
            raise ConfigError("mdm: conditioning='class' needs num_classes > 0")
        if cfg.conditioning == "text" and cfg.text_dim <= 0:
            raise ConfigError("mdm: conditioning='text' needs text_dim > 0 (the caption encoder's width)")
        self.base_resolution = cfg.resolution // math.prod(o.nest_ratio for o in cfg.outer)
        unet_cfg = UNetConfig(**(UNET_PRESETS[cfg.unet] if isinstance(cfg.unet, str) else cfg.unet))
        try:
            base = build_unet(self.base_resolution, unet_cfg, in_channels=cfg.channels, out_channels=cfg.channels,
                              num_classes=cfg.num_classes if cfg.conditioning == "class" else 0,
                              text_dim=cfg.text_dim if cfg.conditioning == "text" else 0,
                              text_mode=cfg.text_mode(), **{"null_text": cfg.null_text, **cfg.unet_overrides})
        except ValueError as err:
            raise ConfigError(f"method.unet: {err}") from None
        self.net = NestedUNet(base, cfg.outer, cfg.channels, cfg.channels)
        self.resolutions: tuple[int, ...] = self.net.resolutions      # highest first
        self.num_levels = self.net.num_levels
        assert self.resolutions[0] == cfg.resolution
        self.gammas = mdm_gammas(cfg.T, cfg.cosine_s)          # float64, length T + 1
        self._active: int | None = None                        # index of the last stage entered

    # ---- state --------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"net": self.net}

    def _stage_name(self, spec: MDMStage) -> str:
        res = self.resolutions[self.num_levels - spec.levels]
        return f"base{res}" if spec.levels == 1 else f"nest{res}"

    def stages(self) -> list[Stage]:
        out = []
        for i, spec in enumerate(self.config.stages):
            res = self.resolutions[self.num_levels - spec.levels:]
            out.append(Stage(self._stage_name(spec), spec.share, tuple(res), trainable=("net",),
                             enter=partial(self._enter, i), info={"index": i, "levels": spec.levels}))
        return out

    def _enter(self, index: int) -> None:
        # Structure is fixed; entering a stage only selects which levels the loss and sampler use.
        # The outer levels of later stages are untouched until then (no gradient reaches them).
        self._active = index

    def _spec(self, stage: Stage | None) -> MDMStage:
        if stage is not None:
            return self.config.stages[stage.info["index"]]
        idx = len(self.config.stages) - 1 if self._active is None else self._active
        return self.config.stages[idx]

    def scales(self, levels: int) -> list[float]:
        """Size ratio of each of the ``levels`` lowest levels to the lowest (highest first)."""
        return [r / self.base_resolution for r in self.resolutions[self.num_levels - levels:]]

    def _gamma_at(self, index: torch.Tensor) -> torch.Tensor:
        return self.gammas.to(index.device)[index]

    # ---- training -----------------------------------------------------------------------------
    def draw_training_noise(self, batch: Batch, levels: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """t ∈ {0..T−1} (one per example, shared by all levels) and independent ε per level
        (highest first), all from the examples' own streams, in this order."""
        rng, res = batch.rng, self.resolutions[self.num_levels - levels:]
        n, c = batch.size, self.config.channels
        t = rng.randint(0, self.config.T, (n,))
        eps = [rng.randn((n, c, r, r)) for r in res]
        return t, eps

    def loss(self, batch: Batch, stage: Stage) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, spec = self.config, self._spec(stage)
        levels = spec.levels
        res = self.resolutions[self.num_levels - levels:]
        missing = [r for r in res if r not in batch.images]
        if missing:
            raise ConfigError(f"mdm stage {stage.name!r}: the batch lacks resolutions {missing} "
                              f"(carries {sorted(batch.images)})")
        x0 = [batch.images[r].float() for r in res]
        device, n = x0[0].device, batch.size
        t, eps = self.draw_training_noise(batch, levels)
        labels, text = drop_condition(batch.labels, batch.text, cfg.label_dropout, batch.rng)
        t = t.to(device)
        gam = level_gammas(self._gamma_at(t + 1), self.scales(levels), spec.shift_power, cfg.schedule_shifted)
        sizes, fractions = mixed_sizes(spec.mixed_ratio if cfg.use_mixed_ratio else None, n, levels)
        z = []
        for x, e, g, k in zip(x0, eps, gam, sizes):
            gk = g[:k].reshape(-1, 1, 1, 1).float()
            z.append(gk.sqrt() * x[:k] + (1 - gk).sqrt() * e[:k].to(device))
        v_hat = self.net(z, t.float(), labels, text)
        weights = spec.loss_weights or [1.0] * levels
        total = x0[0].new_zeros(())
        logs: dict[str, Any] = {"t_mean": t.float().mean()}
        for r, zi, vi, e, g, k, m, w in zip(res, z, v_hat, eps, gam, sizes, fractions, weights):
            eps_hat = eps_from_v_gamma(zi, vi.float(), g[:k])
            mse = ((eps_hat - e[:k].to(device)) ** 2).mean(dim=(1, 2, 3))
            total = total + w * mse.sum() / (m * n)        # MDM: divided by m_r, zero for the other examples
            logs[f"mse_{r}"] = mse.detach().mean()
        return total, logs

    def flops_batch(self, stage: Stage) -> int:
        """A batch in which each level gets exactly its mixed-ratio share."""
        spec = self._spec(stage)
        _, fractions = mixed_sizes(spec.mixed_ratio if self.config.use_mixed_ratio else None, 1, spec.levels)
        return _integral_batch(fractions)

    # ---- sampling -----------------------------------------------------------------------------
    def default_steps(self) -> int:
        return self.config.steps

    def _predict_v(self, zs: list[torch.Tensor], t_in: torch.Tensor, cond: Condition, guidance: float
                   ) -> tuple[list[torch.Tensor], int]:
        args = {"noise_labels": t_in, "class_labels": cond.labels, "text": cond.text}
        if guidance == 1.0 or (cond.labels is None and cond.text is None):
            return self.net(zs, **args), 1
        unc = null_condition(cond, zs[0].shape[0])
        uargs = {"noise_labels": t_in, "class_labels": unc.labels, "text": unc.text}
        return guided(self.net, zs, args, uargs, guidance)

    @torch.no_grad()
    def sample(self, rng: StackedRandom, cond: Condition | None = None, steps: int | None = None,
               guidance: float = 1.0) -> tuple[torch.Tensor, int]:
        cfg, spec = self.config, self._spec(None)
        cond = cond or Condition()
        levels, n = spec.levels, len(rng)
        res = self.resolutions[self.num_levels - levels:]
        scales = self.scales(levels)
        grid = resampled_timesteps(cfg.T, steps or cfg.steps).to(self.device)
        # Independent initial noise per level, highest first (fresh, not pooled: CARDS pitfall iv).
        zs = [rng.randn((n, cfg.channels, r, r)).to(self.device, torch.float64) for r in res]
        nfe = 0
        for k in range(grid.numel() - 1):
            t, s = grid[k], grid[k + 1]
            g_t = level_gammas(self._gamma_at(t.expand(n)), scales, spec.shift_power, cfg.schedule_shifted)
            g_s = level_gammas(self._gamma_at(s.expand(n)), scales, spec.shift_power, cfg.schedule_shifted)
            v, mult = self._predict_v([z.float() for z in zs], (t - 1).expand(n).float(), cond, guidance)
            nfe += mult
            last = bool(s == 0)
            new = []
            for z, vi, gt, gs in zip(zs, v, g_t, g_s):
                x0 = x0_from_v_gamma(z, vi.double(), gt)
                if cfg.clip_x0:
                    x0 = x0.clamp(-1.0, 1.0)
                noise = None if last else rng.randn_like(z)
                new.append(self._step(z, x0, gt, gs, noise))
            zs = new
        x = zs[0].float().clamp(-1, 1)
        if x.shape[-1] != cfg.resolution:       # an early stage: upsample its highest level
            x = F.interpolate(x, size=(cfg.resolution, cfg.resolution), mode="bilinear", align_corners=False)
        return x.clamp(-1, 1), nfe

    def _step(self, z: torch.Tensor, x0: torch.Tensor, g_t: torch.Tensor, g_s: torch.Tensor,
              noise: torch.Tensor | None) -> torch.Tensor:
        if self.config.sampler == "ddpm":
            return ddpm_posterior_gamma_step(z, x0, g_t, g_s, noise)
        eta = self.config.ddim_eta if noise is not None else 0.0      # the last step is deterministic
        return ddim_step(z, x0, None, g_s.sqrt(), (1 - g_s).sqrt(), eta, noise if eta > 0 else None,
                         alpha_t=g_t.sqrt(), sigma_t=(1 - g_t).sqrt())
