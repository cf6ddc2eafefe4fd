"""Builders of randomly initialised weights of the real metric architectures, saved into an asset folder
through the same code paths real weights take (metrics.md §9.3, §9.5)."""
from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path

import torch

from bench.metrics.randinit import calibrated_inception_state

TINY_CLIP = "bench-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_clip() -> str:
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / f"{TINY_CLIP}.json"
            p.write_text(json.dumps(TINY_CLIP_CONFIG))
            open_clip.add_model_config(p)
    return TINY_CLIP


def tiny_clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    import open_clip

    torch.manual_seed(seed)
    return open_clip.create_model(register_tiny_clip(), pretrained=None).state_dict()


def build_asset_folder(root: Path, inception: bool = True, clip: bool = True):
    """Stage random-init weights as the assets `inception` and `clip:bench-tiny-clip:test`."""
    from bench.metrics.assets import AssetFolder, clip_spec, inception_spec

    folder = AssetFolder(root)
    with tempfile.TemporaryDirectory() as tmp:
        if inception:
            p = Path(tmp) / "inception.pth"
            torch.save(calibrated_inception_state(), p)
            folder.add(inception_spec(), p, source="random-init calibrated test weights")
        if clip:
            p = Path(tmp) / "clip.bin"
            torch.save(tiny_clip_state(), p)
            folder.add(clip_spec(TINY_CLIP, "test"), p, source="random-init tiny test CLIP")
    return folder


class NetworkGuard:
    """Makes any DNS lookup or socket connect raise: a test that tries to download fails loudly."""

    def __init__(self, monkeypatch):
        def refuse(*args, **kwargs):
            raise RuntimeError(f"network access attempted during a test: {args[:2]}")
        monkeypatch.setattr(socket, "getaddrinfo", refuse)
        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")


_SESSION_FOLDER = None


def session_asset_folder():
    """The test asset folder, built once per process whichever module's fixture asks first."""
    global _SESSION_FOLDER
    if _SESSION_FOLDER is None:
        import atexit
        import shutil

        root = Path(tempfile.mkdtemp(prefix="bench-metric-assets-"))
        atexit.register(shutil.rmtree, root, True)
        _SESSION_FOLDER = build_asset_folder(root)
    return _SESSION_FOLDER
