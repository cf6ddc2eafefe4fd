"""Image decoding and preprocessing shared by every reader.

- ``adm_center_crop``: Dhariwal & Nichol's (ADM) ImageNet preprocessing: halve with a BOX filter while the
  short side is >= 2x the target, BICUBIC-resize so the short side equals the target, centre crop.
- ``pad_to_square``: letterbox on a fixed background (clip art and emoji keep the whole object).
- ``flatten_alpha``: composite transparent images on white (premultiplied, so no dark fringes).
- ``open_image``: decode a file or bytes; any decoder failure becomes ``CorruptImage`` naming the source.
- ``to_unit_range``: uint8 [0, 255] -> float [-1, 1].
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Iterator

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")
WHITE = (255, 255, 255)


class CorruptImage(Exception):
    """An image that cannot be decoded; ``source`` names the file / archive member.

    A DataLoader worker's error comes back as ``CorruptImage(text)``, the text holding the worker's
    traceback; the original one-line message is its last line, kept as the message here."""

    def __init__(self, source: str, reason: str | None = None):
        if reason is None:
            last = [ln for ln in str(source).splitlines() if ln.strip()][-1:] or [str(source)]
            line = last[0].split("CorruptImage: ", 1)[-1].strip()
            source, _, reason = line.partition(": ")
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@contextlib.contextmanager
def unlimited_pixels() -> Iterator[None]:
    """Lift Pillow's decompression-bomb guard (a few clip-art PNGs exceed 178 Mpx) for one decode."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def open_image(source: str | os.PathLike, data: bytes | None = None, lift_pixel_limit: bool = False) -> Image.Image:
    """Decode fully (so truncation errors surface here, not later); raise CorruptImage on any failure."""
    name = os.fspath(source)
    ctx = unlimited_pixels() if lift_pixel_limit else contextlib.nullcontext()
    try:
        with ctx:
            im = Image.open(io.BytesIO(data) if data is not None else name)
            im.load()
        return im
    except FileNotFoundError:
        raise
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
        raise CorruptImage(name, f"{type(err).__name__}: {err}") from None


def flatten_alpha(im: Image.Image, background: tuple[int, int, int] = WHITE, max_side: int | None = None) -> Image.Image:
    """RGB image; transparent pixels composited on ``background``.

    ``max_side``: first shrink by an integer factor (premultiplied ``reduce``) so the long side stays
    >= max_side; huge clip art is reduced before it is expanded to RGBA-sized buffers downstream.
    """
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif im.mode in ("1", "I", "I;16", "F"):
        im = im.convert("L")
    elif im.mode == "CMYK":
        im = im.convert("RGB")
    if max_side is not None:
        factor = max(im.size) // max_side
        if factor >= 2:
            im = im.reduce(factor)
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB")


def adm_center_crop(im: Image.Image, resolution: int) -> np.ndarray:
    """ADM preprocessing -> uint8 HxWxC array of side ``resolution`` (RGB images stay RGB, L stays L)."""
    while min(im.size) >= 2 * resolution:
        im = im.resize(tuple(s // 2 for s in im.size), resample=Image.BOX)
    scale = resolution / min(im.size)
    im = im.resize(tuple(round(s * scale) for s in im.size), resample=Image.BICUBIC)
    arr = np.asarray(im)
    top = (arr.shape[0] - resolution) // 2
    left = (arr.shape[1] - resolution) // 2
    return np.ascontiguousarray(arr[top:top + resolution, left:left + resolution])


def center_crop_resize(im: Image.Image, resolution: int, resample: int = Image.LANCZOS) -> np.ndarray:
    """Centre square crop of the short side, then one resize (the COCO FID-30K reference convention)."""
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(im.resize((resolution, resolution), resample=resample))


def pad_to_square(im: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Letterbox an RGB image on ``background`` (keeps the whole object, unlike a centre crop)."""
    w, h = im.size
    if w == h:
        return im
    s = max(w, h)
    canvas = Image.new("RGB", (s, s), background)
    canvas.paste(im, ((s - w) // 2, (s - h) // 2))
    return canvas


def fit_image(im: Image.Image, resolution: int, fit: str = "crop") -> np.ndarray:
    """``crop`` = ADM centre crop; ``pad`` = letterbox on white then the same resize; ``lanczos`` = crop + Lanczos."""
    if fit == "crop":
        return adm_center_crop(im, resolution)
    if fit == "pad":
        return adm_center_crop(pad_to_square(im), resolution)
    if fit == "lanczos":
        return center_crop_resize(im, resolution)
    raise ValueError(f"fit must be crop, pad or lanczos (got {fit!r})")


def load_rgb(source: str | os.PathLike, resolution: int, data: bytes | None = None, fit: str = "crop",
             lift_pixel_limit: bool = False, pre_reduce: bool = False) -> np.ndarray:
    """Decode + alpha-flatten + fit: uint8 R x R x 3.

    ``pre_reduce`` shrinks huge images by an integer factor before compositing (clip art); it is off for
    photographs so ImageNet / COCO follow the ADM recipe exactly.
    """
    im = open_image(source, data, lift_pixel_limit=lift_pixel_limit)
    try:
        rgb = flatten_alpha(im, max_side=4 * resolution if pre_reduce else None)
        arr = fit_image(rgb, resolution, fit)
    except Exception as err:
        raise CorruptImage(os.fspath(source), f"{type(err).__name__}: {err}") from None
    if arr.shape != (resolution, resolution, 3):
        raise CorruptImage(os.fspath(source), f"unexpected decoded shape {arr.shape}")
    return arr


def hwc_to_chw(arr: np.ndarray) -> torch.Tensor:
    """uint8 H x W x C (or H x W) numpy -> uint8 C x H x W tensor."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the training range)."""
    return x.to(torch.float32) / 127.5 - 1.0


def encode_png(arr: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a uint8 H x W x C array (lossless; level 1 is fast and still compact)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_png_array(data: bytes, source: str) -> np.ndarray:
    """uint8 H x W x C from stored PNG bytes of the training formats (no resizing)."""
    im = open_image(source, data)
    if im.mode not in ("RGB", "L"):
        im = flatten_alpha(im)
    arr = np.asarray(im)
    return arr if arr.ndim == 3 else arr[:, :, None]
