"""Greedy Growing (Vasconcelos et al., TMLR 2024, arXiv 2405.16759; "Vermeer"). CARDS.md §6. No public code.

Mechanisms (each tested in tests/test_greedy_growing.py; networks in bench/nets/shallow_uvit.py):
- Stage A "core": a Shallow-UViT at the low resolution r0 — stride-p p×p entry conv straight down to the core
  grid r0/p, ONE ResBlock as shallow encoder, the deep transformer core, ONE ResBlock as shallow decoder, a
  stride-p transposed-conv exit.
- Stage B1 "grow-frozen" (enter = ``grow``): the shallow shell is discarded and a new high-resolution shell is
  built — encoder = stem conv + ResBlock stages with stride-2 convs ending exactly on the core's grid and width,
  decoder = the mirror with U-Net skips and a zero-initialised output conv (the grown model starts at the
  trivial predictor v̂ = 0). The core module is reused as is (with ``init_from_ema`` the trainer first copies the
  stage-A EMA into it). Only the new shell trains; the trainer freezes the core (requires_grad False) and puts
  it in eval mode (its dropout off).
- Stage B2 "grow-all": everything trains, the core at ``core_lr_mult`` × the learning rate.
- Diffusion recipe of SiD1 (the card marks it "assumed"): VP ``z = α x + σ ε``, t ~ U(0, 1), shifted cosine
  logSNR ``λ_cos(t) + 2 log(ref/d)`` with d the resolution being trained — the shift changes when the model
  grows; v-prediction, unweighted ε-MSE (ε̂ = σ z + α v̂); DDPM ancestral sampler on a uniform-in-t grid with
  x̂ clipped. Class- or text-conditional, CFG on v̂ with label dropout.
- Text (``text_conditioning: tokens``, presets ``cc12m256`` / ``coco256``): the core cross-attends to the
  caption tokens in every transformer block (key padding mask honoured) and adds their masked mean to the
  embedding; the text modules belong to the core, so the shallow shell (stage A) and the grown encoder /
  decoder (B1/B2) condition through the same reused core (the shells' ResBlocks through the embedding).
  The paper names neither its text encoder nor its null text (card: unverified); we use T5-XXL tokens
  (4096 wide, 128 tokens) and a learned null token (``null_text: learned``; ``zero`` = fixed zero token).

Open choices (not in the card, ours):
- Noise label: the network sees ``λ − 2 log(ref/d)`` = λ_cos(t), the logSNR at the reference resolution, so the
  core's noise conditioning keeps its meaning across the growth (``label_at_reference: false`` feeds the raw λ).
- The condition embedding (noise + class / text) belongs to the core: it is reused and frozen with it in B1.
- Dropout only inside the core (SiD1: none on the high-resolution maps); the shells have none.
- Shallow ResBlocks run at the core width; the core has no skip around it in the shallow model.
- Before growth (a checkpoint of stage A) ``sample`` draws at r0 with the r0 schedule and returns the
  nearest-upsampled images at the target resolution (as relay / MDM do for their early stages).
- B1 → B2 keeps the raw weights (``init_from_ema`` False): the short B1 EMA would lag the new layers.
- New layers are initialised from a generator seeded by the run seed (``torch.initial_seed()`` when the method
  was built), so every DDP rank grows the same weights whatever the global RNG did before.
- cpu-tiny shares 0.4 / 0.3 / 0.3 (the card's toy is 1k + 0.5k + 0.5k = 0.5 / 0.25 / 0.25, set by
  ``core_share`` etc.): with 2 steps per stage the contract tests' budgets then split into whole batches.
- Paper presets ``cc12m256`` / ``coco256`` / ``t2i1024``: core grid 16×16 (card [M]), core pretrained at 64 px with a stride-4
  entry conv; core width / depth / heads, shell widths, the text encoder (T5-XXL tokens) and its width, shares 0.5/0.25/0.25, core LR ×0.1 in B2,
  batch 256 (sciencestack TL;DR, secondary), lr 1e-4, warm-up, EMA, image counts and bf16 are all unverified.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from bench.diffusion.guidance import v_prediction_x_fn
from bench.diffusion.param import eps_from_v
from bench.diffusion.rng import StackedRandom
from bench.diffusion.samplers import vp_ancestral_sampler
from bench.diffusion.schedules import alpha_sigma_from_logsnr, logsnr_cosine_shifted, resolution_shift
from bench.method import Batch, Condition, ConfigError, Method, MethodConfig, Stage, register
from bench.nets.shallow_uvit import GrownShell, ShallowShell, TransformerCore
from methods._text import TextOptions
from methods.edm import drop_condition

GROW_STAGES = ("grow-frozen", "grow-all")


class GreedyConfig(TextOptions):
    low_resolution: int = Field(16, ge=1, description="r0: resolution of the core pretraining (stage A)")
    patch: int = Field(2, ge=1, description="stride p of the shallow entry conv (core grid = r0 / p)")
    core_width: int = Field(128, ge=1)
    core_depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the core's transformer blocks")
    emb_dim: int | None = Field(None, ge=1, description="condition embedding width (None: core_width)")
    noise_channels: int = Field(128, ge=2, description="sinusoidal noise-label features")
    encoder_widths: tuple[int, ...] = Field((32, 64), min_length=1,
                                            description="grown shell: one stride-2 stage per width, top first")
    encoder_blocks: int = Field(1, ge=1, description="ResBlocks per grown stage")
    ref_resolution: int = Field(16, ge=1, description="reference resolution of the shifted schedule")
    label_at_reference: bool = True
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    steps: int = Field(64, ge=1, description="default sampling steps (= NFE unguided)")
    clip_x: bool = True
    core_share: float = Field(0.5, gt=0)
    frozen_share: float = Field(0.25, gt=0)
    all_share: float = Field(0.25, gt=0)
    core_lr_mult: float = Field(1.0, gt=0, description="learning-rate multiplier of the core in B2")

    @model_validator(mode="after")
    def _check(self) -> "GreedyConfig":
        r0, p = self.low_resolution, self.patch
        if r0 % p:
            raise ValueError(f"low_resolution {r0} is not divisible by patch {p}")
        grid = r0 // p
        if self.resolution <= r0:
            raise ValueError(f"resolution {self.resolution} must exceed low_resolution {r0} (the model grows)")
        if self.resolution != grid * 2 ** len(self.encoder_widths):
            raise ValueError(f"resolution {self.resolution} != core grid {grid} × 2^{len(self.encoder_widths)} "
                             f"(one halving per encoder_widths entry); adjust encoder_widths or patch")
        if self.core_width % self.heads:
            raise ValueError(f"core_width {self.core_width} is not divisible by heads {self.heads}")
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"logsnr_min ({self.logsnr_min}) must be < logsnr_max ({self.logsnr_max})")
        return self

    @property
    def core_grid(self) -> int:
        return self.low_resolution // self.patch


@register
class GreedyGrowing(Method):
    name = "greedy"
    Config = GreedyConfig
    conditioning = ("none", "class", "text")
    description = "Greedy growing: Shallow-UViT core pretraining, grown encoder/decoder, frozen-core then full phase"
    paper = "Vasconcelos et al. 2024, Greedy Growing Enables High-Resolution Pixel-Based Diffusion Models"
    _tiny = dict(resolution=32, low_resolution=16, patch=2, core_width=128, core_depth=4, heads=4,
                 encoder_widths=(32, 64), ref_resolution=16, steps=64, core_share=0.4, frozen_share=0.3,
                 all_share=0.3)
    # Core at 16×16 (64 px, stride-4 entry); grown to 256 px (4 stages) / 1024 px (6 stages). Unverified sizes.
    _cc12m = dict(resolution=256, low_resolution=64, patch=4, core_width=1536, core_depth=24, heads=12,
                  dropout=0.1, noise_channels=256, encoder_widths=(128, 256, 512, 768), encoder_blocks=2,
                  ref_resolution=64, steps=512, conditioning="text", text_conditioning="tokens", text_dim=4096,
                  text_length=128, label_dropout=0.1, core_lr_mult=0.1)
    presets = {
        "cpu-tiny": _tiny,
        "cpu-tiny-cond": dict(_tiny, conditioning="class", num_classes=4, label_dropout=0.1),
        "cpu-demo": dict(_tiny, resolution=16, low_resolution=8, ref_resolution=8, conditioning="class",
                         num_classes=10, label_dropout=0.1),
        "cc12m256": _cc12m,
        "coco256": _cc12m,    # the CC12M model's architecture, trained on COCO captions (our choice)
        "t2i1024": dict(_cc12m, resolution=1024, core_width=2048, core_depth=24, heads=16,
                        encoder_widths=(128, 128, 256, 256, 512, 1024)),
    }
    _tiny_train = dict(batch=32, lr=2e-4, warmup_images=2_000, ema_halflife_kimg=[5.0])
    _paper_train = dict(batch=256, lr=1e-4, warmup_images=10_000 * 256, images=1_000_000 * 256,
                        ema_halflife_kimg=[256 * 6931.1 / 1000.0], ema_rampup=None, precision="bf16")
    train_defaults = {"cpu-tiny": _tiny_train, "cpu-tiny-cond": _tiny_train,
                      "cpu-demo": dict(batch=32, lr=1e-3, warmup_images=1_000, ema_halflife_kimg=[2.0]),
                      "cc12m256": _paper_train, "coco256": _paper_train, "t2i1024": _paper_train}
    deterministic_overrides = {"dropout": 0.0}

    def __init__(self, config: GreedyConfig):
        super().__init__(config)
        c = config
        if c.conditioning == "class" and c.num_classes <= 0:
            raise ConfigError("greedy: conditioning='class' needs num_classes > 0")
        if c.conditioning == "text" and c.text_dim <= 0:
            raise ConfigError("greedy: conditioning='text' needs text_dim > 0")
        self._init_seed = torch.initial_seed()     # the run seed under bench.train (seeded before building)
        self.core = TransformerCore(c.core_grid, c.core_width, c.core_depth, c.heads, self.emb_dim,
                                    c.noise_channels, c.num_classes, c.text_dim if c.conditioning == "text" else 0,
                                    c.mlp_ratio, c.dropout, text_mode=c.text_mode(), null_text=c.null_text)
        self.shallow: ShallowShell | None = ShallowShell(c.channels, c.core_width, c.patch, self.emb_dim)
        self.grown: GrownShell | None = None

    @property
    def emb_dim(self) -> int:
        return self.config.emb_dim or self.config.core_width

    # ---- state --------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        shell = {"grown": self.grown} if self.grown is not None else {"shallow": self.shallow}
        return {"core": self.core, **shell}

    @property
    def is_grown(self) -> bool:
        return self.grown is not None

    def grow(self) -> None:
        """Replace the shallow shell by a new high-resolution encoder/decoder around the same core.
        Idempotent; the new layers' initialisation depends only on the run seed."""
        if self.grown is not None:
            return
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._init_seed + 1)
            grown = GrownShell(c.channels, c.encoder_widths, c.encoder_blocks, c.core_width, self.emb_dim)
        self.grown = grown.to(self.device)
        self.shallow = None

    def stages(self) -> list[Stage]:
        c = self.config
        return [
            Stage("core", c.core_share, (c.low_resolution,), trainable=("core", "shallow"),
                  info={"resolution": c.low_resolution}),
            Stage("grow-frozen", c.frozen_share, (c.resolution,), trainable=("grown",), enter=self.grow,
                  init_from_ema=True, info={"resolution": c.resolution}),
            Stage("grow-all", c.all_share, (c.resolution,), trainable=("core", "grown"),
                  lr_mult={"core": c.core_lr_mult}, init_from_ema=False, info={"resolution": c.resolution}),
        ]

    # ---- the process --------------------------------------------------------------------------
    def logsnr(self, t: torch.Tensor | float, resolution: int) -> torch.Tensor:
        """Shifted cosine logSNR for images of ``resolution`` px (SiD1)."""
        c = self.config
        return logsnr_cosine_shifted(t, resolution, c.ref_resolution, c.logsnr_min, c.logsnr_max)

    def shift(self, resolution: int) -> float:
        return resolution_shift(resolution, self.config.ref_resolution)

    def working_resolution(self) -> int:
        return self.config.resolution if self.is_grown else self.config.low_resolution

    def predict_v(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor | None,
                  text: torch.Tensor | None) -> torch.Tensor:
        """v̂(z, λ) of the current model (shallow or grown); one shell call = one NFE."""
        res = z.shape[-1]
        if res != self.working_resolution():
            raise ValueError(f"greedy: the {'grown' if self.is_grown else 'shallow'} model takes "
                             f"{self.working_resolution()}-px inputs, got {res} px")
        lam = logsnr.float().reshape(-1).expand(z.shape[0]) if logsnr.numel() == 1 else logsnr.float()
        label = lam - self.shift(res) if self.config.label_at_reference else lam
        shell = self.grown if self.is_grown else self.shallow
        return shell(z, label, labels, text, self.core)

    def loss(self, batch: Batch, stage: Stage) -> tuple[torch.Tensor, dict[str, float]]:
        c, rng = self.config, batch.rng
        want = c.resolution if stage.name in GROW_STAGES else c.low_resolution
        if (stage.name in GROW_STAGES) != self.is_grown:
            raise RuntimeError(f"greedy: stage {stage.name!r} needs the {'grown' if want == c.resolution else 'shallow'}"
                               f" model; call the stage's enter() (grow) first")
        if want not in batch.images:
            raise ConfigError(f"greedy stage {stage.name!r}: expected {want}-px images, batch has {sorted(batch.images)}")
        x = batch.images[want]
        n = x.shape[0]
        labels, text = drop_condition(batch.labels, batch.text, c.label_dropout, rng)
        t = rng.rand((n,), dtype=torch.float64).to(x.device)
        lam = self.logsnr(t, want)
        alpha, sigma = (v.to(x.dtype) for v in alpha_sigma_from_logsnr(lam))
        eps = rng.randn(x.shape).to(x.device, x.dtype)
        z = alpha.view(-1, 1, 1, 1) * x + sigma.view(-1, 1, 1, 1) * eps
        v_hat = self.predict_v(z, lam, labels, text).float()
        eps_hat = eps_from_v(z.float(), v_hat, alpha.float(), sigma.float())
        loss = ((eps_hat - eps.float()) ** 2).mean(dim=(1, 2, 3)).mean()
        return loss, {"logsnr_mean": lam.detach().mean(), "shift": self.shift(want)}

    # ---- sampling -----------------------------------------------------------------------------
    def default_steps(self) -> int:
        return self.config.steps

    def sampling_grid(self, steps: int, resolution: int) -> torch.Tensor:
        """Increasing logSNR grid λ(t) at t = 1, 1 − 1/steps, …, 1/steps, then +inf (the final x̂)."""
        if steps < 1:
            raise ConfigError(f"steps: expected a positive integer, got {steps}")
        t = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
        return torch.cat([self.logsnr(t, resolution), torch.tensor([math.inf], dtype=torch.float64)])

    def predict_x_fn(self, cond: Condition | None, guidance: float):
        """x̂(z, λ) = α z − σ v̂, with CFG on v̂ when guided (one batched call, 2 NFE)."""
        return v_prediction_x_fn(self.predict_v, cond, guidance)

    @torch.no_grad()
    def sample(self, rng: StackedRandom, cond: Condition | None = None, steps: int | None = None,
               guidance: float = 1.0) -> tuple[torch.Tensor, int]:
        c = self.config
        res = self.working_resolution()
        z = rng.randn((len(rng), c.channels, res, res)).to(self.device)
        x, nfe = vp_ancestral_sampler(self.predict_x_fn(cond, guidance), z,
                                      self.sampling_grid(steps or c.steps, res), rng, clip_x=c.clip_x)
        x = x.float().clamp(-1, 1)
        if res != c.resolution:   # a stage-A checkpoint: the low-resolution sample, nearest-upsampled
            x = F.interpolate(x, size=(c.resolution, c.resolution), mode="nearest")
        return x, nfe

    # ---- cost -------------------------------------------------------------------------------
    def structured_for(self, stage: Stage) -> "GreedyGrowing":
        """This method if its structure fits ``stage``, else a copy grown (or rebuilt shallow) for it."""
        if (stage.name in GROW_STAGES) == self.is_grown:
            return self
        if stage.name in GROW_STAGES:
            other = copy.deepcopy(self)
            other.grow()
            return other
        return type(self)(self.config).to(self.device)
