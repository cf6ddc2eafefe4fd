"""Asset folder: hashes, one-line fast failures, offline flags, the `bench assets` CLI."""
from __future__ import annotations

import os
import time

import pytest
import torch

from bench.cli import main
from bench.metrics.assets import AssetError, AssetFolder, inception_spec, spec_from_key, trained_spec


def test_missing_asset_fails_fast_with_file_hash_and_command(tmp_path, no_network):
    folder = AssetFolder(tmp_path / "empty")
    t0 = time.perf_counter()
    with pytest.raises(AssetError) as err:
        folder.require(inception_spec())
    assert time.perf_counter() - t0 < 1.0
    msg = str(err.value)
    assert "\n" not in msg
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and "6726825d" in msg
    assert "bench assets fetch inception" in msg
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_corrupt_asset_detected_by_size_and_by_content(tmp_path):
    folder = AssetFolder(tmp_path)
    src = tmp_path / "w.pt"
    torch.save({"w": torch.arange(100.0)}, src)
    entry = folder.add(trained_spec("x"), src, source="test")
    path, got = folder.require(trained_spec("x"))
    assert got["sha256"] == entry["sha256"] and entry["official"] is None
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same size, different content (mtime changes -> re-hash)
    path.write_bytes(bytes(data))
    with pytest.raises(AssetError, match=f"corrupt.*expected sha256 {entry['sha256']}"):
        folder.require(trained_spec("x"))
    path.write_bytes(b"short")
    with pytest.raises(AssetError, match="corrupt \\(size"):
        folder.require(trained_spec("x"))


def test_add_marks_unofficial_inception_and_check_cli(tmp_path, capsys):
    src = tmp_path / "fake.pth"
    src.write_bytes(b"not the real weights")
    assert main(["assets", "add", "inception", str(src), "--assets", str(tmp_path / "a")]) == 0
    assert "differs from the published file" in capsys.readouterr().out
    assert main(["assets", "check", "inception", "--assets", str(tmp_path / "a")]) == 0
    assert "NOT the published file" in capsys.readouterr().out
    assert main(["assets", "check", "clip:ViT-B-32-quickgelu:openai", "--assets", str(tmp_path / "a")]) == 1
    assert main(["assets", "check", "bogus:key", "--assets", str(tmp_path / "a")]) == 2


def test_fetch_without_network_is_one_line_error(tmp_path, no_network, capsys):
    assert main(["assets", "fetch", "inception", "--assets", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "fetching inception" in err
    assert not (tmp_path / "inception").exists() or not any((tmp_path / "inception").iterdir())


def test_spec_keys():
    assert spec_from_key("clip:ViT-L-14-quickgelu:openai").relpath == "clip/ViT-L-14-quickgelu--openai.bin"
    assert spec_from_key("dinov2").key == "dinov2:vit_large_patch14_dinov2.lvd142m"
