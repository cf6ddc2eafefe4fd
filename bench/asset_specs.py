"""What each staged weight file is: its key, its path inside the asset folder, where `bench assets fetch`
gets it and its published hash.

It sits below both users so neither imports the other for it: bench.metrics.assets (the asset folder)
and bench.consistency.latents (the consistency decoder's SD-VAE latent source).
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.method import ConfigError

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
SD_VAE_KEY = "sd-vae"
SD_VAE_RELPATH = "sd-vae/diffusion_pytorch_model.safetensors"
VGG16_KEY = "lpips-vgg16"
VGG16_RELPATH = "lpips/vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LIN_KEY = "lpips-vgg-lin"
LIN_RELPATH = "lpips/vgg-lin-v0.1.pth"
LIN_SOURCE = "package:lpips/weights/v0.1/vgg.pth"     # copied from the installed `lpips` package, no download
LIN_SHA256_PREFIX = "a78928a0"                       # that file in lpips 0.1.4


@dataclass(frozen=True)
class AssetSpec:
    key: str                      # what `bench assets fetch KEY` stages
    relpath: str                  # path inside the asset folder
    url: str | None = None        # where `fetch` gets it (None: built or added locally)
    published_sha256_prefix: str | None = None
    note: str = ""


def inception_spec() -> AssetSpec:
    return AssetSpec("inception", "inception/weights-inception-2015-12-05-6726825d.pth", INCEPTION_URL, "6726825d",
                     "TF Inception-v3 2015-12-05 in torch-fidelity's format (FID, sFID, IS, P/R, KID)")


def clip_spec(model: str, pretrained: str) -> AssetSpec:
    return AssetSpec(f"clip:{model}:{pretrained}", f"clip/{model}--{pretrained}.bin", f"open_clip:{model}:{pretrained}",
                     None, "open_clip weights for CLIP score")


def dinov2_spec(model: str = "vit_large_patch14_dinov2.lvd142m") -> AssetSpec:
    return AssetSpec(f"dinov2:{model}", f"dinov2/{model}.safetensors", f"hf-hub:timm/{model}", None,
                     "DINOv2 encoder (timm layout) for FD-DINOv2")


def trained_spec(name: str) -> AssetSpec:
    return AssetSpec(f"trained:{name}", f"extractors/{name}.pt", None, None,
                     "small CNN trained on a dataset's labels (bench assets train-extractor)")


def t5_spec(name: str) -> AssetSpec:
    """A T5 encoder (``transformers`` layout, encoder weights in one model.safetensors), e.g. google/flan-t5-xl."""
    return AssetSpec(f"t5:{name}", f"t5/{name.replace('/', '__')}/model.safetensors", f"hf:{name}", None,
                     "T5 text encoder for token-level text conditioning (with config.json and tokenizer files)")


def lpips_vgg16_spec() -> AssetSpec:
    return AssetSpec(VGG16_KEY, VGG16_RELPATH, VGG16_URL, "397923af",
                     "torchvision VGG16 ImageNet weights (LPIPS trunk of the consistency-model distance)")


def lpips_lin_spec() -> AssetSpec:
    return AssetSpec(LIN_KEY, LIN_RELPATH, LIN_SOURCE, LIN_SHA256_PREFIX,
                     "LPIPS v0.1 VGG linear heads (lpips package file, or piq's lpips_weights.pt)")


def sd_vae_spec() -> AssetSpec:
    return AssetSpec(SD_VAE_KEY, SD_VAE_RELPATH, None, None,
                     "Stable Diffusion 1.x VAE (AutoencoderKL) weights, diffusers or CompVis layout, for the "
                     "consistency decoder's latents")


def spec_from_key(key: str) -> AssetSpec:
    """'inception' | 'clip:<model>:<pretrained>' | 'dinov2[:<timm-name>]' | 'trained:<name>' | 't5:<hf-name>' |
    'sd-vae' | 'lpips-vgg16' | 'lpips-vgg-lin'."""
    kind, _, rest = key.partition(":")
    if kind == "inception" and not rest:
        return inception_spec()
    if kind == "clip" and rest.count(":") == 1:
        return clip_spec(*rest.split(":"))
    if kind == "dinov2":
        return dinov2_spec(rest) if rest else dinov2_spec()
    if kind == "trained" and rest:
        return trained_spec(rest)
    if kind == "t5" and rest:
        return t5_spec(rest)
    if kind == SD_VAE_KEY and not rest:      # the consistency decoder's latent source
        return sd_vae_spec()
    if kind == VGG16_KEY and not rest:       # the consistency models' LPIPS distance
        return lpips_vgg16_spec()
    if kind == LIN_KEY and not rest:
        return lpips_lin_spec()
    raise ConfigError(f"asset key {key!r}: expected inception, clip:<model>:<pretrained>, dinov2[:<timm-name>], "
                      "trained:<name>, t5:<hf-name>, sd-vae, lpips-vgg16 or lpips-vgg-lin")
