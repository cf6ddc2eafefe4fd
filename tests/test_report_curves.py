"""End to end: a tiny suite (2 methods x 2 seeds, eval_every by FLOPs) runs locally with the real
evaluator (a feature extractor trained on the synthetic data, reference built from it, FID bootstrap),
then `bench report` turns it into curves, seed intervals and compute-to-target."""
from __future__ import annotations

import json

import pytest
import yaml

from bench.launch import plan_cells, run_local
from bench.launch.curve import eval_points
from bench.store import RunFolder
from bench.suite import expand_suite, load_suite, suite_dir

FPE = {"edm": 458457088.0, "ct": 611426304.0}     # counted training FLOPs per 16-px example (cpu-tiny)


def suite_file(tmp_path, **over):
    suite = {
        "name": "curves", "output": str(tmp_path / "results"),
        "datasets": {"s16": {"kind": "synthetic", "resolution": 16, "options": {"n": 96, "num_classes": 4},
                             "reference": "auto"}},
        "methods": [{"method": "edm", "preset": "cpu-tiny", "method_config": {"resolution": 16}},
                    {"method": "ct", "preset": "cpu-tiny", "method_config": {"resolution": 16}}],
        "train": {"batch": 4, "warmup_images": 4, "checkpoint_images": 1000, "progress": False},
        "seeds": [0, 1], "budget": {"flops": 1.47e10}, "eval_every": {"flops": 2.4e9},
        "sampling": {"n": 24, "steps": [2], "batch": 24, "shards": 1},
        "metrics": ["fid", "pr"], "metrics_options": {"extractor": "trained:s16", "pr_k": 3, "bootstrap": 5},
        **over,
    }
    p = tmp_path / "curves.yaml"
    p.write_text(yaml.safe_dump(suite))
    return p


def test_eval_points_from_images_and_flops():
    cell = {"eval_every": {"flops": 2.4e9}, "run": {"train": {"batch": 4, "images": 32}},
            "plan": {"batch": 4, "images": 32, "stages": [{"flops_per_example": FPE["edm"], "images": 32}]}}
    # k * 2.4e9 / fpe = 5.2, 10.5, 15.7, 20.9, 26.2, 31.4 images -> whole batches, strictly before 32
    assert eval_points(cell) == [8, 12, 16, 24, 28]
    cell["eval_every"] = {"images": 8}
    assert eval_points(cell) == [8, 16, 24]
    two = {"eval_every": {"flops": 10.0}, "run": {"train": {"batch": 1, "images": 4}},
           "plan": {"batch": 1, "images": 4, "stages": [{"flops_per_example": 5.0, "images": 2},
                                                       {"flops_per_example": 10.0, "images": 2}]}}
    assert eval_points(two) == [2, 3]            # 10 FLOPs: end of stage 1; 20: one image into stage 2


