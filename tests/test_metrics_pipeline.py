"""The real library code paths (torch-fidelity Inception, open_clip, timm DINOv2) fed with random-init
weights staged in an asset folder; ADM npz round trip; `bench eval` / `bench stats` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.data.synthetic import SyntheticShapes
from bench.metrics.api import build_reference
from bench.metrics.assets import AssetFolder, inception_spec
from bench.metrics.evaluate import EvalSettings, StreamingEvaluator
from bench.metrics.extractors import build_extractor, column
from bench.metrics.reference import read_reference
from bench.metrics.sources import iter_generator, iter_npz


def write_samples(path, n=5, seed=1, captions=None):
    ds = SyntheticShapes(resolution=32, n=n, seed=seed)
    arr = np.stack([ds[i]["image"].permute(1, 2, 0).numpy() for i in range(n)])
    extra = {} if captions is None else {"captions": np.array(captions)}
    np.savez(path, arr_0=arr, arr_1=np.arange(n) % 4, seeds=np.arange(n), **extra)
    return arr


@pytest.fixture(scope="module")
def bench_ref(metric_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.npz"
    build_reference(SyntheticShapes(resolution=32, n=6, seed=0), out, metric_assets, pr_images=6, batch=3,
                    progress=False, device="cpu")
    return out


def test_inception_features_match_torch_fidelity(metric_assets, no_network):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path, _ = metric_assets.require(inception_spec())
    ex = build_extractor("inception", metric_assets)
    x = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = ex(x)
    lib = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(path))(x)
    assert torch.equal(ours["pool"], lib[0]) and torch.equal(ours["logits"], lib[1])
    assert ours["spatial"].shape == (2, 17 * 17 * 7) and (ours["spatial"] >= 0).all()
    assert all(torch.isfinite(v).all() for v in ours.values())
    assert ex.id.startswith("inception-v3-compat:") and ex.official is False


def test_bench_eval_npz_writes_metrics_with_settings(metric_assets, bench_ref, tmp_path, no_network):
    samples = tmp_path / "s.npz"
    write_samples(samples)
    out = tmp_path / "metrics.json"
    rc = main(["eval", str(samples), "--ref", str(bench_ref), "--metrics", "fid,sfid,is,pr,kid",
               "--assets", str(metric_assets.root), "--out", str(out), "--batch", "3", "--device", "cpu",
               "--no-progress"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert set(m["metrics"]) == {"fid", "sfid", "is", "precision", "recall", "kid"}
    assert all(np.isfinite(v) for v in m["metrics"].values())
    assert m["metrics"]["fid"] > 0 and m["metrics"]["is"] >= 1.0
    assert m["n_samples"] == 5 and m["samples"]["seeds"]["range"] == "0-4"
    assert m["extractor"]["id"] == read_reference(bench_ref).extractor_id
    assert m["reference"]["sha256"] and m["reference"]["format"] == "bench"
    assert m["details"]["pr"] == {"k": 3, "n_generated": 5, "n_reference": 6}
    assert m["settings"]["is_split_size"] == 5000 and m["samples"]["guidance"] == 1.0

    # ADM semantics: an ADM-layout copy (no provenance keys) uses its stored mu/sigma -> same numbers;
    # without mu the stats are computed from arr_0 -> the same numbers again.
    z = np.load(bench_ref)
    adm, arr_only = tmp_path / "adm.npz", tmp_path / "arr_only.npz"
    np.savez(adm, **{k: z[k] for k in ("mu", "sigma", "mu_s", "sigma_s", "arr_0")})
    np.savez(arr_only, arr_0=z["arr_0"])
    assert read_reference(adm).format == "adm"
    ev = {}
    for name, ref in (("adm", adm), ("arr", arr_only)):
        settings = EvalSettings(metrics=["fid", "sfid"], batch=5, device="cpu")
        ev[name] = StreamingEvaluator(settings, metric_assets, read_reference(ref)).run(
            iter_npz(samples, 5), progress=False)["metrics"]
    for key in ("fid", "sfid"):
        assert ev["adm"][key] == pytest.approx(m["metrics"][key], rel=1e-6)
        assert ev["arr"][key] == pytest.approx(m["metrics"][key], rel=1e-6)


def test_stats_cli_rejects_mismatched_reference(metric_assets, tmp_path, capsys):
    z = {"mu": np.zeros(5), "sigma": np.eye(5), "extractor": np.array("trained:other"),
         "extractor_id": np.array("trained:other:abc")}
    np.savez(tmp_path / "bad.npz", **z)
    write_samples(tmp_path / "s.npz", n=2)
    rc = main(["eval", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "bad.npz"), "--metrics", "fid",
               "--assets", str(metric_assets.root), "--no-progress"])
    assert rc == 2 and "made with trained:other:abc" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "s.npz"), "--metrics", "fid", "--assets", str(metric_assets.root)]) == 2
    assert main(["stats", "nokind", "--out", str(tmp_path / "r.npz"), "--assets", str(metric_assets.root)]) == 2


def test_clip_score_tiny_open_clip(metric_assets, tmp_path, no_network):
    from fixtures_metrics import TINY_CLIP, register_tiny_clip

    from bench.metrics.clip import ClipScorer, ClipSettings, reduce_scores
    register_tiny_clip()
    settings = ClipSettings(model=TINY_CLIP, pretrained="test", scale=100.0, clamp="per_sample", prefix="A photo of ")
    scorer = ClipScorer(settings, metric_assets)
    x = torch.randint(0, 256, (3, 3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    caps = ["a red square", "a blue disc", "a green square"]
    c1, c2 = scorer.cosines(x, caps), scorer.cosines(x, caps)
    assert torch.equal(c1, c2) and c1.shape == (3,) and (c1.abs() <= 1 + 1e-6).all()
    scorer.update(x, caps)
    r = scorer.result()
    assert r["clip_score"] == pytest.approx(reduce_scores(c1, 100.0, "per_sample"))
    assert r["clip_settings"]["prefix"] == "A photo of " and r["clip_settings"]["weights"].startswith("open_clip:")
    tok = scorer.tokenizer(["a photo of a cat"])
    assert tok[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    cos = torch.tensor([1.0, 0.0, -0.5])
    assert reduce_scores(cos[:1], 100, "per_sample") == pytest.approx(100.0)
    assert reduce_scores(cos, 100, "per_sample") == pytest.approx(100 / 3)
    assert reduce_scores(cos, 100, "mean") == pytest.approx(50 / 3)
    assert reduce_scores(torch.tensor([-0.5]), 100, "mean") == 0.0
    assert reduce_scores(cos, 1.0, "none") == pytest.approx(0.5 / 3)
    # CLIP through the evaluator, captions from the npz
    arr = write_samples(tmp_path / "c.npz", n=3, captions=caps)
    want = reduce_scores(scorer.cosines(torch.from_numpy(arr).permute(0, 3, 1, 2), caps), 100.0, "per_sample")
    settings_all = EvalSettings(metrics=["clip"], clip=settings, device="cpu")
    res = StreamingEvaluator(settings_all, metric_assets).run(iter_npz(tmp_path / "c.npz", 2), progress=False)
    assert res["metrics"]["clip_score"] == pytest.approx(want, rel=1e-5)
    assert res["details"]["clip"]["n"] == 3 and res["details"]["clip"]["clamp"] == "per_sample"


def test_trained_extractor_columns_and_streaming_generator(tmp_path, no_network):
    from bench.metrics.trained import train_extractor

    assets = AssetFolder(tmp_path / "assets")
    ds = SyntheticShapes(resolution=16, n=96, num_classes=4, seed=0)
    entry = train_extractor(ds, "shapes", assets, epochs=2, batch=16, input_size=16, width=8, progress=False)
    assert entry["val_accuracy"] > 0.25  # better than chance on 4 classes
    ref = tmp_path / "ref.npz"
    build_reference(ds, ref, assets, extractor="trained:shapes", pr_images=40, progress=False, device="cpu")
    r = read_reference(ref)
    assert r.family == "trained:shapes" and r.stats["spatial"][0].shape == (4 * 4 * 7,)

    def gen(seeds):  # a sampler stand-in: images depend only on their seeds
        return torch.stack([SyntheticShapes(resolution=16, n=1, seed=100 + s)[0]["image"] for s in seeds])
    settings = EvalSettings(metrics=["fid", "sfid", "is", "pr", "kid"], extractor="trained:shapes", device="cpu",
                            kid_subset_size=20)
    res = StreamingEvaluator(settings, assets, r).run(iter_generator(gen, list(range(30)), 7), progress=False)
    fam = "trained:shapes"
    assert set(res["metrics"]) == {column(k, fam) for k in ("fid", "sfid", "is", "precision", "recall", "kid")}
    assert "fid" not in res["metrics"] and res["metrics"]["fid[trained:shapes]"] > 0
    assert res["extractor"]["family"] == fam
    ref_self = StreamingEvaluator(EvalSettings(metrics=["fid"], extractor=fam, device="cpu"), assets, r).run(
        iter_generator(lambda s: torch.stack([ds[i]["image"] for i in s]), list(range(96)), 32), progress=False)
    assert abs(ref_self["metrics"]["fid[trained:shapes]"]) < 1e-6 * 100
    with pytest.raises(Exception, match="inception"):  # the ref's stats belong to another extractor
        StreamingEvaluator(EvalSettings(metrics=["fid"], device="cpu"), assets, r)


def test_fd_dinov2_plumbing_with_tiny_timm_vit(tmp_path, no_network):
    import timm
    from safetensors.torch import save_file

    from bench.metrics.dinov2 import DinoV2Extractor
    arch = {"embed_dim": 32, "depth": 1, "num_heads": 2}
    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, num_classes=0, **arch)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "d.safetensors")
    ex = DinoV2Extractor(tmp_path / "d.safetensors", "vit_small_patch14_dinov2.lvd142m", "dinov2:test", **arch)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    f = ex(x)["pool"]
    assert f.shape == (2, 32) and torch.isfinite(f).all() and torch.equal(f, ex(x)["pool"])
