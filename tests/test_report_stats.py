"""The report's statistics on run folders with known answers: Student-t intervals over seeds, the FID
power-law fit, compute-to-target and its ratio, the outputs (md / csv / tex / summary.json / html), and
the HTML report rendered by a real headless browser (chromium)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.report import write_report
from bench.report_stats import compute_to_target, fit_power_law, t_ci95
from bench.store import RunFolder

T975 = {1: 12.706204736174698, 3: 3.182446305284263}     # Student t quantiles (tables), df -> t_{0.975}
A, B, C0 = 1.0e6, 0.4, 2.0                                 # FID(C) = A C^-B + C0
FID = "fid[trained:x]"


def fid_at(c):
    return A * np.power(c, -B) + C0


def test_student_t_interval_matches_the_textbook_quantile():
    x = [1.0, 2.0, 3.0, 4.0]
    s = np.std(x, ddof=1)
    assert t_ci95(x) == pytest.approx(T975[3] * s / 2.0, rel=1e-9)
    assert math.isnan(t_ci95([3.0])) and math.isnan(t_ci95([]))


def test_power_law_fit_recovers_exact_parameters_and_needs_four_points():
    c = np.geomspace(1e12, 1e14, 6)
    fit = fit_power_law(c, fid_at(c))
    assert fit["a"] == pytest.approx(A, rel=1e-3) and fit["b"] == pytest.approx(B, rel=1e-4)
    assert fit["c"] == pytest.approx(C0, abs=1e-3) and fit["rmse"] < 1e-6 * fid_at(c).max()
    assert fit_power_law(c[:3], fid_at(c[:3])) is None


def test_compute_to_target_interpolates_in_log_flops():
    flops, fid = np.array([1e12, 1e13, 1e14]), np.array([30.0, 10.0, 5.0])
    assert compute_to_target(flops, fid, 20.0) == pytest.approx(10 ** 12.5, rel=1e-12)
    assert compute_to_target(flops, fid, 40.0) == 1e12            # the first point already reaches it
    assert math.isnan(compute_to_target(flops, fid, 1.0))          # never reached
    assert compute_to_target(flops[::-1], fid[::-1], 20.0) == pytest.approx(10 ** 12.5, rel=1e-12)


def make_cell(root, label, method, seed, scale, offset, guidances=(1.0, 2.0)):
    """A finished run folder whose curve is FID(C / scale) + offset at 5 intermediate points + the final."""
    rf = RunFolder(root / f"{label}-{seed}")
    flops = np.geomspace(1e12, 1e14, 6) * scale
    rf.write_cell({"label": label, "method": method, "preset": None, "dataset": "d", "seed": seed,
                   "plan": {"budget_flops": float(flops[-1]), "planned_flops": float(flops[-1])}})
    (rf.path / "train_summary.json").write_text(json.dumps({"done": True, "images": 600, "flops": float(flops[-1])}))

    def row(g, fid):
        return {"steps": None, "guidance": g, "tag": f"stepsdefault-cfg{g:g}", "nfe": 18, FID: fid,
                "precision[trained:x]": 0.5 + 0.1 * seed + 0.02 * g + 0.01 * (method != "edm"),
                "recall[trained:x]": 0.3 + 0.05 * g + 0.02 * (method == "edm"),
                "metrics_detail": {"sampling_noise": {FID: {"std": 0.25, "resamples": 10}}}}
    curve = [{"images": 100 * (i + 1), "flops": float(f), "final": i == 5,
              "settings": [row(1.0, float(fid_at(f / scale)) + offset)]} for i, f in enumerate(flops)]
    settings = [row(g, float(fid_at(flops[-1] / scale)) + offset + (g - 1.0)) for g in guidances]
    (rf.path / "metrics.json").write_text(json.dumps({"settings": settings, "curve": curve, "params": 10,
                                                      "spend_rel_error": 0.0, "spend_flagged": False}))
    rf.set_status("done")


@pytest.fixture
def suite_root(tmp_path):
    root = tmp_path / "suite"
    for seed, off in ((0, -0.5), (1, 0.5)):
        make_cell(root, "fast", "greedy", seed, 1.0, off)
        make_cell(root, "edm", "edm", seed, 4.0, off)       # the baseline needs 4x the compute
    return root


def test_report_aggregates_seeds_fits_curves_and_writes_every_output(suite_root):
    paths = write_report(suite_root, targets={"fid": 10.0})
    agg = __import__("pandas").read_csv(paths["csv"])
    r = agg[(agg["label"] == "fast") & (agg["guidance"] == 1.0)].iloc[0]
    final = float(fid_at(1e14))
    assert r["n_seeds"] == 2 and r[f"{FID}_mean"] == pytest.approx(final, rel=1e-12)
    assert r[f"{FID}_ci95"] == pytest.approx(T975[1] * math.sqrt(0.5) / math.sqrt(2), rel=1e-9)
    assert r[f"{FID}_boot_std_mean"] == pytest.approx(0.25)
    assert r["fit_b"] == pytest.approx(B, rel=1e-4) and r["fit_c"] == pytest.approx(C0, abs=1e-3)
    # FID 10 is crossed between two points; the same crossing at 4x the FLOPs for the baseline
    c = np.geomspace(1e12, 1e14, 6)
    y = fid_at(c)
    i = int(np.argmax(y <= 10.0))
    want = math.exp(math.log(c[i - 1]) + (10.0 - y[i - 1]) / (y[i] - y[i - 1]) * math.log(c[i] / c[i - 1]))
    assert r["compute_to_target"] == pytest.approx(want, rel=1e-9)
    assert r["compute_ratio"] == pytest.approx(0.25, rel=1e-9)
    base = agg[(agg["label"] == "edm") & (agg["guidance"] == 1.0)].iloc[0]
    assert base["compute_ratio"] == pytest.approx(1.0)
    # the guidance=2 rows have no curve: no compute columns, but seeds still aggregate
    g2 = agg[(agg["label"] == "fast") & (agg["guidance"] == 2.0)].iloc[0]
    assert g2["n_seeds"] == 2 and g2[f"{FID}_mean"] == pytest.approx(final + 1.0, rel=1e-12)
    summary = json.loads(paths["summary"].read_text())
    assert summary["compute"]["target"] == 10.0 and summary["compute"]["baseline"] == "edm"
    curves = summary["curves"]
    assert len(curves) == 2 and all(len(c["points"]) == 6 for c in curves.values())
    pt = curves["fast | d | stepsdefault-cfg1"]["points"][0]
    assert pt[FID]["mean"] == pytest.approx(float(fid_at(1e12)), rel=1e-12) and pt[FID]["n"] == 2
    assert {"curve_" + "fid_trained_x", "fid_vs_guidance", "precision_recall"} <= set(summary["plots"])
    assert "fid_vs_nfe" not in summary["plots"]                  # the suite sweeps no NFE
    tex = paths["tex"].read_text()
    assert tex.startswith("% values: mean over training seeds") and "\n\\begin{tabular}" in tex
    assert r"\toprule" in tex and r"\bottomrule" in tex
    # best per column in bold: FID ties between the two methods (same final values), the others are unique
    assert tex.count(r"\textbf{") == 2 + 1 + 1
    assert r"\textbf{" + f"{final:.3f}".rstrip("0") in tex      # the lowest FID mean is the bold one
    assert "n_seeds" in paths["md"].read_text() and "Student-t" in paths["md"].read_text()
    # default target: the worst final FID of the suite's methods (a baseline row, bench.baselines, is none)
    rf = RunFolder(suite_root / "baseline-gaussian")
    rf.write_cell({"label": "baseline-gaussian", "method": None, "dataset": "d", "seed": 0})
    rf.metrics_file.write_text(json.dumps({"baseline": True, "settings": [{"steps": None, "guidance": 1.0,
                                                                           "tag": "stepsdefault-cfg1", FID: 500.0}]}))
    rf.set_status("done")
    s2 = json.loads(write_report(suite_root, out=suite_root / "r2")["summary"].read_text())
    assert any(r["label"] == "baseline-gaussian" and r[f"{FID}_mean"] == 500.0 for r in s2["table"])
    assert s2["compute"]["target"] == pytest.approx(final + 1.0, rel=1e-12)


def test_html_report_renders_in_headless_chromium(suite_root, tmp_path):
    from browser import render

    paths = write_report(suite_root, targets={"fid": 10.0})
    html = paths["report"].read_text()
    assert "src=\"http" not in html and "<script" not in html           # self-contained, no scripts
    got = render(paths["report"], tmp_path)
    n_plots = len(json.loads(paths["summary"].read_text())["plots"])
    assert got["images"] == n_plots >= 4 and got["decoded"] == got["images"], got
    assert all(w >= 100 for w in got["widths"]), got["widths"]
    assert got["tables"] >= 3 and got["rows"] >= 4 + 4 + 2, got     # aggregated, compute, per-cell tables
    assert "compute_to_target" in got["dom"] and "fast" in got["dom"]


def test_ratio_uses_the_baseline_of_the_same_guidance_when_samplers_differ():
    import pandas as pd

    from bench.report_stats import compute_columns

    def curve(label, tag, scale):
        return {"label": label, "method": label, "dataset": "d", "tag": tag, "steps": None, "guidance": 1.0,
                "points": [{"images": i, "flops": f * scale, "n": 1,
                            FID: {"mean": float(fid_at(f)), "ci95": float("nan"), "n": 1}}
                           for i, f in enumerate(np.geomspace(1e12, 1e14, 5))]}
    curves = {"ct | d | stepsdefault-cfg1": curve("ct", "stepsdefault-cfg1", 1.0),
              "edm | d | steps6-cfg1": curve("edm", "steps6-cfg1", 2.0)}
    agg = pd.DataFrame([{"label": "ct", "dataset": "d", "tag": "stepsdefault-cfg1", f"{FID}_mean": 5.0},
                        {"label": "edm", "dataset": "d", "tag": "steps6-cfg1", f"{FID}_mean": 6.0}])
    out, info = compute_columns(agg, curves, FID, {"fid": 10.0}, None)
    assert info["baseline"] == "edm" and list(out["compute_ratio"]) == pytest.approx([0.5, 1.0], rel=1e-9)
