"""Real data from Debian packages (openclipart-png, fonts-noto-color-emoji): skipped where not installed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.data.debian import CLIPART_ROOT, EMOJI_FONT, clipart_classes
from bench.data.prepare import prepare
from bench.data.spec import DatasetSpec, build_dataset

needs_clipart = pytest.mark.skipif(not Path(CLIPART_ROOT).is_dir(),
                                   reason="openclipart-png not installed (apt-get install openclipart-png)")
needs_emoji = pytest.mark.skipif(not Path(EMOJI_FONT).is_file(),
                                 reason="fonts-noto-color-emoji not installed")


def test_clipart_class_rule_on_a_fixture(tmp_path):
    from PIL import Image

    for name, n in (("animals/cats", 4), ("animals", 3), ("food", 2), ("tiny", 1)):
        d = tmp_path / name
        d.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.new("RGBA", (30, 10), (255, 0, 0, 255 if j else 0)).save(d / f"{j}.png")
    (tmp_path / "food" / "link.png").symlink_to(tmp_path / "animals" / "0.png")  # duplicates are not counted
    got = clipart_classes(tmp_path, min_images=2)
    assert [c for c, _ in got] == ["animals", "animals/cats", "food"]
    assert [len(f) for _, f in got] == [3, 4, 2]
    assert [c for c, _ in clipart_classes(tmp_path, min_images=2, max_classes=2)] == ["animals", "animals/cats"]
    ds = build_dataset(DatasetSpec(kind="clipart", root=str(tmp_path), resolution=8, options={"min_images": 2}))
    assert ds.num_classes == 3 and len(ds) == 9
    # fully transparent picture -> white; wide picture letterboxed on white (top/bottom rows white)
    transparent = ds[ds.files.index(tmp_path / "animals" / "0.png")]["image"]
    assert (transparent == 255).all()
    red = ds[ds.files.index(tmp_path / "animals" / "1.png")]["image"]
    assert (red[:, 0] == 255).all() and red[0, 4, 4] == 255 and red[1, 4, 4] < 10


@needs_clipart
def test_prepare_real_clipart(tmp_path):
    spec = DatasetSpec(kind="clipart", resolution=16, options={"max_classes": 3, "max_per_class": 4})
    man = prepare(spec, tmp_path / "clip.zip", progress=False)
    assert man["count"] == 12 and man["num_classes"] == 3 and man["skipped"] == 0
    assert man["class_names"] == sorted(man["class_names"]) and "shapes/stars" in man["class_names"]
    ds = build_dataset(DatasetSpec(kind="zip", root=str(tmp_path / "clip.zip"), resolution=16))
    imgs = torch.stack([ds[i]["image"] for i in range(len(ds))]).float()
    assert imgs.std() > 10  # real pictures, not blank
    corners = imgs[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners > 200).float().mean() > 0.5  # clip art on white mostly has white corners


@needs_emoji
def test_prepare_real_emoji(tmp_path):
    full = build_dataset(DatasetSpec(kind="emoji", resolution=16))
    assert 1300 < len(full) < 1500  # 1391 with Debian 12's font
    spec = DatasetSpec(kind="emoji", resolution=16, max_items=24)
    man = prepare(spec, tmp_path / "emoji", fmt="shards", shard_size=10, progress=False)
    assert man["count"] == 24 and man["captions"] == 24 and man["num_classes"] == 0
    ds = build_dataset(DatasetSpec(kind="webdataset", root=str(tmp_path / "emoji"), resolution=16))
    caps = [ds[i]["caption"] for i in range(24)]
    assert all(c == c.lower() and c for c in caps) and len(set(caps)) == 24
    import unicodedata
    assert caps[0] == unicodedata.name(chr(full.code_points[0])).lower()
    img = ds[0]["image"].float()
    assert img.std() > 5 and (img[:, 0, 0] > 240).all()  # coloured glyph centred on white
