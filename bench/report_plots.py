"""The report's plots (matplotlib, PNG bytes): each metric vs training FLOPs per method with 95% bands
over training seeds and the FID power-law fit, FID vs guidance scale and vs NFE where a suite sweeps
them, and a precision-recall scatter."""
from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

from bench.report_stats import base_metric, power_law, series


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _band(ax, x, y, ci, **kw) -> None:
    line, = ax.plot(x, y, marker="o", ms=3, **kw)
    ok = np.isfinite(ci)
    if ok.any():
        ax.fill_between(x[ok], (y - ci)[ok], (y + ci)[ok], color=line.get_color(), alpha=0.2, lw=0)


def curve_plots(curves: dict[str, dict[str, Any]], metrics: list[str], target: float | None) -> dict[str, bytes]:
    """One plot per metric: mean over seeds vs training FLOPs, band = 95% Student-t interval over seeds."""
    plt = _plt()
    out = {}
    for m in metrics:
        have = [(k, c) for k, c in curves.items() if any(m in p for p in c["points"])]
        if not have:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for key, cur in have:
            x, y, ci = series(cur, m)
            name = cur["label"] if len(curves) == len({c["label"] for c in curves.values()}) else key
            _band(ax, x, y, ci, label=str(name))
            fit = cur.get("fit")
            if base_metric(m) == "fid" and isinstance(fit, dict) and len(x) > 1:
                xs = np.geomspace(x.min(), x.max(), 64)
                ax.plot(xs, power_law(xs, fit["a"], fit["b"], fit["c"]), ls="--", lw=0.8,
                        color=ax.lines[-1].get_color())
        if base_metric(m) == "fid" and target is not None and np.isfinite(target):
            ax.axhline(target, color="grey", ls=":", lw=1, label=f"target {target:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(m)
        ax.set_title(f"{m} vs training compute (band: 95% CI over seeds; dashed: fit)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out[f"curve_{_safe(m)}"] = _png(fig)
    return out


def _sweep_plot(agg, fid: str, xcol: str, xlabel: str, logx: bool) -> bytes | None:
    """Per method entry (label without its sweep suffix), FID mean ± 95% CI against ``xcol``; None when no
    method has more than one value of ``xcol``."""
    if xcol not in agg.columns or f"{fid}_mean" not in agg.columns:
        return None
    d = agg.dropna(subset=[xcol, f"{fid}_mean"]).copy()
    d["entry"] = d["label"].astype(str).str.split("[").str[0] + " | " + d["dataset"].astype(str)
    if not (d.groupby("entry")[xcol].nunique() > 1).any():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for entry, g in d.groupby("entry"):
        g = g.groupby(xcol, as_index=False)[[f"{fid}_mean", f"{fid}_ci95"]].first().sort_values(xcol)
        ax.errorbar(g[xcol].astype(float), g[f"{fid}_mean"], yerr=g[f"{fid}_ci95"].fillna(0), marker="o", ms=3,
                    capsize=2, label=entry)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(fid)
    ax.set_title(f"{fid} vs {xlabel} (bars: 95% CI over seeds)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def sweep_plots(agg, fid: str | None) -> dict[str, bytes]:
    out = {}
    if fid is None:
        return out
    for name, xcol, xlabel, logx in (("fid_vs_guidance", "guidance", "guidance scale", False),
                                     ("fid_vs_nfe", "nfe", "NFE per image", True)):
        png = _sweep_plot(agg, fid, xcol, xlabel, logx)
        if png is not None:
            out[name] = png
    return out


def precision_recall_plot(agg) -> dict[str, bytes]:
    p = next((c for c in agg.columns if base_metric(c) == "precision" and c.endswith("_mean")), None)
    r = next((c for c in agg.columns if base_metric(c) == "recall" and c.endswith("_mean")), None)
    if p is None or r is None or agg[[p, r]].dropna().empty:
        return {}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    d = agg.dropna(subset=[p, r])
    for _, row in d.iterrows():
        ax.errorbar(row[r], row[p], xerr=_nz(row.get(r.replace("_mean", "_ci95"))),
                    yerr=_nz(row.get(p.replace("_mean", "_ci95"))), marker="o", ms=4, capsize=2)
        ax.annotate(f"{row['label']} ({row.get('tag', '')})", (row[r], row[p]), fontsize=6,
                    textcoords="offset points", xytext=(3, 3))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(r)
    ax.set_ylabel(p)
    ax.set_title("precision vs recall (bars: 95% CI over seeds)", fontsize=8)
    ax.grid(alpha=0.3)
    return {"precision_recall": _png(fig)}


def _nz(v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return 0.0
    return v if np.isfinite(v) else 0.0


def final_points_plot(agg, fid: str | None) -> dict[str, bytes]:
    """Without eval_every: final FID vs training FLOPs, one point per (label, setting)."""
    if fid is None or f"{fid}_mean" not in agg.columns or "train_flops" not in agg.columns:
        return {}
    d = agg.dropna(subset=[f"{fid}_mean", "train_flops"])
    if d.empty:
        return {}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, g in d.groupby("label"):
        ax.errorbar(g["train_flops"].astype(float), g[f"{fid}_mean"], yerr=g[f"{fid}_ci95"].fillna(0), marker="o",
                    capsize=2, ls="none", label=str(label))
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs spent")
    ax.set_ylabel(fid)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return {"fid_vs_train_flops": _png(fig)}
