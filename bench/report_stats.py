"""The report's statistics: aggregation over training seeds (Student-t intervals), metric-vs-compute curves,
the power-law fit FID(C) = a·C^(-b) + c, and compute-to-target with a ratio to the baseline method.

Intervals, kept apart on purpose:
  ``<metric>_ci95``           95% Student-t interval half-width of the mean over training seeds
                              (t_{0.975, n-1} · s / sqrt(n), s with ddof 1; n/a with one seed);
  ``<metric>_boot_std_mean``  sampling noise: std of the FID over bootstrap resamples of the generated
                              samples' features (bench.metrics.bootstrap), averaged over the seeds.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

GROUP = ("label", "dataset", "steps", "guidance")      # cells differing only in `seeds` share these
LOWER_IS_BETTER = ("fid", "sfid", "kid", "fd_dinov2", "cmmd")
FIT_MIN_POINTS = 4


def base_metric(col: str) -> str:
    """'fid[trained:x]_mean' -> 'fid'."""
    name = col.split("[")[0]
    for suffix in ("_boot_std", "_mean", "_ci95"):
        name = name.split(suffix)[0]
    return name


def lower_is_better(col: str) -> bool:
    return base_metric(col) in LOWER_IS_BETTER


def t_ci95(values) -> float:
    """Half-width of the 95% Student-t interval of the mean (NaN for fewer than 2 finite values)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def _group_keys(df) -> list[str]:
    return [c for c in GROUP if c in df.columns]


def aggregate(table, metrics: list[str]):
    """One row per GROUP: ``<m>_mean``, ``<m>_ci95`` per metric and ``n_seeds``; other columns keep their
    first value (they agree within a group), train_flops its mean, seeds and statuses joined."""
    import pandas as pd

    keys = _group_keys(table)
    if table.empty or not keys:
        return table.copy()
    rows = []
    for _, g in table.groupby(keys, dropna=False, sort=False):
        row: dict[str, Any] = {}
        for c in g.columns:
            if c in metrics or c == "seed":
                continue
            vals = g[c].dropna()
            row[c] = vals.iloc[0] if len(vals) else None
        if "seed" in g.columns:
            row["seeds"] = ",".join(str(s) for s in g["seed"].dropna().tolist())
        if "status" in g.columns:
            row["status"] = ",".join(sorted(set(g["status"].dropna().astype(str))))
        if "train_flops" in g.columns and g["train_flops"].notna().any():
            row["train_flops"] = float(g["train_flops"].astype(float).mean())
        row["n_seeds"] = int(g["seed"].nunique()) if "seed" in g.columns else len(g)
        for m in metrics:
            vals = pd.to_numeric(g[m], errors="coerce").dropna()
            row[f"{m}_mean"] = float(vals.mean()) if len(vals) else float("nan")
            if not m.endswith("_boot_std"):
                row[f"{m}_ci95"] = t_ci95(vals.tolist())
        rows.append(row)
    return pd.DataFrame(rows)


# ---- curves ------------------------------------------------------------------------------------
def curve_points(df_curve, metrics: list[str]) -> dict[str, dict[str, Any]]:
    """Per (label, dataset, setting tag): points by training images, each with the mean FLOPs and, per
    metric, mean / ci95 over seeds and n."""
    out: dict[str, dict[str, Any]] = {}
    if df_curve is None or df_curve.empty:
        return out
    for (label, dataset, tag), g in df_curve.groupby(["label", "dataset", "tag"], dropna=False, sort=True):
        pts = []
        for images, p in g.groupby("images", sort=True):
            point: dict[str, Any] = {"images": int(images), "flops": float(p["flops"].astype(float).mean()),
                                     "n": int(p["seed"].nunique())}
            for m in metrics:
                if m not in p.columns:
                    continue
                vals = [float(v) for v in p[m].dropna()]
                if vals:
                    point[m] = {"mean": float(np.mean(vals)), "ci95": t_ci95(vals), "n": len(vals)}
            pts.append(point)
        first = g.iloc[0]
        key = f"{label} | {dataset} | {tag}"
        out[key] = {"label": label, "dataset": dataset, "tag": tag, "method": first.get("method"),
                    "steps": first.get("steps"), "guidance": first.get("guidance"), "points": pts}
    return out


