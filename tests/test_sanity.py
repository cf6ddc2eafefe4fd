"""Learning checks (bench.sanity, bench.baselines): the scores' building blocks, the PASS rule, and one
real learning check on the clip-art data (slow; skipped where Debian's openclipart-png is absent)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from bench import sanity as S
from bench.baselines import gaussian_samples


def test_white_share_counts_pixels_with_every_channel_near_white():
    x = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    x[0, :, 0, 0] = 255                      # white
    x[0, :2, 0, 1] = 255                     # yellow: not white
    x[0, :, 1, 0] = S.WHITE_LEVEL            # at the threshold: white
    assert S.white_share(x) == pytest.approx(0.5)


def test_coverage_oracle():
    # reference on a line at 0, 1, 2, 3, 10; k=1 radii: 1, 1, 1, 1, 7
    ref = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert S.coverage(ref, torch.tensor([[0.5], [100.0]]), k=1) == pytest.approx(2 / 5)   # covers 0 and 1
    assert S.coverage(ref, torch.tensor([[6.0]]), k=1) == pytest.approx(1 / 5)            # only 10 (radius 7)
    assert S.coverage(ref, torch.tensor([[50.0]]), k=1) == 0.0


def test_gaussian_samples_match_pixel_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    # 4 "pixels" (1 channel, 2x2) with a strong correlation between the first two
    base = torch.randn(4000, 1, generator=g)
    x = torch.cat([base, base + 0.1 * torch.randn(4000, 1, generator=g), torch.randn(4000, 2, generator=g)], 1)
    imgs = ((x * 0.3).clamp(-1, 1) + 1) * 127.5
    imgs = imgs.round().to(torch.uint8).reshape(4000, 1, 2, 2)
    out = gaussian_samples(imgs, 20000, seed=1)
    a = imgs.double().flatten(1) / 127.5 - 1
    b = out.double().flatten(1) / 127.5 - 1
    # sampling error of a mean / covariance entry of ~0.3-std variables over 20k draws is ~0.3^2/sqrt(2e4) ≈ 6e-4;
    # uint8 rounding adds ≤ 1/255 per pixel: 5e-3 is several standard errors and still far below the 0.09 entries
    assert torch.allclose(b.mean(0), a.mean(0), atol=5e-3)
    assert torch.allclose(torch.cov(b.T), torch.cov(a.T), atol=5e-3)
    assert out.dtype == torch.uint8 and out.shape == (20000, 1, 2, 2)


def _row(fd, recall):
    return S.Row("x", {"fd": fd, "recall": recall})


def test_pass_rule_needs_both_fd_and_recall_against_the_better_baseline():
    def check(fd, recall):
        return S.MethodCheck("m", _row(fd, recall), _row(100.0, 0.05), _row(40.0, 0.30), _row(2.0, 0.9))
    assert check(19.0, 0.45).passed
    assert not check(21.0, 0.45).passed                    # fd not half of the Gaussian's 40
    failures = check(10.0, 0.35).failures()                # recall not 0.1 above the Gaussian's 0.30
    assert len(failures) == 1 and "recall" in failures[0]


def test_suite_rejects_unknown_baselines(tmp_path):
    from bench.method import ConfigError
    from bench.suite import load_suite

    p = tmp_path / "s.yaml"
    p.write_text("name: s\ndatasets: {d: {kind: synthetic, resolution: 16}}\nmethods: [{method: edm}]\n"
                 "budget: {images: 8}\nbaselines: [gaussian, noise]\n")
    with pytest.raises(ConfigError, match="baselines: unknown \\['noise'\\]; allowed: gaussian, untrained"):
        load_suite(p)


def test_sanity_cli_rejects_unknown_method(capsys):
    from bench.cli import main

    assert main(["sanity", "nosuch"]) == 2
    assert "unknown method 'nosuch'" in capsys.readouterr().err


# ---- the learning check CI keeps -----------------------------------------------------------------
HAVE_CLIPART = Path("/usr/share/openclipart/png").is_dir()
CI_FLOPS = 4.4e12      # ≈ 9.6k EDM images at 16 px: a reduced budget (the full check uses S.BUDGET_FLOPS)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_CLIPART, reason="needs Debian's openclipart-png (make data-packages)")
def test_edm_learns_and_improves_over_checkpoints():
    """A regression that stops learning fails here: EDM at a reduced budget must beat its untrained network
    by the PASS margins, and its fd must fall from the 1/3 checkpoint to the end of the run."""
    from bench.checkpoint import CheckpointStore
    from bench.sample import load_run

    cache = Path(os.environ.get("BENCH_CACHE", "results")) / "sanity-ci"
    ctx = S.Context(cache, log=lambda s: None)
    c = S.check_method(ctx, "edm", CI_FLOPS)
    untrained = c.untrained.scores
    assert c.trained.scores["fd"] <= S.FD_RATIO * untrained["fd"], S.format_check(c)
    assert c.trained.scores["recall"] >= untrained["recall"] + S.RECALL_MARGIN, S.format_check(c)
    found = CheckpointStore(c.run_dir / "ckpt").list()
    first, _ = load_run(c.run_dir, checkpoint=found[0][1])
    early = ctx.score_method("edm @ 1/3", first)
    assert c.trained.scores["fd"] <= S.CLAIM_RATIO * early.scores["fd"], (early.scores, c.trained.scores)
    assert math.isfinite(c.trained.scores["fd"])


def test_suite_baselines_become_rows_of_the_table(tmp_path):
    """`baselines: [gaussian, untrained]` writes evaluated run folders beside the cells; the table lists them."""
    import numpy as np
    import yaml

    from bench.baselines import run_baselines
    from bench.launch import plan_cells, run_local
    from bench.store import collect
    from bench.suite import expand_suite, load_suite, suite_dir

    def mean_pixel(cell, shards):
        return {"metrics": {"fid": float(np.concatenate([np.load(p)["arr_0"] for p in shards]).mean())}}

    suite = {"name": "b", "output": str(tmp_path / "results"),
             "datasets": {"s16": {"kind": "synthetic", "resolution": 16, "options": {"n": 64}}},
             "methods": [{"method": "edm", "preset": "cpu-tiny", "method_config": {"resolution": 16}}],
             "train": {"batch": 4, "warmup_images": 4, "checkpoint_images": 8, "progress": False},
             "budget": {"flops": 5.5e9}, "sampling": {"n": 8, "steps": [2], "batch": 4},
             "metrics": ["fid"], "baselines": ["gaussian", "untrained"]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    s = load_suite(path)
    planned = plan_cells(expand_suite(s), suite_dir(s))
    run_local(planned, s.name, metrics_fn=mean_pixel, progress=False)
    ids = run_baselines(s.baselines, planned, suite_dir(s), metrics_fn=mean_pixel, log=lambda _: None)
    assert ids == ["baseline-gaussian-s16", f"baseline-untrained-{planned[0].cell.id}"]
    df = collect(suite_dir(s)).set_index("label")
    assert set(df.index) == {"edm", "baseline: gaussian", "edm (untrained)"}
    assert (df["status"] == "done").all()
    # the Gaussian's samples keep the data's mean pixel value (8 draws of 768 pixels: a loose 10-level band)
    from bench.baselines import _dataset_images
    data_mean = float(_dataset_images(planned[0].cell.run["data"]).float().mean())
    assert abs(df.loc["baseline: gaussian", "fid"] - data_mean) < 10
    # a re-run keeps the finished baselines
    again = run_baselines(s.baselines, planned, suite_dir(s), metrics_fn=lambda *a: 1 / 0, log=lambda _: None)
    assert again == ids


def test_sanity_metric_lpips_stages_random_weights_for_consistency_models_only(tmp_path):
    from types import SimpleNamespace

    from bench.method import ConfigError, build_method
    ctx = SimpleNamespace(cache=tmp_path)
    over = S.distance_overrides(ctx, "cd", "lpips")
    assert over["metric"] == "lpips" and over["lpips_resize"] == 0
    assert (Path(over["assets"]) / "lpips").is_dir()
    m = build_method("cd", S.PRESET, over)          # the override validates against the preset
    assert m.config.metric == "lpips"
    assert S.distance_overrides(ctx, "ct", None) == {}
    with pytest.raises(ConfigError, match="training distance"):
        S.distance_overrides(ctx, "edm", "lpips")
