"""Consistency models: distillation (`cd`), training (`ct`) and improved training (`ict`).
Song, Dhariwal, Chen, Sutskever, ICML 2023; Song & Dhariwal, ICLR 2024. CARDS.md §7.1, §7.2, §10.1.

Shared: EDM VE process, σ ∈ [0.002, 80], ρ = 7, σ_d = 0.5; consistency function
``f(x, σ) = c_skip x + c_out F(c_in x, 250 ln σ)`` with the σ_min-shifted scalings (f(x, σ_min) = x);
multistep sampling over an index list on the N-level Karras grid (``sampling_ts`` "0,22,39").

- `cd`: stage "teacher" trains an EDM denoiser (EDM scalings, lognormal σ, λ(σ) loss; time input
  250 ln σ like the official teacher, so the student can start from its weights); stage "distill"
  freezes it, copies it into the student and the target (as cm_train.py does), and trains
  ``d(f_θ(x + t_n z, t_n), f_θ⁻(Heun_teacher(x + t_n z; t_n → t_{n+1}), t_{n+1}))``, n ~ U{0..N−2};
  the target θ⁻ ← μθ⁻ + (1−μ)θ after every step.
- `ct`: the teacher's ODE step replaced by the one-sample estimate (x_{t2} = x + t2 z, same z); N(k) and
  μ(k) from the √-curriculum with the official code's N(k)−1 exponent (``mu_variant="paper"``: N(k)).
  ``init_from_teacher`` adds the EDM teacher stage and starts the student from it (what the official
  ImageNet-64 / LSUN launch lines do, openai/consistency_models #53); CIFAR-10 CT is from scratch.
- `ict`: no EMA target (θ⁻ = stopgrad θ, same dropout masks), pseudo-Huber over the whole image with
  c = 0.00054·√D, discretised lognormal index sampling (P_mean −1.1, P_std 2.0) on the ascending grid,
  weight 1/(σ_{i+1} − σ_i), doubling curriculum N(k) = min(s0·2^⌊k/K'⌋, s1) + 1 (10 → 1280).

Curricula read the stage's progress (``stage_progress``): k/K = fraction of the stage trained; iCT's
K is ``total_steps`` (the paper's iteration count), k = ⌊fraction·K⌋, so a shorter run compresses the
same doubling schedule.

Open choices, written down:
- networks are the project's ADM-family UNet (bench.nets.unet); CIFAR-10 presets approximate NCSN++
  (128 ch, mult 2,2,2, 4 blocks, attention at 16) without its FIR / Fourier features;
- ``metric="lpips"`` is the official code's distance (bench.consistency.perceptual): piq's VGG LPIPS with
  average pooling (``replace_pooling=True``) on both images bilinearly resized to 224 px when smaller than
  256 px, in float32; weights only from the asset folder (`bench assets fetch lpips-vgg16 lpips-vgg-lin`).
  The network is a plain attribute loaded on entering the teacher stage or at the first loss, outside
  ``modules()``: not optimised, not in the EMA, not checkpointed; its forward (and the backward through
  the student branch) is inside ``loss`` and so in the measured training FLOPs. ``lpips_pooling="max"``
  (the LPIPS paper's network) and ``lpips_resize`` (0 = native size, for CPU-scale runs) are deviations
  by choice. CT ``imagenet64`` / ``lsun256`` and CD ``imagenet64`` / ``lsun256-lpips`` are the LPIPS launch
  lines of scripts/launch.sh; CD ``imagenet64-l2`` / ``lsun256`` are the released ``*_l2`` runs;
- CIFAR-10 presets keep l2 (the JAX repo's LPIPS is not reproduced here) and declare no published number;
- the distance is the per-example mean (l2/l1, as the official ``mean_flat``) or whole-image
  pseudo-Huber (iCT); the loss is its batch mean, λ ≡ 1 for CD/CT;
- one trainer batch / optimizer for both stages of `cd`: the teacher's learning rate is
  ``teacher_lr_mult`` × the consistency stage's (the run's) learning rate;
- stage shares follow images seen in the papers (ImageNet-64: EDM teacher 2.5 G images vs CD 600k × 2048);
- the iCT loss is multiplied by a constant ``loss_scale`` (default 1/√D, i.e. the RMS form
  √(mean((a−b)²) + 0.00054²) − 0.00054 of the same pseudo-Huber): Adam is invariant to a constant factor
  except through eps, and at the raw O(√D) scale float noise in gradients that are zero in exact
  arithmetic (biases ahead of per-channel GroupNorm) exceeds eps and turns into ±lr steps that differ
  between one process and DDP; ``loss_scale=1`` gives the paper's raw sum;
- iCT batch, EMA and learning rates are from memory of the paper ([M] in the card) and unverified;
- iCT's `lsun256` preset is an extrapolation (the paper has no LSUN result): ADM-256 with the iCT recipe.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import field_validator

from bench.consistency.cm import (METRICS, boundary_denoise, check_index_list, consistency_distance, ct_curriculum,
                                  cm_time_input, ict_num_scales, ict_weights, karras_grid, lognormal_index_probs,
                                  multistep_sample, parse_index_list, rng_restore, rng_snapshot, sample_from_probs,
                                  spaced_indices, teacher_ode_step)
from bench.consistency.perceptual import POOLINGS, LPIPSDistance, load_lpips_network
from bench.diffusion.edm import edm_precond
from bench.diffusion.rng import StackedRandom
from bench.method import Batch, Condition, ConfigError, Method, MethodConfig, Stage, register
from methods.edm import EDMDenoiser, edm_loss


DISTANCES = (*METRICS, "lpips")


class CMConfig(MethodConfig):
    unet: str = "cpu-tiny"
    unet_overrides: dict[str, Any] = {}
    dropout: float = 0.0                  # consistency network (student / target) dropout
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    metric: str = "l2"                    # l2 | l1 | pseudo_huber | lpips
    huber_c: float | None = None          # pseudo-Huber c; None = 0.00054·√D
    lpips_resize: int = 224               # lpips: images < 256 px are resized to this first (official); 0 = never
    lpips_pooling: str = "avg"            # lpips: "avg" = the official piq replace_pooling=True; "max" = LPIPS paper
    assets: str | None = None             # asset folder of the lpips weights; None = $BENCH_ASSETS or ./assets
    sampling_ts: str | None = None        # index list on the sampling grid, e.g. "0,22,39"; None = one step

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in DISTANCES:
            raise ValueError(f"expected one of {', '.join(DISTANCES)}")
        return v

    @field_validator("lpips_resize")
    @classmethod
    def _resize(cls, v: int) -> int:
        if v < 0:
            raise ValueError("expected >= 0 (0 = feed the images at their own size)")
        return v

    @field_validator("lpips_pooling")
    @classmethod
    def _pooling(cls, v: str) -> str:
        if v not in POOLINGS:
            raise ValueError(f"expected one of {', '.join(POOLINGS)}")
        return v

    @field_validator("sampling_ts")
    @classmethod
    def _ts(cls, v: str | None) -> str | None:
        if v is not None:
            parse_index_list(v)
        return v


class TeacherConfig(CMConfig):
    teacher_dropout: float = 0.1
    P_mean: float = -1.2                  # EDM teacher's lognormal σ
    P_std: float = 1.2
    teacher_share: float = 0.5            # budget share of the teacher stage
    teacher_lr_mult: float = 1.0          # teacher learning rate / run learning rate


class CDConfig(TeacherConfig):
    num_scales: int = 18                  # N, fixed for CD
    target_ema: float = 0.95              # μ, fixed for CD
    teacher_solver: str = "heun"

    @field_validator("teacher_solver")
    @classmethod
    def _solver(cls, v: str) -> str:
        if v not in ("heun", "euler"):
            raise ValueError("expected 'heun' or 'euler'")
        return v


class CTConfig(TeacherConfig):
    start_scales: int = 2                 # s0
    end_scales: int = 150                 # s1
    start_ema: float = 0.9                # μ0
    mu_variant: str = "code"              # "code": exp(s0 ln μ0/(N−1)); "paper": /N
    init_from_teacher: bool = False

    @field_validator("mu_variant")
    @classmethod
    def _mu(cls, v: str) -> str:
        if v not in ("code", "paper"):
            raise ValueError("expected 'code' or 'paper'")
        return v


class ICTConfig(CMConfig):
    metric: str = "pseudo_huber"
    start_scales: int = 10                # s0
    end_scales: int = 1280                # s1
    total_steps: int = 400_000            # K of the doubling curriculum
    P_mean: float = -1.1                  # lognormal index distribution
    P_std: float = 2.0
    loss_scale: float | None = None       # constant loss factor; None = 1/√D (see the module docstring)


class CMNetwork(EDMDenoiser):
    """The UNet F behind either EDM scalings (teacher) or the boundary scalings (consistency function);
    both use the CM time input 250·ln σ, so a student initialised from the teacher shares its embedding."""

    def __init__(self, cfg: CMConfig, boundary: bool, dropout: float):
        over = {**cfg.unet_overrides, "dropout": dropout}
        super().__init__(cfg.model_copy(update={"unet_overrides": over}))  # type: ignore[arg-type]
        self.boundary, self.sigma_min = boundary, cfg.sigma_min

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> torch.Tensor:
        x = x.float()
        sigma = sigma.float().reshape(-1).expand(x.shape[0])
        net = lambda x_in, label: self.net(x_in, label, labels, text).float()  # noqa: E731
        if self.boundary:
            return boundary_denoise(net, x, sigma, self.sigma_min, self.sigma_data)
        s = sigma.reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in, _ = edm_precond(s, self.sigma_data)
        return c_skip * x + c_out * net(c_in * x, cm_time_input(sigma))


def ema_halflife_kimg(rate: float, batch: int) -> float:
    """Per-step EMA rate β at a batch size -> half-life in kimg (the trainer's unit)."""
    return batch * math.log(0.5) / math.log(rate) / 1000.0


CM_EMA_RATES = (0.9999432189950708, 0.9999, 0.999)   # official eval EMAs (primary first)


def _paper_train(batch: int, lr: float, steps: int, teacher_images: float = 0.0, **kw: Any) -> dict[str, Any]:
    return dict(batch=batch, lr=lr, images=int(steps * batch + teacher_images),
                ema_halflife_kimg=[round(ema_halflife_kimg(r, batch), 1) for r in CM_EMA_RATES], **kw)


class _Consistency(Method):
    """Shared machinery: networks, teacher stage, target update, sampler. Subclasses give the loss."""

    Config: ClassVar[type[MethodConfig]] = CMConfig
    conditioning = ("none", "class")
    paper = "Song et al. 2023, Consistency Models; Song & Dhariwal 2024, Improved Techniques for Training CMs"
    stage_name: ClassVar[str] = "train"

    def __init__(self, config: CMConfig):
        super().__init__(config)
        self.student = CMNetwork(config, boundary=True, dropout=config.dropout)
        self.teacher: CMNetwork | None = None
        self.target: CMNetwork | None = None
        if self.uses_teacher():
            self.teacher = CMNetwork(config, boundary=False, dropout=config.teacher_dropout)
        if self.uses_target():
            self.target = CMNetwork(config, boundary=True, dropout=config.dropout)
            self.target.load_state_dict(self.student.state_dict())
            self.target.requires_grad_(False)
        self._fraction = 0.0
        self._lpips: LPIPSDistance | None = None   # loaded at the first lpips loss; never in modules()

    # ---- structure -----------------------------------------------------------------------------
    def uses_teacher(self) -> bool:
        return False

    def uses_target(self) -> bool:
        return True

    def modules(self) -> dict[str, torch.nn.Module]:
        mods: dict[str, torch.nn.Module] = {"student": self.student}
        if self.teacher is not None:
            mods["teacher"] = self.teacher
        if self.target is not None:
            mods["target"] = self.target
        return mods

    def sampling_modules(self) -> tuple[str, ...]:
        return ("student",)

    def stages(self) -> list[Stage]:
        res = (self.config.resolution,)
        main = Stage(self.stage_name, 1.0, res, trainable=("student",))
        if self.teacher is None:
            return [main]
        share = self.config.teacher_share
        if not 0 < share < 1:
            raise ConfigError(f"{self.name}: teacher_share: expected in (0, 1), got {share}")
        teacher = Stage("teacher", share, res, trainable=("teacher",),
                        lr_mult={"teacher": self.config.teacher_lr_mult}, enter=self._load_distance)
        main.share, main.enter = 1.0 - share, self._init_from_teacher
        return [teacher, main]

    @torch.no_grad()
    def _init_from_teacher(self) -> None:
        """Student and target start from the (EMA) teacher; on resume the checkpoint then overwrites them."""
        state = self.teacher.state_dict()
        self.student.load_state_dict(state)
        if self.target is not None:
            self.target.load_state_dict(state)

    # ---- training ----------------------------------------------------------------------------------
    def stage_progress(self, stage: Stage, fraction: float) -> None:
        self._fraction = float(fraction)

    def target_rate(self) -> float:
        return 0.0

    @torch.no_grad()
    def after_step(self, stage: Stage, step: int, images_seen: int) -> None:
        if stage.name != self.stage_name or self.target is None:
            return
        mu = self.target_rate()
        for pt, ps in zip(self.target.parameters(), self.student.parameters()):
            pt.mul_(mu).add_(ps.detach(), alpha=1.0 - mu)
        for bt, bs in zip(self.target.buffers(), self.student.buffers()):
            bt.copy_(bs)

    def loss(self, batch: Batch, stage: Stage) -> tuple[torch.Tensor, dict[str, float]]:
        if stage.name == "teacher":
            return self._teacher_loss(batch)
        return self.consistency_loss(batch)

    def _teacher_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """EDM's loss on the teacher (methods.edm.edm_loss)."""
        return edm_loss(self.teacher, batch, self.config)

    def consistency_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def _load_distance(self) -> None:
        """Load the LPIPS network once (also on entering the teacher stage, so a missing asset stops a run
        before the teacher is trained rather than after)."""
        cfg = self.config
        if cfg.metric == "lpips" and self._lpips is None:
            self._lpips = LPIPSDistance(load_lpips_network(cfg.assets, cfg.lpips_pooling), cfg.lpips_resize)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-example d(a, b) of the configured metric (LPIPS: from the asset folder)."""
        cfg = self.config
        if cfg.metric != "lpips":
            return consistency_distance(a, b, cfg.metric, cfg.huber_c)
        self._load_distance()
        return self._lpips(a, b)

    def _grid(self, n: int, device: torch.device) -> torch.Tensor:
        c = self.config
        return karras_grid(n, c.sigma_min, c.sigma_max, c.rho).to(device=device, dtype=torch.float32)

    def _paired_loss(self, batch: Batch, n_scales: int, x_next_fn) -> tuple[torch.Tensor, dict[str, float]]:
        """CD / CT: n ~ U{0..N−2}, student at t = t_n (larger σ), EMA target at t2 = t_{n+1} on
        ``x_next_fn(x_t, t, t2, y, z)``; student and target passes replay the same dropout masks."""
        y, rng = batch.top(), batch.rng
        grid = self._grid(n_scales, y.device)
        idx = rng.randint(0, n_scales - 1, (y.shape[0],)).to(y.device)
        t, t2 = grid[idx], grid[idx + 1]
        z = rng.randn(y.shape).to(y.device)
        x_t = y + t.reshape(-1, 1, 1, 1) * z
        self.target.train(self.student.training)
        state = rng_snapshot(y.device)
        out = self.student(x_t, t, batch.labels)
        with torch.no_grad():
            x_t2 = x_next_fn(x_t, t, t2, y, z)
            rng_restore(state, y.device)
            target = self.target(x_t2, t2, batch.labels)
        d = self.distance(out, target)
        return d.mean(), {"num_scales": float(n_scales), "target_ema": self.target_rate()}

    # ---- sampling ----------------------------------------------------------------------------------
    def sampling_grid_size(self) -> int:
        raise NotImplementedError

    def sampling_indices(self, steps: int | None = None) -> list[int]:
        n = self.sampling_grid_size()
        ts = parse_index_list(self.config.sampling_ts) if self.config.sampling_ts else [0, n - 1]
        if steps is not None and steps != len(ts) - 1:
            ts = spaced_indices(n, steps)
        return check_index_list(ts, n)

    def default_steps(self) -> int:
        return len(self.sampling_indices()) - 1

    @torch.no_grad()
    def sample(self, rng: StackedRandom, cond: Condition | None = None, steps: int | None = None,
               guidance: float = 1.0) -> tuple[torch.Tensor, int]:
        cfg = self.config
        labels = None if cond is None else cond.labels
        ts = self.sampling_indices(steps)
        sigmas = karras_grid(self.sampling_grid_size(), cfg.sigma_min, cfg.sigma_max, cfg.rho)[ts]
        noise = rng.randn((len(rng), cfg.channels, cfg.resolution, cfg.resolution)).to(self.device)
        x, nfe = multistep_sample(lambda x, s: self.student(x, s, labels), noise, sigmas, rng,
                                  cfg.sigma_min, cfg.sigma_max, clip=True)
        return x.float().clamp(-1, 1), nfe


_CD_IN64 = dict(resolution=64, conditioning="class", num_classes=1000, unet="adm64", num_scales=40, target_ema=0.95,
                sampling_ts="0,22,39", teacher_share=0.67, teacher_lr_mult=12.5)
_CD_LSUN = dict(resolution=256, unet="adm256", num_scales=40, target_ema=0.95, teacher_share=0.5, teacher_lr_mult=10.0)


@register
class ConsistencyDistillation(_Consistency):
    name = "cd"
    Config = CDConfig
    stage_name = "distill"
    description = "Consistency distillation: EDM teacher stage, then CD with a Heun teacher step and an EMA target"
    presets = {
        "cpu-tiny": dict(resolution=32, unet="cpu-tiny", num_scales=18, target_ema=0.95, sampling_ts="0,8,17"),
        "cpu-demo": dict(resolution=16, unet="cpu-tiny", num_scales=18, target_ema=0.95, sampling_ts="0,8,17", conditioning="class", num_classes=10),
        "cifar10": dict(resolution=32, unet="cpu-tiny", num_scales=18, target_ema=0.95,
                        unet_overrides=dict(model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
                                            attn_resolutions=(16,), channels_per_head=64),
                        teacher_dropout=0.13, teacher_share=0.33, teacher_lr_mult=2.5),
        # scripts/launch.sh "L_CD^N (LPIPS) on ImageNet-64": --loss_norm lpips --start_scales 40 --start_ema 0.95
        # --global_batch_size 2048 --lr 0.000008 --total_training_steps 600000 --teacher_model_path
        # edm_imagenet64_ema.pt --dropout 0.0 --teacher_dropout 0.1; two-step --ts 0,22,39 (CARDS.md §7.1)
        "imagenet64": dict(_CD_IN64, metric="lpips"),
        # the same launch line with --loss_norm l2: the released cd_imagenet64_l2 (same --ts 0,22,39)
        "imagenet64-l2": dict(_CD_IN64, metric="l2"),
        # "L_CD^N (l2) on LSUN 256": the released cd_bedroom256_l2, --ts 0,18,39
        "lsun256": dict(_CD_LSUN, metric="l2", sampling_ts="0,18,39"),
        # "L_CD^N (LPIPS) on LSUN 256" (no resize at 256 px), --ts 0,17,39
        "lsun256-lpips": dict(_CD_LSUN, metric="lpips", sampling_ts="0,17,39"),
    }
    train_defaults = {
        "cpu-tiny": dict(batch=32, lr=2e-4, warmup_images=2_000, ema_halflife_kimg=[5.0]),
        "cpu-demo": dict(batch=32, lr=1e-3, warmup_images=1_000, ema_halflife_kimg=[2.0]),
        "cifar10": _paper_train(512, 4e-4, 800_000, 200e6, optimizer="radam", warmup_images=10_000_000),
        "imagenet64": _paper_train(2048, 8e-6, 600_000, 2.5e9, warmup_images=0),
        "imagenet64-l2": _paper_train(2048, 8e-6, 600_000, 2.5e9, warmup_images=0),
        "lsun256": _paper_train(256, 1e-5, 600_000, 600_000 * 256, warmup_images=0),
        "lsun256-lpips": _paper_train(256, 1e-5, 600_000, 600_000 * 256, warmup_images=0),
    }
    # CM abstract (1-step 6.20) / sCM Table 1 (2-step 4.70): the LPIPS run; no published l2 ImageNet number
    published_keys = {"imagenet64": "cd-lpips-imagenet64"}
    deterministic_overrides = {"dropout": 0.0, "teacher_dropout": 0.0}

    def uses_teacher(self) -> bool:
        return True

    def target_rate(self) -> float:
        return self.config.target_ema

    def sampling_grid_size(self) -> int:
        return self.config.num_scales

    def consistency_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        labels, solver = batch.labels, self.config.teacher_solver

        def heun(x_t, t, t2, y, z):
            return teacher_ode_step(lambda x, s: self.teacher(x, s, labels), x_t, t, t2, solver)
        return self._paired_loss(batch, self.config.num_scales, heun)


@register
class ConsistencyTraining(_Consistency):
    name = "ct"
    Config = CTConfig
    description = "Consistency training: one-sample x_t2 = x + t2·z, √-curriculum N(k) and target EMA μ(k)"
    presets = {
        "cpu-tiny": dict(resolution=32, unet="cpu-tiny", start_scales=2, end_scales=32, start_ema=0.9,
                         sampling_ts="0,16,32"),
        "cpu-demo": dict(resolution=16, unet="cpu-tiny", start_scales=2, end_scales=32, start_ema=0.9,
                         sampling_ts="0,16,32", conditioning="class", num_classes=10),
        "cifar10": dict(resolution=32, unet="cpu-tiny", start_scales=2, end_scales=150, start_ema=0.9,
                        unet_overrides=dict(model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
                                            attn_resolutions=(16,), channels_per_head=64)),
        # scripts/launch.sh "L_CT^N on ImageNet-64": --loss_norm lpips --start_scales 2 --end_scales 200
        # --start_ema 0.95 --global_batch_size 2048 --lr 0.0001 --total_training_steps 800000
        # --teacher_model_path edm_imagenet64_ema.pt (student starts from it); --ts 0,106,200 (CARDS.md §7.1)
        "imagenet64": dict(resolution=64, conditioning="class", num_classes=1000, unet="adm64", metric="lpips",
                           start_scales=2, end_scales=200, start_ema=0.95, sampling_ts="0,106,200",
                           init_from_teacher=True, teacher_share=0.6, teacher_lr_mult=1.0),
        # "L_CT^N on LSUN 256": --loss_norm lpips --end_scales 150 --lr 0.00005, 1M steps; Bedroom --ts 0,67,150
        "lsun256": dict(resolution=256, unet="adm256", metric="lpips", start_scales=2, end_scales=150,
                        start_ema=0.95, sampling_ts="0,67,150", init_from_teacher=True, teacher_share=0.5,
                        teacher_lr_mult=2.0),
    }
    train_defaults = {
        "cpu-tiny": dict(batch=32, lr=2e-4, warmup_images=2_000, ema_halflife_kimg=[5.0]),
        "cpu-demo": dict(batch=32, lr=1e-3, warmup_images=1_000, ema_halflife_kimg=[2.0]),
        "cifar10": _paper_train(512, 2e-4, 800_000, optimizer="radam", warmup_images=10_000_000),
        "imagenet64": _paper_train(2048, 1e-4, 800_000, 2.5e9, warmup_images=0),
        "lsun256": _paper_train(256, 5e-5, 1_000_000, 1_000_000 * 256, warmup_images=0),
    }
    # CT (LPIPS) ImageNet-64 13.0 / 11.1 (unverified values; the setting is the launch line above)
    published_keys = {"imagenet64": "ct-lpips-imagenet64"}
    deterministic_overrides = {"dropout": 0.0, "teacher_dropout": 0.0}

    def uses_teacher(self) -> bool:
        return self.config.init_from_teacher

    def curriculum(self) -> tuple[int, float]:
        c = self.config
        return ct_curriculum(self._fraction, c.start_scales, c.end_scales, c.start_ema, c.mu_variant)

    def target_rate(self) -> float:
        return self.curriculum()[1]

    def sampling_grid_size(self) -> int:
        return self.config.end_scales + 1

    def consistency_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        n_scales, _ = self.curriculum()
        return self._paired_loss(batch, n_scales, lambda x_t, t, t2, y, z: y + t2.reshape(-1, 1, 1, 1) * z)


@register
class ImprovedConsistencyTraining(_Consistency):
    name = "ict"
    Config = ICTConfig
    description = "Improved CT: no EMA target, pseudo-Huber, lognormal index sampling, 1/Δσ weights, doubling N(k)"
    presets = {
        "cpu-tiny": dict(resolution=32, unet="cpu-tiny", start_scales=4, end_scales=64, total_steps=2_000,
                         dropout=0.3, sampling_ts="0,32,64"),
        "cpu-demo": dict(resolution=16, unet="cpu-tiny", start_scales=4, end_scales=64, total_steps=2_000,
                         dropout=0.3, sampling_ts="0,32,64", conditioning="class", num_classes=10),
        "cifar10": dict(resolution=32, unet="cpu-tiny", dropout=0.3, total_steps=400_000,
                        unet_overrides=dict(model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
                                            attn_resolutions=(16,), channels_per_head=64)),
        "imagenet64": dict(resolution=64, conditioning="class", num_classes=1000, unet="adm64", dropout=0.2,
                           total_steps=800_000),
        "lsun256": dict(resolution=256, unet="adm256", dropout=0.2, total_steps=800_000),
    }
    train_defaults = {
        "cpu-tiny": dict(batch=32, lr=2e-4, warmup_images=2_000, ema_halflife_kimg=[5.0]),
        "cpu-demo": dict(batch=32, lr=1e-3, warmup_images=1_000, ema_halflife_kimg=[2.0]),
        "cifar10": dict(batch=1024, lr=1e-4, betas=(0.9, 0.995), images=400_000 * 1024, warmup_images=0,
                        ema_halflife_kimg=[round(ema_halflife_kimg(0.99993, 1024), 1)]),
        "imagenet64": dict(batch=4096, lr=1e-4, betas=(0.9, 0.995), images=800_000 * 4096, warmup_images=0,
                           ema_halflife_kimg=[round(ema_halflife_kimg(0.99997, 4096), 1)]),
        "lsun256": dict(batch=256, lr=5e-5, betas=(0.9, 0.995), images=800_000 * 256, warmup_images=0,
                        ema_halflife_kimg=[round(ema_halflife_kimg(0.99997, 256), 1)]),
    }
    deterministic_overrides = {"dropout": 0.0}

    def uses_target(self) -> bool:
        return False

    def num_scales(self) -> int:
        c = self.config
        return ict_num_scales(math.floor(self._fraction * c.total_steps), c.total_steps, c.start_scales, c.end_scales)

    def sampling_grid_size(self) -> int:
        return self.config.end_scales + 1

    def consistency_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, y, rng = self.config, batch.top(), batch.rng
        n_scales = self.num_scales()
        grid = self._grid(n_scales, y.device).flip(0)                   # ascending σ
        probs = lognormal_index_probs(grid.double(), cfg.P_mean, cfg.P_std)
        i = sample_from_probs(probs, rng.rand((y.shape[0],))).to(y.device)
        s_lo, s_hi = grid[i], grid[i + 1]
        z = rng.randn(y.shape).to(y.device)
        state = rng_snapshot(y.device)
        out = self.student(y + s_hi.reshape(-1, 1, 1, 1) * z, s_hi, batch.labels)
        with torch.no_grad():                                            # θ⁻ = stopgrad(θ), same dropout
            rng_restore(state, y.device)
            target = self.student(y + s_lo.reshape(-1, 1, 1, 1) * z, s_lo, batch.labels)
        d = self.distance(out, target)
        w = ict_weights(s_lo, s_hi)
        scale = cfg.loss_scale if cfg.loss_scale is not None else 1.0 / math.sqrt(y[0].numel())
        return scale * (w * d).mean(), {"num_scales": float(n_scales), "sigma_hi_mean": s_hi.detach().mean()}
