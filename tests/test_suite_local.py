"""The local executor end to end on tiny cells: run, skip on re-run, a failing cell, manifest, report."""
from __future__ import annotations

import json

import yaml

from bench.launch import plan_cells, run_local
from bench.store import RunFolder, collect
from bench.suite import expand_suite, load_suite, suite_dir


def fake_metrics(cell, shards):
    """Stands in for the Inception-based evaluator: mean pixel value of the samples (real data, no weights)."""
    import numpy as np

    arrays = [np.load(p)["arr_0"] for p in shards]
    return {"metrics": {"fid": float(np.concatenate(arrays).mean())}}


def test_local_suite_runs_skips_and_isolates_failures(tmp_path, capsys):
    suite = {
        "name": "loc", "output": str(tmp_path / "results"),
        "datasets": {"s16": {"kind": "synthetic", "resolution": 16, "options": {"n": 64}},
                     "gone": {"kind": "folder", "root": str(tmp_path / "absent"), "resolution": 16}},
        "methods": [{"method": "edm", "preset": "cpu-tiny", "method_config": {"resolution": 16}}],
        "train": {"batch": 4, "warmup_images": 4, "checkpoint_images": 8, "progress": False},
        "budget": {"flops": 5.5e9}, "sampling": {"n": 4, "steps": [2], "batch": 4, "shards": 2},
        "metrics": ["fid"],
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    s = load_suite(path)
    planned = plan_cells(expand_suite(s), suite_dir(s))
    result = run_local(planned, s.name, metrics_fn=fake_metrics, progress=False)
    ok = next(pc for pc in planned if pc.cell.dataset == "s16")
    bad = next(pc for pc in planned if pc.cell.dataset == "gone")
    assert result == {ok.cell.id: "done", bad.cell.id: "failed"}
    rf = RunFolder(ok.run_dir)
    m = json.loads(rf.metrics_file.read_text())
    assert m["settings"][0]["nfe"] > 0 and m["settings"][0]["fid"] > 0
    assert abs(m["spend_rel_error"]) < 0.02 and m["spend_flagged"] is False
    assert m["spent_flops"] == rf.train_summary()["flops"] > 0
    man = json.loads((rf.path / "manifest.json").read_text())
    assert {"git", "packages", "config", "jobs"} <= set(man) and man["packages"]["torch"]
    assert "absent" in RunFolder(bad.run_dir).error_line()
    # a re-run skips the finished cell and retries the failed one
    capsys.readouterr()
    again = run_local(planned, s.name, metrics_fn=fake_metrics, progress=False)
    assert again[ok.cell.id] == "done" and "skipped" in capsys.readouterr().out
    df = collect(suite_dir(s))
    assert set(df["status"]) == {"done", "failed"} and "fid" in df.columns
    from bench.report import write_report
    paths = write_report(suite_dir(s))
    assert "<table>" in paths["report"].read_text() and paths["csv"].read_text().count("\n") == 3