def series(curve: dict[str, Any], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flops, mean, ci95) of the points that have ``metric``."""
    pts = [p for p in curve["points"] if metric in p]
    return (np.array([p["flops"] for p in pts], dtype=np.float64),
            np.array([p[metric]["mean"] for p in pts], dtype=np.float64),
            np.array([p[metric]["ci95"] for p in pts], dtype=np.float64))


def power_law(c, a, b, k):
    return a * np.power(c, -b) + k


def fit_power_law(flops: np.ndarray, fid: np.ndarray) -> dict[str, Any] | None:
    """Least-squares fit of FID(C) = a·C^(-b) + c (scipy curve_fit), needing >= FIT_MIN_POINTS points.

    Fitted on C / C_max so the parameters are of order one; ``a`` is reported for C in FLOPs."""
    from scipy.optimize import curve_fit

    ok = np.isfinite(flops) & np.isfinite(fid) & (flops > 0)
    x, y = flops[ok], fid[ok]
    if len(x) < FIT_MIN_POINTS or len(np.unique(x)) < FIT_MIN_POINTS:
        return None
    scale = float(x.max())
    p0 = [max(float(y.max() - y.min()), 1e-6), 0.5, max(float(y.min()) * 0.9, 0.0)]
    try:
        (a, b, k), _ = curve_fit(power_law, x / scale, y, p0=p0, bounds=([0.0, 0.0, 0.0], [np.inf, 10.0, np.inf]),
                                 maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    resid = y - power_law(x / scale, a, b, k)
    return {"a": float(a * scale ** b), "b": float(b), "c": float(k), "flops_scale": scale,
            "rmse": float(np.sqrt(np.mean(resid ** 2))), "points": int(len(x))}


def compute_to_target(flops: np.ndarray, values: np.ndarray, target: float, lower: bool = True) -> float:
    """Training FLOPs at which the curve first reaches ``target``, interpolated linearly in log-FLOPs
    between the two points around the first crossing; the first point's FLOPs if it already reaches the
    target; NaN if the curve never does."""
    order = np.argsort(flops)
    x, y = flops[order], values[order]
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    reached = y <= target if lower else y >= target
    if not reached.any():
        return float("nan")
    i = int(np.argmax(reached))
    if i == 0:
        return float(x[0])
    lx0, lx1, y0, y1 = math.log(x[i - 1]), math.log(x[i]), y[i - 1], y[i]
    frac = (target - y0) / (y1 - y0) if y1 != y0 else 1.0
    return float(math.exp(lx0 + frac * (lx1 - lx0)))


def primary_fid(columns) -> str | None:
    return next((c for c in columns if base_metric(c) == "fid" and "_" not in c.split("]")[-1]), None)


def compute_columns(agg, curves: dict[str, dict[str, Any]], fid: str | None, targets: dict[str, float],
                    baseline: str | None):
    """Add fit_a / fit_b / fit_c, compute_to_target and compute_ratio (to the baseline's curve of the same
    dataset and setting) to the aggregated table; returns (table, info) with the target used."""
    info: dict[str, Any] = {"metric": fid, "baseline": baseline or "edm"}
    if fid is None or agg.empty or f"{fid}_mean" not in agg.columns:
        return agg, info
    target = targets.get("fid")
    info["target_source"] = "suite targets.fid" if target is not None else "worst final FID of the suite"
    if target is None:        # over the trained methods: a baseline row (gaussian, untrained) is no target
        rows = agg[~agg["baseline"].fillna(False).astype(bool)] if "baseline" in agg.columns else agg
        finals = rows[f"{fid}_mean"].dropna()
        target = float(finals.max()) if len(finals) else float("nan")
    info["target"] = target
    agg = agg.copy()
    for col in ("fit_a", "fit_b", "fit_c", "compute_to_target", "compute_ratio"):
        agg[col] = None
    ctt: dict[tuple, float] = {}
    for key, cur in curves.items():
        x, y, _ = series(cur, fid)
        fit = fit_power_law(x, y)
        cur["fit"] = fit if fit is not None else "n/a"
        cur["compute_to_target"] = compute_to_target(x, y, target) if len(x) else float("nan")
        cur["target"] = target
        ctt[(cur["label"], cur["dataset"], cur["tag"])] = cur["compute_to_target"]
    base = info["baseline"]
    for idx, r in agg.iterrows():
        tag = r.get("tag")
        cur = curves.get(f"{r['label']} | {r['dataset']} | {tag}")
        if cur is None:
            continue
        fit = cur["fit"]
        for p in ("a", "b", "c"):
            agg.at[idx, f"fit_{p}"] = fit[p] if isinstance(fit, dict) else "n/a"
        agg.at[idx, "compute_to_target"] = cur["compute_to_target"]
        ref = _baseline_ctt(curves, cur, base)
        ratio = cur["compute_to_target"] / ref if ref and np.isfinite(ref) and ref > 0 else float("nan")
        agg.at[idx, "compute_ratio"] = ratio
        cur["compute_ratio"] = ratio
    return agg, info


def _baseline_ctt(curves: dict[str, dict[str, Any]], cur: dict[str, Any], base: str) -> float | None:
    """compute_to_target of the baseline's curve for ``cur``: same dataset, then the same setting tag, else
    the same guidance (methods keep their own default samplers), else the only baseline curve there is."""
    cands = [c for c in curves.values() if c["dataset"] == cur["dataset"] and
             (c["label"] == base or str(c["label"]).split("[")[0] == base or c.get("method") == base)]
    for pick in ([c for c in cands if c["tag"] == cur["tag"]], [c for c in cands if c["guidance"] == cur["guidance"]],
                 cands if len(cands) == 1 else []):
        if pick:
            return pick[0]["compute_to_target"]
    return None
