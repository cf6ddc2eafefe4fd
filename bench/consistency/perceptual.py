"""LPIPS as a consistency distance, computed as openai/consistency_models does (cm/karras_diffusion.py,
``loss_norm="lpips"``): piq 0.7.0's ``LPIPS(replace_pooling=True, reduction="none")`` applied to
``(x + 1) / 2`` after bilinear up-sampling of both images to 224 px when they are smaller than 256 px.

That network is the VGG16 LPIPS of Zhang et al. 2018 (features relu1_2 … relu5_3, each unit-normalised
over channels; squared differences weighted per channel by the linear heads, averaged over space, summed
over layers), with ImageNet mean/std normalisation of [0, 1] input, which is exactly the `lpips` package's
ScalingLayer on [-1, 1] input. ``replace_pooling=True`` swaps VGG's 2×2 max-pooling for 2×2 average
pooling, so ``pooling="avg"`` (the default) does the same to the `lpips` package's network; ``"max"``
gives the original LPIPS network.

The network is built with the `lpips` package (``lpips.LPIPS(net="vgg")``) on the meta device, so nothing
is downloaded or initialised, and every weight is then assigned from two files of the asset folder:
  lpips/vgg16-397923af.pth   torchvision's ImageNet VGG16 (IMAGENET1K_V1; what piq and lpips load)
  lpips/vgg-lin-v0.1.pth     the v0.1 VGG linear heads (the file the `lpips` package ships)
A missing file is a one-line AssetError naming it and the `bench assets fetch` command. The network is
frozen and lives outside ``Method.modules()``: not optimised, not in the EMA, not checkpointed.
"""
from __future__ import annotations

import contextlib
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.asset_specs import (LIN_KEY, LIN_RELPATH, LIN_SHA256_PREFIX, LIN_SOURCE,  # noqa: F401
                               VGG16_KEY, VGG16_RELPATH, VGG16_URL, lpips_lin_spec, lpips_vgg16_spec)
from bench.method import ConfigError

POOLINGS = ("avg", "max")
RESIZE_BELOW = 256            # official: images narrower than this are resized before LPIPS
VGG16_CHANNELS = (64, 128, 256, 512, 512)


def asset_specs() -> list:
    return [lpips_vgg16_spec(), lpips_lin_spec()]


# ---- weights ---------------------------------------------------------------------------------------

def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one line naming it
        raise ConfigError(f"{path}: not a torch weight file ({type(err).__name__}: {err})".splitlines()[0]) from None


def _head_tensors(obj: Any, path: Path) -> list[torch.Tensor]:
    """The five (1, C, 1, 1) head weights from the lpips layout (``lin{k}.model.{0|1}.weight``) or piq's
    list of five tensors."""
    if isinstance(obj, dict):
        found = {}
        for k, v in obj.items():
            m = re.fullmatch(r"lin(\d)\.model\.\d\.weight", k)
            if m:
                found[int(m.group(1))] = v
        heads = [found.get(i) for i in range(len(VGG16_CHANNELS))]
    elif isinstance(obj, (list, tuple)):
        heads = list(obj)
    else:
        heads = []
    if len(heads) != len(VGG16_CHANNELS) or any(h is None for h in heads):
        raise ConfigError(f"{path}: expected the 5 LPIPS VGG linear heads (keys lin0..lin4.model.*.weight, or a "
                          "list of 5 tensors)")
    out = []
    for i, (h, c) in enumerate(zip(heads, VGG16_CHANNELS)):
        if not isinstance(h, torch.Tensor) or h.numel() != c:
            raise ConfigError(f"{path}: head {i}: expected {c} weights, got "
                              f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")
        out.append(h.detach().float().reshape(1, c, 1, 1))
    return out


def build_lpips_network(vgg16_path: str | Path, lin_path: str | Path, pooling: str = "avg") -> nn.Module:
    """``lpips.LPIPS(net="vgg")`` with every weight assigned from the two files (strict: each trunk conv
    from ``features.<i>.*`` of a torchvision VGG16 state dict, each head from the heads file); frozen, eval."""
    import lpips

    if pooling not in POOLINGS:
        raise ConfigError(f"lpips_pooling: expected one of {', '.join(POOLINGS)}, got {pooling!r}")
    vgg16_path, lin_path = Path(vgg16_path), Path(lin_path)
    trunk, heads = _load(vgg16_path), _head_tensors(_load(lin_path), lin_path)
    if not isinstance(trunk, dict):
        raise ConfigError(f"{vgg16_path}: expected a torchvision VGG16 state dict")
    with torch.device("meta"), warnings.catch_warnings():   # no download (pnet_rand), no init, no memory
        warnings.simplefilter("ignore", UserWarning)          # lpips passes torchvision's old `pretrained=`
        net = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, use_dropout=False, verbose=False)
    state: dict[str, torch.Tensor] = dict(lpips.ScalingLayer().state_dict(prefix="scaling_layer."))
    for key in net.state_dict():
        m = re.fullmatch(r"net\.slice\d\.(\d+)\.(weight|bias)", key)
        if m:
            src = f"features.{m.group(1)}.{m.group(2)}"
            if src not in trunk:
                raise ConfigError(f"{vgg16_path}: not a torchvision VGG16 state dict (missing {src!r})")
            state[key] = trunk[src].detach().float()
            continue
        m = re.fullmatch(r"(?:lin|lins\.)(\d)\.model\.0\.weight", key)
        if m:
            state[key] = heads[int(m.group(1))]
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ConfigError(f"{vgg16_path}: weights do not fit VGG16 ({str(err).splitlines()[0]})") from None
    if pooling == "avg":             # piq's replace_pooling=True: every MaxPool2d -> AvgPool2d(2, 2)
        for parent in net.net.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.MaxPool2d):
                    parent.add_module(name, nn.AvgPool2d(kernel_size=2, stride=2, padding=0))
    net.requires_grad_(False)
    return net.eval()


