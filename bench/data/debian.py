"""Small real datasets from Debian packages, for the demo suite and CPU tests.

clipart (``openclipart-png``, /usr/share/openclipart/png): class-conditional.
    Class rule (deterministic): every directory holding at least ``min_images`` (default 30) regular PNG
    files directly (symlinks skipped: they duplicate a picture in a second category); keep the
    ``max_classes`` largest (all by default; ties broken by path); labels follow the sorted relative paths
    (class name = that path, e.g. ``food/fruit``). ``max_per_class`` keeps a fixed hash-ordered subset.
    Images: Pillow's pixel limit lifted (3 files exceed 178 Mpx), reduced early by an integer factor,
    composited on white, letterboxed to a square on white, then the ADM resize.
emoji (``fonts-noto-color-emoji``): text-conditional (caption = lowercased Unicode name, e.g. "fox face").
    Every cmap code point above U+2000 that has a ``unicodedata`` name and renders non-empty at the font's
    only bitmap size (109 px) with embedded colour; the glyph is cropped to its alpha box, centred on a
    white 128 x 128 canvas (glyphs keep their relative size) and ADM-resized to the resolution.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import functools
import hashlib
import os
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.data.base import ImageDataset, require_dir
from bench.data.preprocess import CorruptImage, adm_center_crop, load_rgb
from bench.data.registry import check_options, reader
from bench.method import ConfigError

if TYPE_CHECKING:
    from bench.data.spec import DatasetSpec

CLIPART_ROOT = "/usr/share/openclipart/png"
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_PIXEL_SIZE = 109   # the font's single bitmap strike; other sizes raise "invalid pixel size"
EMOJI_CANVAS = 128


# ---- clipart -----------------------------------------------------------------------------------
def clipart_classes(root: Path, min_images: int = 30, max_classes: int | None = None) -> list[tuple[str, list[Path]]]:
    """(class name, sorted regular PNG files) per chosen directory, in label order."""
    found: list[tuple[str, list[Path]]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files = sorted(Path(dirpath) / f for f in filenames
                       if f.lower().endswith(".png") and not os.path.islink(os.path.join(dirpath, f)))
        if len(files) >= min_images:
            found.append((Path(dirpath).relative_to(root).as_posix() or ".", files))
    if max_classes is not None:
        found = sorted(found, key=lambda c: (-len(c[1]), c[0]))[:max_classes]
    return sorted(found, key=lambda c: c[0])


def _hash_order(paths: list[Path], root: Path) -> list[Path]:
    return sorted(paths, key=lambda p: hashlib.blake2b(p.relative_to(root).as_posix().encode(),
                                                       digest_size=8).digest())


class ClipartDataset(ImageDataset):
    def __init__(self, root: str | Path | None, resolution: int, *, min_images: int = 30,
                 max_classes: int | None = None, max_per_class: int | None = None, **kw):
        base = require_dir(root or CLIPART_ROOT, "openclipart folder (apt-get install openclipart-png)")
        classes = clipart_classes(base, min_images, max_classes)
        if not classes:
            raise ConfigError(f"field 'data.root': no folder under {str(base)!r} holds >= {min_images} PNG files")
        self.files: list[Path] = []
        self.labels: list[int] = []
        for k, (_, files) in enumerate(classes):
            chosen = _hash_order(files, base)[:max_per_class] if max_per_class else files
            self.files += chosen
            self.labels += [k] * len(chosen)
        super().__init__(resolution, num_classes=len(classes), class_names=[c for c, _ in classes], **kw)
        self.root = base
        self._n = len(self.files)

    def load_array(self, i: int) -> np.ndarray:
        return load_rgb(self.files[i], self.resolution, fit="pad", lift_pixel_limit=True, pre_reduce=True)

    def label_of(self, i: int) -> int:
        return self.labels[i]

    def describe(self, i: int) -> str:
        return str(self.files[i])


@reader("clipart")
def _build_clipart(spec: DatasetSpec) -> ClipartDataset:
    opts = dict(spec.options)
    check_options(spec, {"min_images", "max_classes", "max_per_class", "caption_seed"})
    opt_int = lambda k: None if opts.get(k) is None else int(opts[k])  # noqa: E731
    return ClipartDataset(spec.root, spec.resolution, min_images=int(opts.get("min_images", 30)),
                          max_classes=opt_int("max_classes"), max_per_class=opt_int("max_per_class"),
                          on_corrupt=spec.on_corrupt, max_items=spec.max_items)


# ---- emoji -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _font(path: str) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, EMOJI_PIXEL_SIZE)
    except OSError as err:
        raise ConfigError(f"field 'data.root': cannot load emoji font {path!r} at {EMOJI_PIXEL_SIZE} px ({err})") from None


def render_glyph(path: str, char: str) -> Image.Image | None:
    """The glyph cropped to its non-transparent box (RGBA), or None when it renders empty."""
    canvas = Image.new("RGBA", (EMOJI_PIXEL_SIZE + 27, EMOJI_CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=_font(path), embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    return canvas.crop(box) if box else None


@functools.lru_cache(maxsize=4)
def emoji_code_points(path: str) -> tuple[int, ...]:
    """Code points of the font's cmap above U+2000 that have a Unicode name and render non-empty."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError:  # fontTools ships with matplotlib, a declared dependency
        raise ConfigError("the emoji dataset needs fontTools to list the font's code points: pip install fonttools") from None
    cmap = TTFont(path, lazy=True).getBestCmap()
    out = []
    for cp in sorted(cmap):
        if cp > 0x2000 and unicodedata.name(chr(cp), "") and render_glyph(path, chr(cp)) is not None:
            out.append(cp)
    return tuple(out)


def emoji_array(path: str, cp: int, resolution: int) -> np.ndarray:
    glyph = render_glyph(path, chr(cp))
    if glyph is None:
        raise CorruptImage(f"{path}:U+{cp:04X}", "glyph renders empty")
    side = max(EMOJI_CANVAS, *glyph.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
    return adm_center_crop(canvas.convert("RGB"), resolution)


class EmojiDataset(ImageDataset):
    has_captions = True

    def __init__(self, root: str | Path | None, resolution: int, **kw):
        self.font_path = str(Path(root or EMOJI_FONT).expanduser())
        if not Path(self.font_path).is_file():
            raise ConfigError(f"field 'data.root': emoji font {self.font_path!r} does not exist "
                              f"(apt-get install fonts-noto-color-emoji)")
        self.code_points = emoji_code_points(self.font_path)
        super().__init__(resolution, **kw)
        self._n = len(self.code_points)

    def load_array(self, i: int) -> np.ndarray:
        return emoji_array(self.font_path, self.code_points[i], self.resolution)

    def captions_of(self, i: int) -> list[str]:
        return [unicodedata.name(chr(self.code_points[i])).lower()]

    def describe(self, i: int) -> str:
        return f"{self.font_path}:U+{self.code_points[i]:04X}"


@reader("emoji")
def _build_emoji(spec: DatasetSpec) -> EmojiDataset:
    check_options(spec, {"caption_seed"})
    return EmojiDataset(spec.root, spec.resolution, on_corrupt=spec.on_corrupt, max_items=spec.max_items)
