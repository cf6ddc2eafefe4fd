"""Comparison tables (markdown / csv / html), two plots and one self-contained report.html.

Reads only the run folders (through bench.store.collect); never re-runs anything.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from bench.io import atomic_write, atomic_write_text
from bench.store import collect

METRIC_COLUMNS = ("fid", "sfid", "is", "precision", "recall", "kid", "clip_score", "fd_dinov2")
BASE_COLUMNS = ("label", "dataset", "seed", "status", "params", "train_images", "budget_flops", "train_flops",
                "spend_rel_error", "spend_flagged", "steps", "guidance", "nfe", "sample_flops_per_image")


def _metric_cols(df) -> list[str]:
    return [c for c in df.columns if any(c == m or c.startswith(m + "_") or c.startswith(m + "[") for m in
                                         METRIC_COLUMNS) and c not in BASE_COLUMNS]


def comparison_table(df, published: dict[str, dict[str, float]] | None = None):
    """One row per (cell, sampling setting): config, FLOPs budget vs spent, NFE, metrics, paper's numbers
    (the suite's ``published`` by label, then bench/published.csv rows of the setting the preset declares)."""
    import pandas as pd

    if df.empty:
        return pd.DataFrame(columns=list(BASE_COLUMNS))
    metrics = _metric_cols(df)
    cols = [c for c in BASE_COLUMNS if c in df.columns] + metrics
    extra = [c for c in ("metrics_note", "error") if c in df.columns and df[c].notna().any()]
    table = df[cols + extra].copy()
    for label, values in (published or {}).items():
        for metric, value in values.items():
            col = f"{metric} (paper)"
            if col not in table.columns:
                table[col] = None
            table.loc[table["label"] == label, col] = value
    from bench.published import join_declared    # the setting each row's preset declares (published.csv)
    table = join_declared(table, df, metrics)
    return table.sort_values([c for c in ("dataset", "label", "seed", "steps", "guidance") if c in table.columns],
                             na_position="last").reset_index(drop=True)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, bool):
        return "FLAG" if v else "ok"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-2) else f"{v:.3f}".rstrip("0").rstrip(".")
    if isinstance(v, int) and abs(v) >= 1e5:
        return f"{v:.3g}"
    return str(v)


def to_markdown(table) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_html_table(table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(row[c]))}</td>" for c in table.columns) + "</tr>"
                   for _, row in table.iterrows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plots(df) -> dict[str, bytes]:
    """FID vs training FLOPs spent, and FID vs NFE (only where FID exists)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fid = next((c for c in _metric_cols(df) if c.startswith("fid")), None)
    if fid is None or df[fid].isna().all():
        return {}
    out = {}
    d = df.dropna(subset=[fid])
    for name, xcol, xlabel, logx in (("fid_vs_train_flops", "train_flops", "training FLOPs spent", True),
                                     ("fid_vs_nfe", "nfe", "NFE per image", False)):
        if xcol not in d.columns:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, g in d.groupby("label"):
            g = g.sort_values(xcol)
            ax.plot(g[xcol], g[fid], marker="o", label=str(label))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(fid)
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out[name] = _png(fig)
        plt.close(fig)
    return out


def _sample_grids(root: Path) -> list[tuple[str, bytes]]:
    grids = []
    for png in sorted(root.glob("*/samples/*/shard-0000-of-*.png")):
        grids.append((f"{png.parts[-4]} / {png.parts[-2]}", png.read_bytes()))
    return grids[:24]


def write_report(root: str | Path, out: str | Path | None = None, title: str | None = None,
                 published: dict[str, dict[str, float]] | None = None) -> dict[str, Path]:
    """table.{md,csv,html}, plots (png) and report.html under ``out`` (default <root>/report)."""
    root = Path(root)
    out = Path(out) if out else root / "report"
    df = collect(root)
    if df.empty:
        raise FileNotFoundError(f"no run folders under {root} (run the suite first)")
    table = comparison_table(df, published)
    paths = {"md": atomic_write_text(out / "table.md", to_markdown(table)),
             "csv": atomic_write_text(out / "table.csv", table.to_csv(index=False)),
             "html": atomic_write_text(out / "table.html", to_html_table(table))}
    images = plots(df)
    for name, data in images.items():
        paths[name] = atomic_write(out / f"{name}.png", lambda f, d=data: f.write(d))
    title = title or root.name
    img = lambda data: f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'  # noqa: E731
    flagged = int(df.get("spend_flagged", []).fillna(False).astype(bool).sum()) if "spend_flagged" in df else 0
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{df['cell'].nunique()} cells; status: "
             + ", ".join(f"{k} {v}" for k, v in df.drop_duplicates('cell')['status'].value_counts().items())
             + f"; cells whose FLOPs spend differs from the budget by more than the tolerance: {flagged}. "
               "FLOPs count a multiply-add as 2 (torch's FlopCounterMode).</p>",
             "<h2>Comparison</h2>", to_html_table(table)]
    if images:
        parts += ["<h2>Plots</h2>"] + [img(d) for d in images.values()]
    grids = _sample_grids(root)
    if grids:
        parts += ["<h2>Samples</h2>"] + [f"<figure>{img(d)}<figcaption>{html.escape(c)}</figcaption></figure>"
                                         for c, d in grids]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}figure{display:inline-block;margin:4px}"
             "figure img{min-width:256px;image-rendering:pixelated}")   # 16-px grids stay visible
    doc = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
          f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    paths["report"] = atomic_write_text(out / "report.html", doc)
    return paths
