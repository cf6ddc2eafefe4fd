"""Published numbers (bench/published.csv) joined to result rows by the setting each preset declares.

A method states, per preset, which published setting it reproduces (``Method.published_keys``: preset ->
the ``key`` column of published.csv). A result row gets a published value only from rows with that key,
the same metric and the same NFE (when the table gives one), so a preset never sits beside a number
of a different setting (an l2 preset beside an LPIPS number, a 1-step row beside a 2-step number).
Presets that declare no key get none.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "published.csv"


@lru_cache(maxsize=4)
def load_published(path: str | Path = TABLE):
    import pandas as pd

    d = pd.read_csv(path, dtype={"key": "string"})
    d["nfe"] = pd.to_numeric(d["nfe"], errors="coerce")
    return d


def declared_key(method: str | None, preset: str | None) -> str | None:
    """The published setting a (method, preset) declares, or None (unknown method, no preset, no key)."""
    from bench.method import load_all

    cls = load_all().get(str(method)) if method is not None else None
    if cls is None or preset is None:
        return None
    return getattr(cls, "published_keys", {}).get(str(preset))


def published_value(rows, key: str, metric: str, nfe) -> tuple[float, str] | None:
    """(value, 'variant [status]') of the one published row with ``key``, ``metric`` and a matching NFE."""
    import pandas as pd

    hit = rows[(rows["key"] == key) & (rows["metric"] == metric)]
    if not pd.isna(nfe):
        hit = hit[hit["nfe"].isna() | (hit["nfe"] == float(nfe))]
    if len(hit) != 1:
        return None
    r = hit.iloc[0]
    return float(r["value"]), f"{r['variant']} [{r['status']}]"


def join_declared(table, source, metrics: list[str], path: str | Path = TABLE):
    """Fill ``<metric> (paper)`` and ``paper setting`` of ``table`` (index-aligned with ``source``, which
    has method / preset / nfe columns) from the rows each row's preset declares. Returns the table."""
    if "method" not in source.columns or "preset" not in source.columns:
        return table
    rows = load_published(path)
    for idx, r in source.iterrows():
        key = declared_key(r.get("method"), r.get("preset"))
        if key is None:
            continue
        for metric in metrics:
            hit = published_value(rows, key, metric, r.get("nfe"))
            if hit is None:
                continue
            for col in (f"{metric} (paper)", "paper setting"):
                if col not in table.columns:
                    table[col] = None
            table.loc[idx, f"{metric} (paper)"] = hit[0]
            table.loc[idx, "paper setting"] = hit[1]
    return table
