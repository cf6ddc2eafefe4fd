"""Readers on small fixtures built here: folders, ImageNet layout, CelebA-HQ, COCO captions, corrupt files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data.base import choose_caption
from bench.data.coco import fid30k_pairs
from bench.data.preprocess import CorruptImage, adm_center_crop, to_unit_range
from bench.data.spec import DatasetSpec, build_dataset
from bench.method import ConfigError


def save(path: Path, arr: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


# ---- preprocessing -------------------------------------------------------------------------------
def test_adm_crop_keeps_the_centre_of_a_wide_image():
    arr = np.concatenate([solid(60, 60, (255, 0, 0)), solid(60, 60, (0, 255, 0)), solid(60, 60, (0, 0, 255))], 1)
    out = adm_center_crop(Image.fromarray(arr), 16)
    assert out.shape == (16, 16, 3)
    # the middle third is green; bicubic ringing at the crop border stays inside the green band
    assert (out[:, 2:-2, 1] > 240).all() and (out[:, 2:-2, 0] < 15).all()


def test_adm_crop_box_halving_averages_blocks():
    # 16x16 image of 2x2 constant blocks; target 8 -> one BOX halving, then an identity resize
    blocks = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    arr = blocks.repeat(2, 0).repeat(2, 1)
    out = adm_center_crop(Image.fromarray(arr), 8)
    assert np.array_equal(out, blocks)


def test_unit_range():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8)
    y = to_unit_range(x)
    assert y[0] == -1 and y[1] == 1 and abs(float(y[2]) - (128 / 127.5 - 1)) < 1e-7


# ---- generic folder ------------------------------------------------------------------------------
def test_folder_class_subfolders_give_sorted_labels(tmp_path):
    for k, name in enumerate(["dog", "cat", "emu"]):
        for j in range(2):
            save(tmp_path / name / f"{j}.png", solid(20, 30, (40 * k, 10 * j, 0)))
    ds = build_dataset(DatasetSpec(kind="folder", root=str(tmp_path), resolution=8))
    assert ds.class_names == ["cat", "dog", "emu"] and ds.num_classes == 3 and len(ds) == 6
    labels = [ds[i]["label"] for i in range(len(ds))]
    assert labels == [0, 0, 1, 1, 2, 2]
    item = ds[2]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 8, 8)
    assert int(item["image"][0, 4, 4]) == 0 and int(ds[0]["image"][0, 4, 4]) == 40  # dog red 0, cat red 40


def test_folder_flat_and_dataset_json(tmp_path):
    save(tmp_path / "flat" / "a.png", solid(8, 8, (1, 2, 3)))
    ds = build_dataset(DatasetSpec(kind="folder", root=str(tmp_path / "flat"), resolution=8))
    assert ds.num_classes == 0 and ds[0]["label"] == -1
    edm = tmp_path / "edm"
    save(edm / "00000" / "img0.png", solid(8, 8, (0, 0, 0)))
    save(edm / "00000" / "img1.png", solid(8, 8, (9, 9, 9)))
    (edm / "dataset.json").write_text(json.dumps({"labels": [["00000/img0.png", 4], ["00000/img1.png", 2]]}))
    ds = build_dataset(DatasetSpec(kind="folder", root=str(edm), resolution=8))
    assert [ds[0]["label"], ds[1]["label"]] == [4, 2] and ds.num_classes == 5


def test_missing_and_empty_folders_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        build_dataset(DatasetSpec(kind="folder", root=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty.*no images"):
        build_dataset(DatasetSpec(kind="folder", root=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="unknown dataset kind"):
        build_dataset(DatasetSpec(kind="nosuch"))


def test_corrupt_png_fails_or_is_skipped_by_flag(tmp_path, capsys):
    save(tmp_path / "a" / "0.png", solid(8, 8, (10, 0, 0)))
    bad = tmp_path / "a" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    save(tmp_path / "a" / "2.png", solid(8, 8, (30, 0, 0)))
    failing = build_dataset(DatasetSpec(kind="folder", root=str(tmp_path), resolution=8, on_corrupt="fail"))
    with pytest.raises(CorruptImage, match="1.png"):
        failing[1]
    skipping = build_dataset(DatasetSpec(kind="folder", root=str(tmp_path), resolution=8, on_corrupt="skip"))
    item = skipping[1]
    assert int(item["image"][0, 0, 0]) == 30  # replaced by the next readable item
    assert str(bad) in skipping.skipped
    assert "1.png" in capsys.readouterr().err


# ---- ImageNet ------------------------------------------------------------------------------------
def make_imagenet(root: Path) -> list[str]:
    wnids = ["n01440764", "n01443537", "n01484850"]
    rng = np.random.default_rng(1)
    for k, w in enumerate(wnids):
        for j in range(2):
            arr = rng.integers(0, 255, (90 + 10 * j, 140, 3), dtype=np.uint8)
            save(root / "train" / w / f"{w}_{j}.JPEG", arr, "JPEG")
    # val holds only two of the classes: labels must still follow the train synset order
    for w in (wnids[2], wnids[0]):
        save(root / "val" / w / f"ILSVRC2012_val_{w}.JPEG", solid(70, 50, (200, 100, 0)), "JPEG")
    return wnids


def test_imagenet_layout_and_fixed_synset_order(tmp_path):
    wnids = make_imagenet(tmp_path)
    train = build_dataset(DatasetSpec(kind="imagenet", root=str(tmp_path), resolution=64))
    assert len(train) == 6 and train.class_names == wnids and train.num_classes == 3
    assert train[0]["image"].shape == (3, 64, 64)
    val = build_dataset(DatasetSpec(kind="imagenet", root=str(tmp_path), split="val", resolution=64))
    assert [val[i]["label"] for i in range(len(val))] == [0, 2]
    # an explicit synset list file wins over folder order
    (tmp_path / "LOC_synset_mapping.txt").write_text("".join(f"{w} name\n" for w in reversed(wnids)))
    val = build_dataset(DatasetSpec(kind="imagenet", root=str(tmp_path), split="val", resolution=64))
    assert [val[i]["label"] for i in range(len(val))] == [2, 0]
    with pytest.raises(ConfigError, match="resolution"):
        build_dataset(DatasetSpec(kind="imagenet", root=str(tmp_path), resolution=48))


def test_celebahq_folder(tmp_path):
    save(tmp_path / "00001.jpg", solid(64, 64, (5, 6, 7)), "JPEG")
    with pytest.raises(ConfigError, match="256"):
        build_dataset(DatasetSpec(kind="celebahq", root=str(tmp_path), resolution=32))
    ds = build_dataset(DatasetSpec(kind="celebahq", root=str(tmp_path), resolution=256))
    assert ds[0]["image"].shape == (3, 256, 256) and ds.num_classes == 0


# ---- COCO ----------------------------------------------------------------------------------------
def make_coco(root: Path, n_images: int = 8) -> None:
    images, anns = [], []
    aid = 100
    for split in ("val2014", "train2014"):
        images = []
        anns = []
        for k in range(n_images):
            iid = 1000 + 7 * k
            fname = f"COCO_{split}_{iid:012d}.jpg"
            images.append({"id": iid, "file_name": fname, "width": 40, "height": 30})
            save(root / split / fname, solid(30, 40, (10 * k, 0, 0)), "JPEG")
            for c in range(3 + k % 3):
                aid += 1
                anns.append({"id": aid, "image_id": iid, "caption": f"image {k} caption {c}"})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images,
                                                                               "annotations": anns}))


def test_coco_captions_are_chosen_deterministically(tmp_path):
    make_coco(tmp_path)
    ds = build_dataset(DatasetSpec(kind="coco", root=str(tmp_path), split="val2014", resolution=16))
    assert len(ds) == 8 and ds.has_captions
    assert ds.captions_of(1) == ["image 1 caption 0", "image 1 caption 1", "image 1 caption 2", "image 1 caption 3"]
    first = [ds[i]["caption"] for i in range(8)]
    assert first == [ds[i]["caption"] for i in range(8)]  # same seed, same epoch -> same choice
    assert all(c.startswith(f"image {i} ") for i, c in enumerate(first))
    epochs = {ds.get(1, epoch=e)["caption"] for e in range(30)}
    assert len(epochs) == 4  # every caption of image 1 gets used across passes
    assert choose_caption(4, 0, 1, 0) != choose_caption(4, 0, 1, 1) or choose_caption(4, 0, 1, 2) != choose_caption(4, 0, 1, 0)


def test_fid30k_subset_is_deterministic(tmp_path):
    make_coco(tmp_path)
    a = fid30k_pairs(tmp_path, n=5, seed=0)
    assert a == fid30k_pairs(tmp_path, n=5, seed=0)
    assert a != fid30k_pairs(tmp_path, n=5, seed=1)
    assert len({p["image_id"] for p in a}) == 5
    ds = build_dataset(DatasetSpec(kind="coco", root=str(tmp_path), split="fid30k", resolution=16,
                                   options={"subset_size": 5}))
    assert [ds[i]["caption"] for i in range(5)] == [p["caption"] for p in a]
    with pytest.raises(ConfigError, match="only 8"):
        fid30k_pairs(tmp_path, n=9)
