"""Token-sequence caption encoders (tiny random T5 with a tokenizer trained on the test captions, tiny
open_clip), the on-disk token cache (dtype, hits, resume after interruption) and the dataset wrapper."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data.spec import DatasetSpec, TextSpec, build_dataset
from bench.data.text_tokens import OpenClipTokenEncoder, T5TokenEncoder, TokenCache, TokenTextConditioned
from bench.method import ConfigError
from bench.metrics.assets import AssetFolder
from bench.nets.text_cond import token_mask

CAPS = ["a red fox", "a blue whale swimming in the sea", "grinning face with big eyes", "a red fox"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from bench.data.tiny_t5 import stage_tiny_t5
    from test_data_readers import make_coco  # noqa: F401 (the COCO fixture's captions join the vocabulary)

    root = tmp_path_factory.mktemp("assets")
    stage_tiny_t5(AssetFolder(root), "tiny", CAPS + ["a photo of a cat", "a dog on a bench"])
    return root


def test_t5_encoder_lengths_and_determinism(assets):
    enc = T5TokenEncoder("tiny", assets=assets, max_length=6)
    out = enc.encode(CAPS)
    # word-level tokens + </s>, truncated to max_length
    assert [o.shape for o in out] == [(4, 32), (6, 32), (6, 32), (4, 32)]
    np.testing.assert_array_equal(out[0], out[3])
    assert enc.id.startswith("t5:tiny:") and enc.id.endswith(":L6")
    # padding inside a batch does not change a caption's features (attention mask honoured)
    alone = enc.encode(["a red fox"])[0]
    np.testing.assert_allclose(alone, out[0], atol=1e-5 * max(1.0, float(np.abs(alone).max())))


def test_t5_missing_files_are_one_line_errors(assets, tmp_path):
    with pytest.raises(ConfigError, match=r"t5/nothere/model.safetensors.*bench assets fetch t5:nothere"):
        T5TokenEncoder("nothere", assets=assets)
    import shutil
    root = tmp_path / "a"
    shutil.copytree(assets, root)
    (root / "t5" / "tiny" / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"config.json is missing.*bench assets fetch t5:tiny"):
        T5TokenEncoder("tiny", assets=root)


@pytest.mark.parametrize("dtype,rel", [("fp16", 2 ** -10), ("bf16", 2 ** -7), ("fp32", 1e-7)])
def test_cache_dtype_hits_and_padding(assets, tmp_path, dtype, rel):
    enc = T5TokenEncoder("tiny", assets=assets, max_length=8)
    cache = TokenCache(tmp_path, enc.id, dtype)
    table = cache.lookup(CAPS, enc, progress=False)
    assert cache.misses == 3 and cache.hits == 0
    ref = enc.encode(["a blue whale swimming in the sea"])[0]
    got = table.padded("a blue whale swimming in the sea", 10)
    assert got.shape == (10, 32) and token_mask(got).tolist() == [True] * 8 + [False] * 2
    # storage rounding: half an ulp of the format, relative to each value's magnitude
    assert torch.all((got[:8] - torch.from_numpy(ref)).abs() <= rel * torch.from_numpy(ref).abs() + 1e-6)
    calls = enc.calls
    again = TokenCache(tmp_path, enc.id, dtype)
    again.lookup(CAPS, enc, progress=False)
    assert again.hits == 3 and again.misses == 0 and enc.calls == calls
    files = list(again.dir.glob("shard-*.npy"))
    assert len(files) == 1 and np.load(files[0], mmap_mode="r").dtype == {"fp16": np.float16, "bf16": np.int16,
                                                                          "fp32": np.float32}[dtype]


def test_cache_resumes_after_interruption(assets, tmp_path):
    enc = T5TokenEncoder("tiny", assets=assets, max_length=8, batch_size=1)
    caps = ["a red fox", "a photo of a cat", "a dog on a bench", "a blue whale swimming in the sea"]

    class Interrupted(Exception):
        pass

    real, seen = enc.encode, []

    def flaky(batch):
        if len(seen) == 2:
            raise Interrupted
        seen.append(batch)
        return real(batch)

    enc.encode = flaky
    with pytest.raises(Interrupted):
        TokenCache(tmp_path, enc.id, shard_size=2).lookup(caps, enc, progress=False)
    enc.encode = real
    cache = TokenCache(tmp_path, enc.id, shard_size=2)
    table = cache.lookup(caps, enc, progress=False)
    assert cache.hits == 2 and cache.misses == 2          # the first complete shard survived
    for c in caps:
        torch.testing.assert_close(table.tokens(c), torch.from_numpy(real([c])[0]), atol=0.01, rtol=0.01)


def test_token_dataset_from_spec_and_pickling(assets, tmp_path):
    import pickle

    from test_data_readers import make_coco

    make_coco(tmp_path / "coco", n_images=3)
    spec = DatasetSpec(kind="coco", root=str(tmp_path / "coco"), split="val2014", resolution=16,
                       text=TextSpec(family="t5", output="tokens", model="tiny", assets=str(assets), max_length=12,
                                     cache_dir=str(tmp_path / "cache")))
    ds = build_dataset(spec)
    assert isinstance(ds, TokenTextConditioned) and ds.text_dim == 32 and ds.text_length == 12
    item = ds[0]
    assert item["text"].shape == (12, 32) and bool(token_mask(item["text"])[0])
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0]["text"], item["text"])
    with pytest.raises(ConfigError, match="T5 gives output: tokens"):
        build_dataset(spec.model_copy(update={"text": spec.text.model_copy(update={"output": "pooled"})}))


def test_open_clip_token_states_match_pooled(tmp_path_factory):
    """The per-token states at the end-of-text position, projected, are open_clip's pooled embedding."""
    from test_data_text import TINY, _config_file
    import open_clip

    open_clip.add_model_config(_config_file(tmp_path_factory))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None)
    path = tmp_path_factory.mktemp("clipw") / "tiny.bin"
    torch.save(model.state_dict(), path)
    enc = OpenClipTokenEncoder(TINY, str(path))
    toks = enc.encode(["a red fox", "a blue whale"])
    assert toks[0].shape == (5, 32)     # <start> a red fox <end>
    pooled = enc.net.encode_text(enc.tokenizer(["a red fox"]))[0]
    torch.testing.assert_close(torch.from_numpy(toks[0][-1]) @ enc.net.text_projection, pooled, atol=1e-5, rtol=1e-5)
