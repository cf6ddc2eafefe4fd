"""`bench eval <run-dir> --seeds` streams samples from the sampler; it must equal evaluating the npz of the
same seeds written by `bench sample` (the same images, never other ones)."""
import json

import pytest

from bench.cli import main
from bench.data.synthetic import SyntheticShapes
from bench.metrics.api import build_reference
from bench.sample import sample_to_npz
from bench.train import train
from helpers import tiny_run_config


def test_eval_run_dir_streaming_equals_npz(metric_assets, tmp_path, no_network):
    cfg = tiny_run_config("edm", "cpu-tiny-cond", images=4, batch=4)
    train(cfg, tmp_path / "run")
    ref = tmp_path / "ref.npz"
    build_reference(SyntheticShapes(resolution=32, n=6, seed=0), ref, metric_assets, pr_images=6, batch=3,
                    progress=False, device="cpu")
    common = ["--ref", str(ref), "--metrics", "fid,is", "--assets", str(metric_assets.root), "--batch", "3",
              "--device", "cpu", "--no-progress", "--steps", "2"]
    assert main(["eval", str(tmp_path / "run"), "--seeds", "0-4", "--out", str(tmp_path / "a.json")] + common) == 0
    sample_to_npz(tmp_path / "run", list(range(5)), tmp_path / "s.npz", steps=2, device="cpu", grid=False)
    assert main(["eval", str(tmp_path / "s.npz"), "--out", str(tmp_path / "b.json")] + common) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["samples"]["kind"] == "sampler" and a["samples"]["seeds"]["range"] == "0-4"
    assert a["metrics"]["fid"] == pytest.approx(b["metrics"]["fid"], rel=1e-6)
    assert a["metrics"]["is"] == pytest.approx(b["metrics"]["is"], rel=1e-6)
