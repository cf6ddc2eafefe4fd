"""`bench data prepare` into zip / tar shards, manifests, skip reports, truncated archives, pyramids."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.cli import main
from bench.data.archive import read_manifest
from bench.data.preprocess import CorruptImage
from bench.data.prepare import prepare
from bench.data.pyramid import resolution_views
from bench.data.spec import DatasetSpec, build_dataset
from bench.method import ConfigError


def make_folder(root: Path, corrupt: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(["a", "b"]):
        for j in range(3):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(root / name / f"{j}.png")
    if corrupt:
        (root / "b" / "9_bad.png").write_bytes(b"not a png at all")
    return root


def test_prepare_zip_skips_corrupt_and_round_trips(tmp_path):
    src = make_folder(tmp_path / "src")
    spec = DatasetSpec(kind="folder", root=str(src), resolution=16)
    out = tmp_path / "out" / "ds.zip"
    man = prepare(spec, out, progress=False)
    assert man["count"] == 6 and man["skipped"] == 1 and man["num_classes"] == 2
    assert man["class_names"] == ["a", "b"] and man["class_counts"] == {"0": 3, "1": 3}
    report = Path(man["skipped_report"])
    assert "9_bad.png" in report.read_text()
    assert read_manifest(out)["content_hash"] == man["content_hash"]
    assert json.loads((tmp_path / "out" / "ds.manifest.json").read_text())["count"] == 6
    # read back: identical pixels and labels to the source reader (which fails on the corrupt file)
    back = build_dataset(DatasetSpec(kind="zip", root=str(out), resolution=16))
    direct = build_dataset(DatasetSpec(kind="folder", root=str(src), resolution=16))
    assert len(back) == 6 and back.class_names == ["a", "b"]
    for i in range(6):
        assert torch.equal(back[i]["image"], direct[i]["image"]) and back[i]["label"] == direct[i]["label"]
    # the zip is also readable at a lower resolution (ADM resize of the stored images)
    assert build_dataset(DatasetSpec(kind="zip", root=str(out), resolution=8))[0]["image"].shape == (3, 8, 8)
    with pytest.raises(CorruptImage):
        prepare(spec, tmp_path / "fail.zip", on_corrupt="fail", progress=False)
    assert not (tmp_path / "fail.zip").exists()


def test_shards_match_zip_and_keep_captions(tmp_path):
    from test_data_readers import make_coco

    make_coco(tmp_path / "coco", n_images=5)
    spec = DatasetSpec(kind="coco", root=str(tmp_path / "coco"), split="val2014", resolution=16)
    mz = prepare(spec, tmp_path / "c.zip", progress=False)
    ms = prepare(spec, tmp_path / "shards", shard_size=2, progress=False)
    assert mz["content_hash"] == ms["content_hash"] and ms["count"] == 5 and ms["captions"] == mz["captions"]
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 3
    z = build_dataset(DatasetSpec(kind="zip", root=str(tmp_path / "c.zip"), resolution=16))
    s = build_dataset(DatasetSpec(kind="webdataset", root=str(tmp_path / "shards"), resolution=16))
    src = build_dataset(spec)
    for i in range(5):
        assert torch.equal(z[i]["image"], s[i]["image"])
        assert z.captions_of(i) == s.captions_of(i) == src.captions_of(i)
        assert z[i]["caption"] == s[i]["caption"] == src[i]["caption"]  # same deterministic choice
    assert s.num_classes == 0 and s[0]["label"] == -1


def test_parallel_prepare_equals_serial(tmp_path):
    src = make_folder(tmp_path / "src", corrupt=False)
    spec = DatasetSpec(kind="folder", root=str(src), resolution=8)
    a = prepare(spec, tmp_path / "a.zip", workers=0, progress=False)
    b = prepare(spec, tmp_path / "b.zip", workers=2, progress=False)
    assert a["content_hash"] == b["content_hash"]


def test_truncated_zip_and_corrupt_member(tmp_path):
    src = make_folder(tmp_path / "src", corrupt=False)
    out = tmp_path / "ds.zip"
    prepare(DatasetSpec(kind="folder", root=str(src), resolution=16), out, progress=False)
    data = out.read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="cut.zip.*truncated"):
        build_dataset(DatasetSpec(kind="zip", root=str(cut), resolution=16))
    # flip bytes inside the first stored PNG: CRC check fails -> a corrupt image naming the member
    with zipfile.ZipFile(out) as zf:
        info = zf.infolist()[0]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 40
    bad = bytearray(data)
    bad[start:start + 8] = b"\x00" * 8
    flipped = tmp_path / "flipped.zip"
    flipped.write_bytes(bytes(bad))
    ds = build_dataset(DatasetSpec(kind="zip", root=str(flipped), resolution=16))
    with pytest.raises(CorruptImage, match=info.filename):
        ds[0]
    ds = build_dataset(DatasetSpec(kind="zip", root=str(flipped), resolution=16, on_corrupt="skip"))
    assert ds[0]["image"].shape == (3, 16, 16) and len(ds.skipped) == 1


def test_cli_prepare_and_info(tmp_path, capsys):
    src = make_folder(tmp_path / "src")
    out = tmp_path / "x.zip"
    rc = main(["data", "prepare", "folder", "--root", str(src), "--out", str(out), "--resolution", "8",
               "--workers", "0", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "prepared 6 images" in text and "skipped 1 unreadable" in text
    assert main(["data", "info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 6
    assert main(["data", "prepare", "folder", "--root", str(tmp_path / "missing"), "--out", str(out),
                 "--resolution", "8", "--no-progress"]) == 2
    assert "missing" in capsys.readouterr().err


# ---- multi-resolution views -----------------------------------------------------------------------
def test_resolution_views_equal_average_pooling():
    x = torch.randn(2, 3, 32, 32)
    views = resolution_views(x, [32, 16, 8, 4])
    assert views[32] is x
    for r in (16, 8, 4):
        k = 32 // r
        expect = x.reshape(2, 3, r, k, r, k).mean(dim=(3, 5))
        assert torch.allclose(views[r], expect, atol=1e-6)
        assert torch.allclose(views[r], F.avg_pool2d(x, k), atol=1e-6)
    assert set(resolution_views(x, [8]).keys()) == {8}
    with pytest.raises(ValueError, match="integer ratio"):
        resolution_views(x, [12])
    with pytest.raises(ValueError, match="only downsampling"):
        resolution_views(x, [64])
    with pytest.raises(ValueError, match="float"):
        resolution_views(x.to(torch.uint8), [16])