def test_curve_suite_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_ASSETS", str(tmp_path / "assets"))
    s = load_suite(suite_file(tmp_path))
    planned = plan_cells(expand_suite(s), suite_dir(s))
    assert len(planned) == 4
    status = run_local(planned, s.name, progress=False)
    assert set(status.values()) == {"done"}, status
    fid = "fid[trained:s16]"
    for pc in planned:
        rf = RunFolder(pc.run_dir)
        m = rf.metrics()
        curve = m["curve"]
        assert len(curve) == 6 and curve[-1]["final"], [p["images"] for p in curve]
        images = [p["images"] for p in curve]
        assert images == sorted(images) and images[:-1] == eval_points(rf.read_cell())
        assert curve[-1]["flops"] == rf.train_summary()["flops"] == m["spent_flops"]
        for p in curve:         # FLOPs at a point = images x the counted per-example cost (float32 sum)
            assert p["flops"] == pytest.approx(p["images"] * FPE[pc.cell.method], rel=1e-6)
            row = p["settings"][0]
            assert row[fid] > 0 and row["nfe"] > 0 and 0 <= row["precision[trained:s16]"] <= 1
            noise = row["metrics_detail"]["sampling_noise"][fid]
            assert noise["resamples"] == 5 and noise["std"] > 0
        assert curve[-1]["settings"][0][fid] == m["settings"][0][fid]      # the final point is the final eval
        kept = sorted(x.name for x in (rf.path / "ckpt" / "eval").glob("*.pt"))
        assert len(kept) == 5          # eval checkpoints survive the rotation (keep_checkpoints: 2)
        assert not list((rf.path / "curve").rglob("*.npz"))     # intermediate sample sets are not kept
    capsys.readouterr()
    from bench.cli import main
    assert main(["report", str(suite_file(tmp_path))]) == 0
    out = suite_dir(s) / "report"
    summary = json.loads((out / "summary.json").read_text())
    assert {c["label"] for c in summary["curves"].values()} == {"edm", "ct"}
    assert all(len(c["points"]) >= 5 and all(p["n"] == 2 for p in c["points"]) for c in summary["curves"].values())
    rows = {r["label"]: r for r in summary["table"]}
    assert rows["edm"]["n_seeds"] == 2 and rows["edm"][f"{fid}_ci95"] > 0
    assert rows["edm"][f"{fid}_boot_std_mean"] > 0
    assert rows["edm"]["compute_ratio"] == pytest.approx(1.0)
    target = summary["compute"]["target"]       # default: the worst final FID, so every method reaches it
    assert target == pytest.approx(max(r[f"{fid}_mean"] for r in rows.values()))
    assert all(r["compute_to_target"] and r["compute_to_target"] > 0 for r in rows.values())
    for name in ("table.md", "table.csv", "table.tex", "report.html", "curve_fid_trained_s16.png",
                 "precision_recall.png"):
        assert (out / name).is_file(), name


def fake_metrics(cell, shards):
    """Mean pixel value of the samples: a deterministic stand-in for the evaluator."""
    import numpy as np

    return {"metrics": {"fid": float(np.concatenate([np.load(p)["arr_0"] for p in shards]).mean())}}


def test_slurm_order_and_slicing_leave_training_unchanged(tmp_path):
    """The SLURM jobs' order (training slices keep checkpoints, no evaluation; then the evaluation job
    scores them before the final one), run in-process; sliced training ends where unsliced training does."""
    import numpy as np

    from bench.launch import evaluate_phase, prepare, sample_phase, train_with_points

    def one(out, **over):
        base = {"methods": [{"method": "edm", "preset": "cpu-tiny", "method_config": {"resolution": 16}}],
                "seeds": [0], "budget": {"flops": 5.5e9}, "metrics": ["fid"], "metrics_options": {},
                "datasets": {"s16": {"kind": "synthetic", "resolution": 16, "options": {"n": 64}}},
                "sampling": {"n": 4, "steps": [2], "batch": 4, "shards": 1}, "output": str(tmp_path / out)}
        s = load_suite(suite_file(tmp_path, **{**base, **over}))
        pc = plan_cells(expand_suite(s), suite_dir(s))[0]
        rf = prepare(pc, s.name)
        assert train_with_points(rf.path, progress=False)["done"]
        sample_phase(rf.path, 0)
        return rf, evaluate_phase(rf.path, fake_metrics)

    rf, m = one("sliced", eval_every={"images": 4})
    ref, m0 = one("plain", eval_every=None)
    assert rf.path.name == ref.path.name                  # eval_every is not part of the cell id
    assert [p["images"] for p in m["curve"]] == [4, 8, 12] and "curve" not in m0
    assert m["curve"][-1]["final"] and all(p["settings"][0]["fid"] > 0 for p in m["curve"])
    assert rf.train_summary()["flops"] == ref.train_summary()["flops"]
    a = np.load(next(rf.samples.rglob("*.npz")))["arr_0"]
    b = np.load(next(ref.samples.rglob("*.npz")))["arr_0"]
    assert np.array_equal(a, b)                           # resumed slices = one uninterrupted run (CPU)
