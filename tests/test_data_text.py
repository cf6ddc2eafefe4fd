"""Text conditioning with a tiny randomly initialised open_clip model: encoder, caption cache, wrapper."""
from __future__ import annotations

import pytest
import torch

from bench.data.spec import DatasetSpec, TextSpec, build_dataset
from bench.data.text import CaptionCache, TextConditioned, TextEncoder
from bench.method import ConfigError

TINY = "bench-test-tiny-clip"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    import open_clip

    open_clip.add_model_config(_config_file(tmp_path_factory))  # registered in this process only
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "tiny.bin"
    torch.save(model.state_dict(), path)
    return path


def _config_file(tmp_path_factory):
    import json

    d = tmp_path_factory.mktemp("cfg")
    (d / f"{TINY}.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    return d / f"{TINY}.json"


def test_encoder_cache_miss_then_hit(tiny_weights, tmp_path):
    enc = TextEncoder(TINY, str(tiny_weights))
    assert enc.dim == 32 and enc.id.startswith(f"open_clip:{TINY}:")
    caps = ["a red fox", "a blue whale", "a red fox"]
    cache = CaptionCache(tmp_path, "ds-1", enc.id)
    row, table = cache.lookup(caps, enc)
    assert cache.misses == 2 and cache.hits == 0 and enc.calls == 1 and table.shape == (2, 32)
    direct = enc.encode(["a blue whale"])[0]
    assert torch.allclose(table[row["a blue whale"]], direct, atol=1e-6)
    assert torch.allclose(table[row["a blue whale"]].norm(), torch.tensor(1.0), atol=1e-5)
    calls = enc.calls
    cache2 = CaptionCache(tmp_path, "ds-1", enc.id)  # a new process would do the same
    row2, table2 = cache2.lookup(caps, enc)
    assert cache2.hits == 2 and cache2.misses == 0 and enc.calls == calls  # no re-encoding
    assert torch.equal(table2[row2["a red fox"]], table[row["a red fox"]])
    cache3 = CaptionCache(tmp_path, "ds-1", enc.id)
    row3, table3 = cache3.lookup(caps + ["a green frog"], enc)  # partial miss: only the new caption
    assert cache3.hits == 2 and cache3.misses == 1 and table3.shape == (3, 32)
    other = CaptionCache(tmp_path, "ds-2", enc.id)  # per dataset
    other.lookup(caps, enc)
    assert other.misses == 2 and other.path != cache.path


def test_missing_weight_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="nothere.bin"):
        TextEncoder(TINY, str(tmp_path / "nothere.bin"))


def test_text_conditioned_dataset_from_spec(tiny_weights, tmp_path):
    from test_data_readers import make_coco

    make_coco(tmp_path / "coco", n_images=4)
    spec = DatasetSpec(kind="coco", root=str(tmp_path / "coco"), split="val2014", resolution=16,
                       text=TextSpec(model=TINY, pretrained=str(tiny_weights), cache_dir=str(tmp_path / "cache")))
    ds = build_dataset(spec)
    assert isinstance(ds, TextConditioned) and ds.text_dim == 32 and ds.resolution == 16 and len(ds) == 4
    enc = TextEncoder(TINY, str(tiny_weights))
    for i in range(4):
        item = ds[i]
        assert item["text"].shape == (32,)
        assert torch.allclose(item["text"], enc.encode([item["caption"]])[0], atol=1e-5)
    # a different pass may pick another caption; its embedding follows the caption
    item = ds.get(1, epoch=3)
    assert torch.allclose(item["text"], ds.embedding(item["caption"]))
    assert torch.allclose(ds.null_text, enc.encode([""])[0], atol=1e-5)
    files = list((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 1 and files[0].name.startswith("coco-")
    with pytest.raises(ConfigError, match="no captions"):
        build_dataset(DatasetSpec(kind="synthetic", resolution=8, options={"n": 2},
                                  text=TextSpec(model=TINY, pretrained=str(tiny_weights))))
