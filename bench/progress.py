"""Training progress read back from run folders: loss curves, throughput, ETA, a plot of every cell.

A requeued run restarts from its last checkpoint and logs the images after it again, so log.jsonl can
step back; ``read_log`` keeps the last process's records (like TensorBoard's purge on resume).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.io import atomic_write


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """log.jsonl records in training order, each images count once (a rewind drops what it replaces)."""
    out: list[dict[str, Any]] = []
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue                    # a line being written right now
        if not isinstance(rec, dict) or not isinstance(rec.get("images"), (int, float)):
            continue
        while out and out[-1]["images"] >= rec["images"]:
            out.pop()
        out.append(rec)
    return out


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def cell_progress(rf, total_images: int) -> dict[str, Any]:
    """Last loss, img/s and training ETA of one run folder (None where the log does not say)."""
    last = rf.last_log()
    done = last.get("images")
    rate = last.get("img_per_s")
    eta = None
    if done is not None and rate and total_images:
        eta = max(total_images - done, 0) / rate
    return {"images": done, "loss": last.get("loss"), "img_per_s": rate, "eta_s": eta, "stage": last.get("stage")}


def plot_loss_curves(folders: list, out: str | Path, title: str | None = None) -> Path:
    """One PNG: every cell's training loss over images seen (log scale), stage changes marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    drawn = 0
    for rf in folders:
        recs = [r for r in read_log(rf.path / "log.jsonl") if isinstance(r.get("loss"), (int, float))]
        if not recs:
            continue
        try:
            label = rf.read_cell().get("label") or rf.path.name
        except FileNotFoundError:
            label = rf.path.name
        x, y = [r["images"] for r in recs], [r["loss"] for r in recs]
        name = rf.path.name              # a suite's folder is <label>-<hash>: the name says both
        line, = ax.plot(x, y, label=name if name.startswith(str(label)) else f"{label} ({name})", linewidth=1.2)
        changes = [i for i in range(1, len(recs)) if recs[i].get("stage") != recs[i - 1].get("stage")]
        ax.plot([x[i] for i in changes], [y[i] for i in changes], "o", color=line.get_color(), markersize=4)
        drawn += 1
    ax.set_xlabel("training images seen")
    ax.set_ylabel("loss (log.jsonl, mean over each log interval)")
    if drawn and all(v > 0 for ln in ax.get_lines() for v in ln.get_ydata()):
        ax.set_yscale("log")
    ax.set_title(title or "training loss (dots: stage changes)")
    if drawn:
        ax.legend(fontsize=7, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no training log yet", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return atomic_write(out, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
