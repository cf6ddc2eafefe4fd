"""Consistency decoder (OpenAI consistencydecoder, 2023): a pixel-space diffusion decoder conditioned on
a VAE latent, consistency-distilled to 2 steps; and the plain one-shot regression decoder it is compared
with. CARDS.md §7.3, §10.2.

Decoder network: UNet input ``concat(c_in·x_t, up8(z'))`` (3 + 4 channels), 6 output channels of which the
first 3 are F; ``x̂0 = c_skip x_t + c_out F`` with EDM scalings in VP coordinates on the iDDPM cosine
schedule (T = 1024); z' = (0.18215·z − μ)/s with the published SD means / stds; nearest ×8 up-sampling.
Sampling: x_prev = 0; for t in [1008, 512]: x_t = √ᾱ x_prev + √(1−ᾱ) ε, x_prev = x̂0 (clamped each step
as the original package; ``clamp_each_step=False`` is diffusers' behaviour).

Variants (``decoder``):
- ``consistency``: stage "teacher" (diffusion training of the decoder), then "distill" (consistency
  distillation on the 64-point grid {0, 16, …, 1008}: student at t_{n+1}, Heun teacher step to t_n,
  EMA target at t_n, like `cd`);
- ``plain``: one-shot regression x̂ = G(up8(z')) trained with l2 (or l1), 1 NFE — the baseline for
  reconstruction FID (``reconstruction_fid``).

Latent source (``latent_source``): ``random-conv`` (a fixed seeded conv encoder: tests, cpu-tiny) or
``sd-vae`` (the SD 1.x VAE encoder from the asset folder; building fails at the first use, naming the
missing file). The encoder is frozen and not checkpointed. Sampling needs latents: pass a
``LatentCondition`` (``reconstruct`` does); the harness's unconditional sampling path raises a clear error.

Open choices, written down (the decoder's training recipe is unpublished):
- teacher noise levels t ~ U{0..1023} with the EDM weight 1/c_out² (so the loss is ‖F − target‖²);
- CD target EMA μ = 0.95, l2 metric, Heun teacher step in VE coordinates of the VP schedule;
- time input is the integer t through the UNet's sinusoidal embedding (the original learns an embedding);
- the `sd` preset builds the 320/640/1024/1024, 3-blocks-per-level UNet without level attention; the
  project's UNet keeps one mid-block attention (the original has none);
- the plain decoder is a UNet regressor with l2 loss (SD's own decoder is a GAN-trained VAE decoder; with
  the `sd-vae` source its real decoder could replace it — not implemented).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from pydantic import field_validator

from bench.consistency.cm import consistency_distance, rng_restore, rng_snapshot
from bench.consistency.decoder import (DISTILLED_STEPS, T_TRAIN, decoder_alpha_bar, decoder_sample, decoder_scalings,
                                       distilled_grid, normalise_latent, sampling_timesteps, upsample_latent,
                                       vp_teacher_step)
from bench.consistency.latents import LATENT_SOURCES, build_latent_source
from bench.diffusion.rng import StackedRandom
from bench.method import Batch, Condition, ConfigError, Method, MethodConfig, Stage, register
from bench.nets.unet import build_unet

LATENT_FACTOR = 8


@dataclass
class LatentCondition(Condition):
    """Conditioning of the decoder: unscaled VAE latents (N, 4, R/8, R/8)."""

    latents: torch.Tensor | None = None

    def select(self, idx: slice) -> "LatentCondition":
        base = super().select(idx)
        return LatentCondition(base.labels, base.text, None if self.latents is None else self.latents[idx])


class CDecConfig(MethodConfig):
    decoder: str = "consistency"          # consistency | plain
    latent_source: str = "random-conv"    # random-conv | sd-vae
    latent_channels: int = 4
    latent_seed: int = 0                  # seed of the random-conv encoder
    assets: str | None = None             # asset folder (sd-vae); None = $BENCH_ASSETS or ./assets
    unet: str = "cpu-tiny"
    unet_overrides: dict[str, Any] = {}
    sigma_data: float = 0.5
    steps: int = 2                        # sampling steps (2 -> t = 1008, 512)
    clamp_each_step: bool = True
    target_ema: float = 0.95
    teacher_solver: str = "heun"
    teacher_share: float = 0.5
    plain_loss: str = "l2"

    @field_validator("decoder")
    @classmethod
    def _decoder(cls, v: str) -> str:
        if v not in ("consistency", "plain"):
            raise ValueError("expected 'consistency' or 'plain'")
        return v

    @field_validator("latent_source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v not in LATENT_SOURCES:
            raise ValueError(f"expected one of {', '.join(LATENT_SOURCES)}")
        return v

    @field_validator("plain_loss")
    @classmethod
    def _plain_loss(cls, v: str) -> str:
        if v not in ("l2", "l1"):
            raise ValueError("expected 'l2' or 'l1'")
        return v


class DecoderNet(torch.nn.Module):
    """x̂0(x_t, t | z') = c_skip[t] x_t + c_out[t] F(concat(c_in[t] x_t, up8(z')), t)[:, :C]."""

    def __init__(self, cfg: CDecConfig):
        super().__init__()
        self.channels = cfg.channels
        self.net = build_unet(cfg.resolution, cfg.unet, in_channels=cfg.channels + cfg.latent_channels,
                              out_channels=2 * cfg.channels, **cfg.unet_overrides)
        c_skip, c_out, c_in = decoder_scalings(decoder_alpha_bar(T_TRAIN), cfg.sigma_data)
        for name, v in (("c_skip", c_skip), ("c_out", c_out), ("c_in", c_in)):
            self.register_buffer(name, v.float(), persistent=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z_up: torch.Tensor) -> torch.Tensor:
        shape = (-1, 1, 1, 1)
        c_skip, c_out, c_in = (c[t].reshape(shape) for c in (self.c_skip, self.c_out, self.c_in))
        F_x = self.net(torch.cat([c_in * x_t, z_up], dim=1), t.float())[:, : self.channels]
        return c_skip * x_t + c_out * F_x


class PlainDecoder(torch.nn.Module):
    """One-shot regression x̂ = G(up8(z'))."""

    def __init__(self, cfg: CDecConfig):
        super().__init__()
        self.net = build_unet(cfg.resolution, cfg.unet, in_channels=cfg.latent_channels, out_channels=cfg.channels,
                              **cfg.unet_overrides)

    def forward(self, z_up: torch.Tensor) -> torch.Tensor:
        return self.net(z_up, torch.zeros(z_up.shape[0], device=z_up.device))


_SD_UNET = dict(model_channels=64, channel_mult=(5, 10, 16, 16), num_blocks=3, attn_resolutions=(),
                channels_per_head=64, emb_mult=20, dropout=0.0)     # 320/640/1024/1024, 1280-wide embedding


@register
class ConsistencyDecoder(Method):
    name = "cdec"
    generative = False      # decodes latents of given images; evaluated by reconstruction FID
    Config = CDecConfig
    conditioning = ("none",)
    description = "Consistency decoder: latent-conditioned pixel diffusion decoder, CD to 2 steps (or a plain decoder)"
    paper = "OpenAI 2023, Consistency Decoder (openai/consistencydecoder)"
    presets = {
        "cpu-tiny": dict(resolution=32, unet="cpu-tiny"),
        "cpu-tiny-plain": dict(resolution=32, unet="cpu-tiny", decoder="plain"),
        "sd": dict(resolution=256, latent_source="sd-vae", unet_overrides=_SD_UNET),
        "sd-plain": dict(resolution=256, latent_source="sd-vae", unet_overrides=_SD_UNET, decoder="plain"),
    }
    train_defaults = {
        "cpu-tiny": dict(batch=32, lr=2e-4, warmup_images=2_000, ema_halflife_kimg=[5.0]),
        "cpu-tiny-plain": dict(batch=32, lr=2e-4, warmup_images=2_000, ema_halflife_kimg=[5.0]),
    }
    deterministic_overrides = {"unet_overrides": {"dropout": 0.0}}

    def __init__(self, config: CDecConfig):
        super().__init__(config)
        if config.resolution % LATENT_FACTOR:
            raise ConfigError(f"cdec: resolution must be a multiple of {LATENT_FACTOR}, got {config.resolution}")
        self._encoder: torch.nn.Module | None = None
        self.alpha_bar = decoder_alpha_bar(T_TRAIN)
        if config.decoder == "plain":
            self.decoder = PlainDecoder(config)
        else:
            self.teacher, self.student, self.target = DecoderNet(config), DecoderNet(config), DecoderNet(config)
            self.target.load_state_dict(self.student.state_dict())
            self.target.requires_grad_(False)

    @property
    def plain(self) -> bool:
        return self.config.decoder == "plain"

    # ---- latents ---------------------------------------------------------------------------------
    @property
    def encoder(self) -> torch.nn.Module:
        """The frozen latent source, built on first use (sd-vae fails here when its asset is missing)."""
        if self._encoder is None:
            self._encoder = build_latent_source(self.config.latent_source, self.config.assets,
                                                self.config.latent_seed).to(self.device)
        return self._encoder

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> unscaled latents."""
        return self.encoder(images.to(self.device).float())

    def latent_input(self, latents: torch.Tensor) -> torch.Tensor:
        return upsample_latent(normalise_latent(latents.float()), LATENT_FACTOR)

    def to(self, device: torch.device | str) -> "ConsistencyDecoder":
        super().to(device)
        if self._encoder is not None:
            self._encoder.to(self.device)
        return self

    # ---- structure -------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        if self.plain:
            return {"decoder": self.decoder}
        return {"teacher": self.teacher, "student": self.student, "target": self.target}

    def sampling_modules(self) -> tuple[str, ...]:
        return ("decoder",) if self.plain else ("student",)

    def stages(self) -> list[Stage]:
        res = (self.config.resolution,)
        if self.plain:
            return [Stage("regress", 1.0, res)]
        share = self.config.teacher_share
        if not 0 < share < 1:
            raise ConfigError(f"cdec: teacher_share: expected in (0, 1), got {share}")
        return [Stage("teacher", share, res, trainable=("teacher",)),
                Stage("distill", 1.0 - share, res, trainable=("student",), enter=self._init_from_teacher)]

    @torch.no_grad()
    def _init_from_teacher(self) -> None:
        state = self.teacher.state_dict()
        self.student.load_state_dict(state)
        self.target.load_state_dict(state)

    # ---- training --------------------------------------------------------------------------------
    def loss(self, batch: Batch, stage: Stage) -> tuple[torch.Tensor, dict[str, float]]:
        y, rng = batch.top(), batch.rng
        z_up = self.latent_input(self.encode(y))
        if self.plain:
            d = consistency_distance(self.decoder(z_up), y, self.config.plain_loss)
            return d.mean(), {}
        ab = self.alpha_bar.to(y.device)
        eps = rng.randn(y.shape).to(y.device)
        if stage.name == "teacher":
            t = rng.randint(0, T_TRAIN, (y.shape[0],)).to(y.device)
            a = ab[t].float().reshape(-1, 1, 1, 1)
            x_t = a.sqrt() * y + (1 - a).sqrt() * eps
            c_out = self.teacher.c_out[t].reshape(-1, 1, 1, 1)
            err = ((self.teacher(x_t, t, z_up) - y) / c_out) ** 2               # EDM weight 1/c_out²
            return err.mean(dim=(1, 2, 3)).mean(), {"t_mean": t.float().mean()}
        grid = distilled_grid(T_TRAIN, DISTILLED_STEPS).to(y.device)
        n = rng.randint(1, grid.numel(), (y.shape[0],)).to(y.device)
        t_hi, t_lo = grid[n], grid[n - 1]
        a = ab[t_hi].float().reshape(-1, 1, 1, 1)
        x_hi = a.sqrt() * y + (1 - a).sqrt() * eps
        self.target.train(self.student.training)
        state = rng_snapshot(y.device)
        out = self.student(x_hi, t_hi, z_up)
        with torch.no_grad():
            x_lo = vp_teacher_step(lambda x, t: self.teacher(x, t, z_up), x_hi, t_hi, t_lo, ab,
                                   self.config.teacher_solver)
            rng_restore(state, y.device)
            target = self.target(x_lo, t_lo, z_up)
        return consistency_distance(out, target, "l2").mean(), {"t_mean": t_hi.float().mean()}

    @torch.no_grad()
    def after_step(self, stage: Stage, step: int, images_seen: int) -> None:
        if self.plain or stage.name != "distill":
            return
        mu = self.config.target_ema
        for pt, ps in zip(self.target.parameters(), self.student.parameters()):
            pt.mul_(mu).add_(ps.detach(), alpha=1.0 - mu)

    # ---- sampling --------------------------------------------------------------------------------
    def default_steps(self) -> int:
        return 1 if self.plain else self.config.steps

    def example_condition(self, n: int) -> LatentCondition:
        g = torch.Generator().manual_seed(1)
        c = self.config
        images = torch.rand(n, c.channels, c.resolution, c.resolution, generator=g) * 2 - 1
        return LatentCondition(latents=self.encode(images))

    @torch.no_grad()
    def sample(self, rng: StackedRandom, cond: Condition | None = None, steps: int | None = None,
               guidance: float = 1.0) -> tuple[torch.Tensor, int]:
        latents = getattr(cond, "latents", None)
        if latents is None:
            raise ConfigError("cdec decodes latents: sample() needs a LatentCondition(latents=...) "
                              "(use methods.consistency_decoder.reconstruct for images)")
        c = self.config
        z_up = self.latent_input(latents.to(self.device))
        if self.plain:
            return self.decoder(z_up).float().clamp(-1, 1), 1
        ts = sampling_timesteps(steps or c.steps)
        shape = (len(rng), c.channels, c.resolution, c.resolution)
        x, nfe = decoder_sample(lambda x, t: self.student(x, t, z_up), shape, ts, self.alpha_bar, rng,
                                c.clamp_each_step, self.device)
        return x.float().clamp(-1, 1), nfe


# ---- reconstructions and reconstruction FID ---------------------------------------------------------

@torch.no_grad()
def reconstruct(method: ConsistencyDecoder, images: torch.Tensor, seeds: Sequence[int],
                steps: int | None = None) -> tuple[torch.Tensor, int]:
    """Encode images in [-1, 1] with the method's latent source and decode them (noise per seed)."""
    latents = method.encode(images)
    return method.sample(StackedRandom(list(seeds), device=method.device), LatentCondition(latents=latents), steps)


def reconstruction_batches(method: ConsistencyDecoder, dataset, indices: Sequence[int], batch: int = 64,
                           steps: int | None = None) -> Iterator[Any]:
    """Reconstructions of ``dataset[indices]`` as uint8 SampleBatches (seed = dataset index)."""
    from bench.metrics.sources import SampleBatch, iter_dataset

    for sb in iter_dataset(dataset, indices, batch):
        x = sb.images.float() / 127.5 - 1
        rec, _ = reconstruct(method, x, sb.seeds, steps)
        u8 = ((rec.clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()
        yield SampleBatch(u8, sb.labels, None, sb.seeds)


def reconstruction_fid(decoders: dict[str, ConsistencyDecoder], dataset, indices: Sequence[int], reference: str,
                       assets, extractor: str = "inception", batch: int = 64,
                       steps: dict[str, int | None] | None = None) -> dict[str, dict[str, Any]]:
    """rFID of each decoder (e.g. {"consistency": m1, "plain": m2}) against reference statistics of the
    same images (``bench stats`` / bench.metrics.api.build_reference); returns name -> metric result."""
    from bench.metrics.evaluate import EvalSettings, StreamingEvaluator
    from bench.metrics.reference import read_reference

    ref = read_reference(reference)
    out = {}
    for name, m in decoders.items():
        ev = StreamingEvaluator(EvalSettings(metrics=["fid"], extractor=extractor, batch=batch, device="cpu"
                                             if m.device.type == "cpu" else "auto"), assets, ref)
        res = ev.run(reconstruction_batches(m, dataset, indices, batch, (steps or {}).get(name)),
                     total=len(indices), progress=False)
        out[name] = {**res, "nfe": m.default_steps() if (steps or {}).get(name) is None else steps[name]}
    return out
