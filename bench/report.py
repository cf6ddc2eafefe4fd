"""The suite report: per-cell and seed-aggregated tables (md / csv / tex / html), metric-vs-compute
curves with fits and compute-to-target (bench.report_stats), plots (bench.report_plots), a
self-contained report.html and summary.json with every number shown.

Reads only the run folders (bench.store.collect / collect_curves); never re-runs anything.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from bench.io import atomic_write, atomic_write_json, atomic_write_text
from bench.report_stats import aggregate, compute_columns, curve_points, lower_is_better, primary_fid
from bench.store import collect, collect_curves

METRIC_COLUMNS = ("fid", "sfid", "is", "precision", "recall", "kid", "clip_score", "fd_dinov2")
BASE_COLUMNS = ("label", "method", "dataset", "seed", "status", "baseline", "params", "train_images", "budget_flops",
                "train_flops", "spend_rel_error", "spend_flagged", "steps", "guidance", "tag", "nfe",
                "sample_flops_per_image")
INTERVALS = {
    "_ci95": "95% Student-t interval half-width of the mean over training seeds (n_seeds; '-' with one seed)",
    "_boot_std_mean": "sampling noise: std of FID over bootstrap resamples of the generated samples' features "
                      "(bench.metrics.bootstrap; computed from the features of the evaluation pass), mean over seeds",
    "bands": "plot bands and error bars: the 95% Student-t interval over training seeds",
}


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
            if "paper setting" not in table.columns:
                table["paper setting"] = None
            table.loc[table["label"] == label, "paper setting"] = "suite file (published:)"
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
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _png_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def summary_table(df, curves_df, published=None, targets=None, baseline=None):
    """(per-cell table, seed-aggregated table, curves, compute info)."""
    cells = comparison_table(df, published)
    metrics = _metric_cols(cells)
    agg = aggregate(cells, metrics)
    cmetrics = _metric_cols(curves_df) if curves_df is not None and not curves_df.empty else []
    curves = curve_points(curves_df, cmetrics)
    fid = primary_fid(metrics)
    agg, info = compute_columns(agg, curves, fid, dict(targets or {}), baseline)
    return cells, agg, curves, info


def _clean(v: Any) -> Any:
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _best(agg, col: str) -> Any:
    vals = agg[col].apply(lambda v: v if isinstance(v, (int, float)) and not isinstance(v, bool) else None).dropna()
    vals = vals[vals.apply(math.isfinite)]
    if vals.empty:
        return None
    return vals.min() if lower_is_better(col) else vals.max()


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _tex(text: str) -> str:
    import re
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX[m.group(0)], str(text))


def to_latex(agg) -> str:
    """booktabs table of the seed-aggregated rows: metric means ± 95% CI over seeds (best mean per column in
    bold), published numbers with their source beside ours, compute to target and its ratio."""
    means = [c for c in agg.columns if c.endswith("_mean") and not c.endswith("_boot_std_mean")]
    paper = [c for c in agg.columns if c.endswith(" (paper)")]
    lead = [c for c in ("label", "dataset", "tag", "n_seeds", "train_flops") if c in agg.columns]
    tail = [c for c in ("compute_to_target", "compute_ratio") if c in agg.columns]
    source = "paper setting" if "paper setting" in agg.columns else None
    head = lead + [c[:-5] for c in means] + paper + ([source] if source and paper else []) + tail
    best = {c: _best(agg, c) for c in means}
    lines = ["% values: mean over training seeds, +- " + INTERVALS["_ci95"],
             r"\begin{tabular}{" + "l" * len(lead) + "r" * (len(head) - len(lead)) + "}", r"\toprule",
             " & ".join(_tex(h) for h in head) + r" \\", r"\midrule"]
    for _, r in agg.iterrows():
        cells = [_tex(_fmt(r[c])) for c in lead]
        for c in means:
            v, ci = r[c], r.get(c[:-5] + "_ci95")
            txt = _tex(_fmt(v))
            if isinstance(ci, float) and math.isfinite(ci):
                txt += r" $\pm$ " + _tex(_fmt(ci))
            if best[c] is not None and isinstance(v, float) and math.isfinite(v) and v == best[c]:
                txt = r"\textbf{" + txt + "}"
            cells.append(txt)
        cells += [_tex(_fmt(r[c])) for c in paper]
        if source and paper:
            cells.append(_tex(_fmt(r[source])))
        cells += [_tex(_fmt(r[c])) for c in tail]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_report(root: str | Path, out: str | Path | None = None, title: str | None = None,
                 published: dict[str, dict[str, float]] | None = None, targets: dict[str, float] | None = None,
                 baseline: str | None = None) -> dict[str, Path]:
    """table.{md,csv,tex,html} (seed-aggregated), cells.csv (per cell), plots (png), report.html (images
    inlined) and summary.json under ``out`` (default <root>/report)."""
    from bench.report_plots import curve_plots, final_points_plot, precision_recall_plot, sweep_plots

    root = Path(root)
    out = Path(out) if out else root / "report"
    df = collect(root)
    if df.empty:
        raise FileNotFoundError(f"no run folders under {root} (run the suite first)")
    curves_df = collect_curves(root)
    cells, agg, curves, info = summary_table(df, curves_df, published, targets, baseline)
    notes = "".join(f"- `{k}`: {v}\n" for k, v in INTERVALS.items())
    paths = {"md": atomic_write_text(out / "table.md", to_markdown(agg) + "\nIntervals:\n" + notes),
             "csv": atomic_write_text(out / "table.csv", agg.to_csv(index=False)),
             "tex": atomic_write_text(out / "table.tex", to_latex(agg)),
             "html": atomic_write_text(out / "table.html", to_html_table(agg)),
             "cells_csv": atomic_write_text(out / "cells.csv", cells.to_csv(index=False))}
    fid = info.get("metric")
    cmetrics = sorted({m for c in curves.values() for p in c["points"] for m in p
                       if m not in ("images", "flops", "n") and not m.endswith("_boot_std")})
    images = {**curve_plots(curves, cmetrics, info.get("target")),
              **(final_points_plot(agg, fid) if not curves else {}), **sweep_plots(agg, fid),
              **precision_recall_plot(agg)}
    for name, data in images.items():
        paths[name] = atomic_write(out / f"{name}.png", lambda f, d=data: f.write(d))
    summary = {"title": title or root.name, "intervals": INTERVALS, "compute": info,
               "table": agg.to_dict(orient="records"), "cells": cells.to_dict(orient="records"),
               "curves": curves, "plots": sorted(images)}
    paths["summary"] = atomic_write_json(out / "summary.json", _clean(summary))
    paths["report"] = atomic_write_text(out / "report.html", _html(root, df, title or root.name, agg, cells, curves,
                                                                   info, images))
    return paths


def _curve_table(curves: dict[str, dict[str, Any]], fid: str | None) -> str:
    import pandas as pd

    rows = []
    for cur in curves.values():
        fit = cur.get("fit")
        rows.append({"label": cur["label"], "dataset": cur["dataset"], "setting": cur["tag"],
                     "points": len(cur["points"]), "fit a": fit["a"] if isinstance(fit, dict) else "n/a",
                     "fit b": fit["b"] if isinstance(fit, dict) else "n/a",
                     "fit c": fit["c"] if isinstance(fit, dict) else "n/a",
                     "fit rmse": fit["rmse"] if isinstance(fit, dict) else "n/a",
                     "compute_to_target": cur.get("compute_to_target"), "compute_ratio": cur.get("compute_ratio")})
    return to_html_table(pd.DataFrame(rows)) if rows else ""


def _html(root: Path, df, title: str, agg, cells, curves, info, images: dict[str, bytes]) -> str:
    img = lambda data, alt="": (f'<img alt="{html.escape(alt)}" '  # noqa: E731
                                f'src="data:image/png;base64,{_png_b64(data)}">')
    flagged = int(df.get("spend_flagged", []).fillna(False).astype(bool).sum()) if "spend_flagged" in df else 0
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{df['cell'].nunique()} cells; status: "
             + ", ".join(f"{k} {v}" for k, v in df.drop_duplicates('cell')['status'].value_counts().items())
             + f"; cells whose FLOPs spend differs from the budget by more than the tolerance: {flagged}. "
               "FLOPs count a multiply-add as 2 (torch's FlopCounterMode).</p>",
             "<h2>Intervals</h2><ul>" + "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>"
                                                for k, v in INTERVALS.items()) + "</ul>",
             "<h2>Comparison (aggregated over training seeds)</h2>", to_html_table(agg)]
    if curves:
        tgt = info.get("target")
        parts += ["<h2>Compute</h2>",
                  f"<p>Fit: {html.escape(str(info.get('metric')))}(C) = a&middot;C<sup>-b</sup> + c over the mean "
                  f"curve (C in training FLOPs; at least 4 points, else n/a). compute_to_target: training FLOPs "
                  f"at which the mean curve first reaches {html.escape(_fmt(tgt))} "
                  f"({html.escape(str(info.get('target_source')))}),"
                  f" interpolated in log-FLOPs; compute_ratio: relative to the baseline "
                  f"{html.escape(str(info.get('baseline')))}.</p>", _curve_table(curves, info.get("metric"))]
    if images:
        parts += ["<h2>Plots</h2>"] + [f"<figure>{img(d, n)}<figcaption>{html.escape(n)}</figcaption></figure>"
                                       for n, d in images.items()]
    parts += ["<h2>Per cell</h2>", to_html_table(cells)]
    grids = _sample_grids(root)
    if grids:
        parts += ["<h2>Samples</h2>"] + [f"<figure class='grid'>{img(d, c)}<figcaption>{html.escape(c)}"
                                         "</figcaption></figure>" for c, d in grids]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}figure{display:inline-block;margin:4px}"
             ".wide{overflow-x:auto;max-width:100%}"
             "figure.grid img{min-width:256px;image-rendering:pixelated}")   # 16-px grids stay visible
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def _sample_grids(root: Path) -> list[tuple[str, bytes]]:
    grids = []
    for png in sorted(root.glob("*/samples/*/shard-0000-of-*.png")):
        grids.append((f"{png.parts[-4]} / {png.parts[-2]}", png.read_bytes()))
    return grids[:24]
