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
