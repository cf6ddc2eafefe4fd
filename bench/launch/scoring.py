"""Scoring one sampling setting of a cell into its metrics.json row (the final evaluation and every
eval_every point produce rows of the same shape)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from bench.store import RunFolder
from bench.suite import setting_tag


def score_setting(cell_d: dict[str, Any], rf: RunFolder, shards: list[Path], steps: int | None, guidance: float,
                  cost: dict[str, Any], metrics_fn: Callable) -> dict[str, Any]:
    """One (steps, guidance) setting's row of metrics.json (also a curve point's row: the same shape)."""
    try:
        result = metrics_fn({**cell_d, "_suite_dir": str(rf.path.parent)}, shards)
        values, note = result.get("metrics", result), None
    except _unavailable_errors() as err:          # missing weights/reference: say so, keep the cell
        values, note = {}, f"metrics unavailable: {str(err).splitlines()[0]}"
        result = {}
    return {"steps": steps, "guidance": guidance, "tag": setting_tag(steps, guidance),
            "n_samples": int(cell_d["sampling"]["n"]), **cost, **values, **({"metrics_note": note} if note else {}),
            "metrics_detail": {k: v for k, v in result.items() if k != "metrics"}}


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    try:
        from bench.metrics.assets import AssetError
        return (AssetError, ImportError)
    except ImportError:
        return (ImportError,)
