"""The table of published numbers is well-formed: every row names its source, evaluator status and setting."""
import pandas as pd
from pathlib import Path

TABLE = Path(__file__).resolve().parents[1] / "bench" / "published.csv"
STATUSES = {"verified-primary", "verified-secondary", "unverified"}


def test_published_table_rows_are_complete():
    d = pd.read_csv(TABLE)
    assert list(d.columns[:7]) == ["method", "variant", "dataset", "resolution", "conditioning", "metric", "value"]
    assert set(d["status"]) <= STATUSES
    assert d["source"].notna().all() and d["value"].notna().all()
    assert pd.to_numeric(d["value"], errors="coerce").notna().all(), "values must be numbers"
    assert set(d["conditioning"]) <= {"none", "class", "text"}


def test_declared_published_keys_exist_and_select_one_row_per_metric_and_nfe():
    from bench.method import load_all

    d = pd.read_csv(TABLE, dtype={"key": "string"})
    keyed = d[d["key"].notna()]
    assert not keyed.duplicated(["key", "metric", "nfe"]).any(), "a key must name one setting per metric and NFE"
    for name, cls in load_all().items():
        for preset, key in cls.published_keys.items():
            assert preset in cls.presets, f"{name}: published_keys names unknown preset {preset!r}"
            assert key in set(keyed["key"]), f"{name}/{preset}: key {key!r} not in published.csv"


def test_report_shows_a_published_number_only_beside_the_preset_and_nfe_it_reproduces():
    from bench.report import comparison_table

    rows = [("cd", "imagenet64", 1, 7.1), ("cd", "imagenet64", 2, 5.2), ("cd", "imagenet64", 3, 5.0),
            ("cd", "imagenet64-l2", 1, 8.0), ("ct", "imagenet64", 2, 12.0), ("cd", "cpu-tiny", 1, 300.0),
            ("cd", None, 1, 300.0), ("gone", "imagenet64", 1, 1.0)]
    df = pd.DataFrame([{"label": f"{m}-{p}-{n}", "method": m, "preset": p, "dataset": "imagenet64", "seed": 0,
                        "status": "done", "steps": n, "nfe": n, "fid": v} for m, p, n, v in rows])
    t = comparison_table(df).set_index("label")
    paper = t["fid (paper)"].to_dict()
    assert paper["cd-imagenet64-1"] == 6.20 and paper["cd-imagenet64-2"] == 4.70
    assert paper["ct-imagenet64-2"] == 11.1
    for label in ("cd-imagenet64-3", "cd-imagenet64-l2-1", "cd-cpu-tiny-1", "cd-None-1", "gone-imagenet64-1"):
        assert pd.isna(paper[label]), label                   # no number of another setting, NFE or method
    assert t.loc["cd-imagenet64-1", "paper setting"].startswith("CD (LPIPS) 1-step")
    assert pd.isna(t.loc["cd-imagenet64-l2-1", "paper setting"])
    # the suite's explicit label -> number mapping still applies
    assert comparison_table(df, {"cd-cpu-tiny-1": {"fid": 1.5}}).set_index("label").loc["cd-cpu-tiny-1",
                                                                                          "fid (paper)"] == 1.5
