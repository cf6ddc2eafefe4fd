"""Latent sources for the consistency decoder: image (N, 3, R, R) in [-1, 1] -> unscaled latent
(N, 4, R/8, R/8).

- ``random-conv``: a fixed, seeded, untrained strided-conv encoder (tests, cpu-tiny): deterministic in
  every process without touching the global RNG, never trained, never checkpointed;
- ``sd-vae``: the Stable Diffusion 1.x VAE encoder (AutoencoderKL: 128/256/512/512 channels, 2 ResBlocks
  per level, mid attention, double_z + quant_conv), weights read from the asset folder as a
  safetensors file in diffusers' layout or the original CompVis layout. The latent is the posterior
  mean (deterministic reconstructions).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.asset_specs import SD_VAE_KEY, SD_VAE_RELPATH, sd_vae_spec  # noqa: F401
from bench.method import ConfigError

LATENT_SOURCES = ("random-conv", "sd-vae")


class RandomConvEncoder(nn.Module):
    """Three stride-2 4×4 convs (×8 down-sampling) with seeded Gaussian weights; a fixed stand-in for a
    VAE encoder. Its output is scaled by 1/0.18215 so the normalised latent is O(1)."""

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, width: int = 16, seed: int = 0):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, width, 4, 2, 1), nn.SiLU(),
                                 nn.Conv2d(width, 2 * width, 4, 2, 1), nn.SiLU(),
                                 nn.Conv2d(2 * width, latent_channels, 4, 2, 1))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                    m.bias.zero_()
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images) / 0.18215


# ---- SD VAE encoder (diffusers layout) -------------------------------------------------------------

def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


class _VAEResnet(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class _VAEDownsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))        # asymmetric padding of the SD VAE


class _VAEAttention(nn.Module):
    """Single-head self-attention over the spatial positions (the VAE's mid block)."""

    def __init__(self, c: int):
        super().__init__()
        self.group_norm = _gn(c)
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = self.group_norm(x).reshape(n, c, h * w).transpose(1, 2)
        out = F.scaled_dot_product_attention(self.to_q(t)[:, None], self.to_k(t)[:, None], self.to_v(t)[:, None])[:, 0]
        return x + self.to_out[0](out).transpose(1, 2).reshape(n, c, h, w)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, down: bool):
        super().__init__()
        self.resnets = nn.ModuleList([_VAEResnet(cin if i == 0 else cout, cout) for i in range(layers)])
        self.downsamplers = nn.ModuleList([_VAEDownsample(cout)]) if down else None


class _Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.resnets = nn.ModuleList([_VAEResnet(c, c), _VAEResnet(c, c)])
        self.attentions = nn.ModuleList([_VAEAttention(c)])


class _Encoder(nn.Module):
    def __init__(self, channels: tuple[int, ...], layers: int, latent_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        cin = channels[0]
        self.down_blocks = nn.ModuleList()
        for i, c in enumerate(channels):
            self.down_blocks.append(_Block(cin, c, layers, down=i < len(channels) - 1))
            cin = c
        self.mid_block = _Mid(cin)
        self.conv_norm_out = _gn(cin)
        self.conv_out = nn.Conv2d(cin, 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for blk in self.down_blocks:
            for r in blk.resnets:
                h = r(h)
            if blk.downsamplers is not None:
                h = blk.downsamplers[0](h)
        m = self.mid_block
        h = m.resnets[1](m.attentions[0](m.resnets[0](h)))
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class SDVAEEncoder(nn.Module):
    """AutoencoderKL encoder + quant_conv; forward returns the posterior mean (unscaled latent)."""

    def __init__(self, channels: tuple[int, ...] = (128, 256, 512, 512), layers: int = 2, latent_channels: int = 4):
        super().__init__()
        self.encoder = _Encoder(channels, layers, latent_channels)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.latent_channels = latent_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(images))
        return moments[:, : self.latent_channels]


_COMPVIS_RULES: list[tuple[str, str]] = [
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.nin_shortcut\.", r"encoder.down_blocks.\1.resnets.\2.conv_shortcut."),
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"^encoder\.mid\.block_1\.", "encoder.mid_block.resnets.0."),
    (r"^encoder\.mid\.block_2\.", "encoder.mid_block.resnets.1."),
    (r"^encoder\.mid\.attn_1\.norm\.", "encoder.mid_block.attentions.0.group_norm."),
    (r"^encoder\.mid\.attn_1\.q\.", "encoder.mid_block.attentions.0.to_q."),
    (r"^encoder\.mid\.attn_1\.k\.", "encoder.mid_block.attentions.0.to_k."),
    (r"^encoder\.mid\.attn_1\.v\.", "encoder.mid_block.attentions.0.to_v."),
    (r"^encoder\.mid\.attn_1\.proj_out\.", "encoder.mid_block.attentions.0.to_out.0."),
    (r"^encoder\.norm_out\.", "encoder.conv_norm_out."),
    # diffusers < 0.14 attention names
    (r"\.attentions\.0\.query\.", ".attentions.0.to_q."),
    (r"\.attentions\.0\.key\.", ".attentions.0.to_k."),
    (r"\.attentions\.0\.value\.", ".attentions.0.to_v."),
    (r"\.attentions\.0\.proj_attn\.", ".attentions.0.to_out.0."),
]


def to_diffusers_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the encoder + quant_conv entries of a VAE state dict, renamed to diffusers' layout (1×1 conv
    attention weights of the CompVis layout become linear weights)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("first_stage_model."):
            k = k[len("first_stage_model."):]
        if not (k.startswith("encoder.") or k.startswith("quant_conv.")):
            continue
        for pat, rep in _COMPVIS_RULES:
            if re.search(pat, k):
                k = re.sub(pat, rep, k)
        if ".attentions.0.to_" in k and k.endswith("weight") and v.ndim == 4:
            v = v[:, :, 0, 0]
        out[k] = v
    return out


def load_sd_vae_encoder(path: str | Path) -> SDVAEEncoder:
    """Build the SD VAE encoder and load its weights from a safetensors (or torch) file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        from bench.safeload import torch_load
        state = torch_load(path, "SD-VAE weight file")
        state = state.get("state_dict", state)
    enc = SDVAEEncoder()
    mapped = to_diffusers_keys(state)
    missing, unexpected = enc.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{path}: not an SD VAE (AutoencoderKL) weight file: {len(missing)} missing keys "
                          f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    enc.requires_grad_(False)
    return enc.eval()


sd_vae_asset_spec = sd_vae_spec     # the name tests and callers use


def build_latent_source(kind: str, assets: str | None = None, seed: int = 0) -> nn.Module:
    """The frozen encoder of ``kind``; ``sd-vae`` needs ``sd-vae/diffusion_pytorch_model.safetensors`` in
    the asset folder (``assets`` or $BENCH_ASSETS) and fails at once, naming that file, when it is absent."""
    if kind == "random-conv":
        return RandomConvEncoder(seed=seed)
    if kind == "sd-vae":
        from bench.metrics.assets import AssetFolder
        path, _ = AssetFolder(assets).require(sd_vae_asset_spec())
        return load_sd_vae_encoder(path)
    raise ConfigError(f"latent_source: expected one of {', '.join(LATENT_SOURCES)}, got {kind!r}")
