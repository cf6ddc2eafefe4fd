"""Run folders (the store) and their collection into a pandas DataFrame.

Layout (DESIGN.md): results/<suite>/<cell-id>/{cell.yaml, manifest.json, log.jsonl, ckpt/, samples/,
metrics.json, status}. Every write is atomic. Writers never share a file except ``status`` (one
word) and ``manifest.json``: each writer (driver, train, sample-<k>, eval) owns a fragment under
``.manifest/`` and rewrites ``manifest.json`` as the merge of all fragments, so a lost race only
leaves the merged view briefly stale — ``read_manifest`` always merges the fragments itself.
"""
from __future__ import annotations

import getpass
import json
import os
import platform
import socket
import subprocess
import time
import traceback
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from bench.io import atomic_write_json, atomic_write_text

STATES = ("pending", "training", "sampling", "evaluating", "done", "failed")
PACKAGES = ("pixel-diffusion-bench", "torch", "torchvision", "numpy", "scipy", "pydantic", "submitit",
            "torch-fidelity", "clean-fid", "open-clip-torch", "pandas")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@lru_cache(maxsize=1)
def git_info() -> dict[str, Any]:
    """Commit and dirty flag of the checkout the harness runs from (None outside git)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    porcelain = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": None if porcelain is None else bool(porcelain)}


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def host_info() -> dict[str, Any]:
    gpu = None
    try:
        import torch
        if torch.cuda.is_available():
            gpu = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a manifest must never fail on a missing GPU stack
        gpu = None
    slurm = {k: v for k, v in os.environ.items()
             if k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
                      "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_NTASKS")}
    return {"host": socket.gethostname(), "user": getpass.getuser(), "python": platform.python_version(),
            "platform": platform.platform(), "gpu": gpu, "cpus": os.cpu_count(), "slurm": slurm or None}


def environment_record() -> dict[str, Any]:
    return {"git": git_info(), "packages": package_versions(), **host_info()}


class RunFolder:
    """One cell's run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- paths --
    @property
    def cell_file(self) -> Path:
        return self.path / "cell.yaml"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def error_file(self) -> Path:
        return self.path / "error.txt"

    def jobs_folder(self, stamp: str) -> Path:
        """submitit's folder for one submission (fresh per submission: SLURM job ids can repeat)."""
        return self.path / "slurm" / stamp

    # -- cell --
    def write_cell(self, cell: dict[str, Any]) -> None:
        atomic_write_text(self.cell_file, yaml.safe_dump(cell, sort_keys=False))

    def read_cell(self) -> dict[str, Any]:
        if not self.cell_file.is_file():
            raise FileNotFoundError(f"{self.cell_file} does not exist (not a run folder)")
        from bench.safeload import load_yaml
        return load_yaml(self.cell_file, "cell file")

    # -- status --
    def set_status(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"status {state!r}; expected one of {', '.join(STATES)}")
        atomic_write_text(self.path / "status", state + "\n")

    def status(self) -> str:
        p = self.path / "status"
        return p.read_text().strip() if p.is_file() else "pending"

    def fail(self, who: str, err: BaseException | str) -> str:
        """Record a failure: status 'failed', error.txt with the one-line reason first, then details."""
        if isinstance(err, BaseException):
            line = f"{who}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
            detail = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        else:
            line, detail = f"{who}: {err}", ""
        atomic_write_text(self.error_file, line + "\n" + detail)
        self.record(who, {"failed_at": now(), "error": line})
        self.set_status("failed")
        return line

    def error_line(self) -> str | None:
        if not self.error_file.is_file():
            return None
        first = self.error_file.read_text().splitlines()
        return first[0] if first else None

    def clear_error(self) -> None:
        if self.error_file.is_file():
            self.error_file.unlink()

    # -- manifest --
    def record(self, who: str, data: dict[str, Any], merge: bool = True) -> None:
        """Update this writer's fragment and rewrite manifest.json as the merge of all fragments."""
        frag = self.path / ".manifest" / f"{who}.json"
        old = _read_json(frag) if merge else {}
        atomic_write_json(frag, {**old, **data})
        atomic_write_json(self.path / "manifest.json", self.read_manifest())

    def read_manifest(self) -> dict[str, Any]:
        folder = self.path / ".manifest"
        parts = {p.stem: _read_json(p) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
        driver = parts.get("driver", {})
        jobs = dict(driver.get("jobs", {}))
        return {"cell_id": self.path.name, "git": driver.get("git"), "packages": driver.get("packages"),
                "config": driver.get("config"), "jobs": jobs, "parts": parts}

    def train_summary(self) -> dict[str, Any]:
        return _read_json(self.path / "train_summary.json")

    def last_log(self) -> dict[str, Any]:
        p = self.path / "log.jsonl"
        if not p.is_file():
            return {}
        with open(p, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").splitlines()
        for line in reversed(lines):
            try:
                return json.loads(line)
            except ValueError:
                continue
        return {}

    def metrics(self) -> dict[str, Any]:
        return _read_json(self.metrics_file)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def cell_folders(root: str | Path) -> list[RunFolder]:
    root = Path(root)
    if not root.is_dir():
        return []
    return [RunFolder(p) for p in sorted(root.iterdir()) if (p / "cell.yaml").is_file()]


def collect(root: str | Path):
    """One row per (cell, sampling setting) with the cell's config, status, spend and metrics."""
    import pandas as pd

    rows = []
    for rf in cell_folders(root):
        cell = rf.read_cell()
        summary = rf.train_summary()
        base = {"cell": rf.path.name, "label": cell.get("label"), "method": cell.get("method"),
                "preset": cell.get("preset"), "dataset": cell.get("dataset"), "seed": cell.get("seed"),
                "status": rf.status(), "budget_flops": (cell.get("plan") or {}).get("budget_flops"),
                "planned_flops": (cell.get("plan") or {}).get("planned_flops"),
                "train_images": summary.get("images"), "train_flops": summary.get("flops"),
                "error": rf.error_line(), **{f"sweep.{k}": v for k, v in (cell.get("sweep") or {}).items()}}
        m = rf.metrics()
        base.update({k: v for k, v in m.items()
                     if k in ("params", "spend_rel_error", "spend_flagged", "spent_flops", "baseline")})
        settings = m.get("settings") or []
        if not settings:
            rows.append(base)
        for s in settings:
            rows.append({**base, **_setting_values(s)})
    return pd.DataFrame(rows)


def _setting_values(s: dict[str, Any]) -> dict[str, Any]:
    """A setting row's scalars plus ``<metric>_boot_std`` (sampling noise) from its metrics_detail."""
    out = {k: v for k, v in s.items() if not isinstance(v, (dict, list))}
    noise = (s.get("metrics_detail") or {}).get("sampling_noise") or {}
    out.update({f"{k}_boot_std": v.get("std") for k, v in noise.items() if isinstance(v, dict)})
    return out


def collect_curves(root: str | Path):
    """One row per (cell, evaluation point, sampling setting): training images and FLOPs, and metrics —
    metrics.json's ``curve`` (which ends with the final point), else the partial metrics_curve.json."""
    import pandas as pd

    rows = []
    for rf in cell_folders(root):
        cell = rf.read_cell()
        points = rf.metrics().get("curve") or _read_json(rf.path / "metrics_curve.json").get("points") or []
        base = {"cell": rf.path.name, "label": cell.get("label"), "method": cell.get("method"),
                "dataset": cell.get("dataset"), "seed": cell.get("seed")}
        for pt in points:
            for s in pt.get("settings") or []:
                rows.append({**base, "images": pt.get("images"), "flops": pt.get("flops"),
                             "final": bool(pt.get("final", False)), **_setting_values(s)})
    return pd.DataFrame(rows)