def load_lpips_network(assets: str | None = None, pooling: str = "avg") -> nn.Module:
    """The network from the asset folder (``assets`` or $BENCH_ASSETS or ./assets); AssetError, one line
    naming the missing file and the staging command, when a file is absent."""
    from bench.metrics.assets import AssetFolder

    folder = AssetFolder(assets)
    vgg, _ = folder.require(lpips_vgg16_spec())
    lin, _ = folder.require(lpips_lin_spec())
    return build_lpips_network(vgg, lin, pooling)


# ---- the distance ----------------------------------------------------------------------------------

def lpips_inputs(a: torch.Tensor, resize: int = 224) -> torch.Tensor:
    """What the network sees: images narrower than 256 px bilinearly resized to ``resize`` (the official
    ``F.interpolate(x, size=224, mode="bilinear")``, align_corners=False); ``resize=0`` keeps them."""
    if resize and a.shape[-1] < RESIZE_BELOW and a.shape[-1] != resize:
        return F.interpolate(a, size=resize, mode="bilinear")
    return a


class LPIPSDistance:
    """Per-example LPIPS ``d(a, b)`` of images in [-1, 1] (the `lpips` package's input range). A plain
    object, not an nn.Module attribute of the method, so nothing in the trainer ever sees its weights."""

    def __init__(self, net: nn.Module, resize: int = 224):
        self.net, self.resize = net, int(resize)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.net.to(a.device)          # no-op once there
        # float32 outside any autocast: the official UNet returns float32 and piq casts LPIPS to its input
        # (the meta device of FLOP planning has no autocast to leave)
        off = torch.autocast(a.device.type, enabled=False) if a.device.type in ("cpu", "cuda") else \
            contextlib.nullcontext()
        with off:
            a, b = (lpips_inputs(x.float(), self.resize) for x in (a, b))
            return self.net(a, b).reshape(a.shape[0])


# ---- random weights in the real layout (tests, CPU sanity runs) ------------------------------------

VGG16_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
               (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512),
               (28, 512, 512))   # (features index, in channels, out channels) of torchvision's VGG16


def random_lpips_states(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trunk, heads) in the real files' layouts: torchvision's VGG16 init for the convs (Kaiming normal,
    fan_out, zero bias; the classifier is left out, the loader ignores it) and positive heads in the
    lpips package's key layout (``lin{k}.model.1.weight``)."""
    g = torch.Generator().manual_seed(seed)
    trunk = {}
    for i, cin, cout in VGG16_CONVS:
        std = (2.0 / (cout * 9)) ** 0.5
        trunk[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * std
        trunk[f"features.{i}.bias"] = torch.zeros(cout)
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(VGG16_CHANNELS)}
    return trunk, heads


def random_lpips_overrides(root: str | Path, seed: int = 0, resize: int = 0) -> dict[str, Any]:
    """Stage random LPIPS weights under ``root`` and return the CM method_config overrides that use them
    (CPU-scale runs: ``resize=0`` feeds images at their own size instead of the official 224 px)."""
    from bench.metrics.assets import AssetFolder

    stage_random_lpips(AssetFolder(root), seed)
    return {"metric": "lpips", "assets": str(root), "lpips_resize": int(resize)}


def stage_random_lpips(folder, seed: int = 0) -> None:
    """Random LPIPS weights staged as the two assets (recorded as not the published files)."""
    trunk, heads = random_lpips_states(seed)
    with tempfile.TemporaryDirectory() as tmp:
        for spec, state in zip(asset_specs(), (trunk, heads)):
            p = Path(tmp) / Path(spec.relpath).name
            torch.save(state, p)
            folder.add(spec, p, source=f"random-init seed {seed} (not the published file)")
