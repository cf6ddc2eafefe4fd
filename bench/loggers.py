"""Where a person watches a run: TensorBoard event files and an offline wandb run, beside log.jsonl.

train.py writes log.jsonl itself and hands the same record to ``RunLoggers.scalars``; rank 0 writes,
other ranks only check that the extras are installed (so every rank fails alike). The step is the
number of training images seen; FLOPs spent is a scalar beside it (``progress/flops``). Loss terms go
under their stage (``<stage>/loss``), so each stage of a multi-stage method has its own curves.

A resumed run (a requeue after preemption restarts from the last checkpoint, so the steps between it
and the interruption are trained again) continues the same run with no duplicated or rewound step:
- TensorBoard: the same folder, reopened with ``purge_step`` = resume point + 1, so readers drop what
  the interrupted process wrote past its last checkpoint and the re-trained steps take their place.
- wandb (offline unless WANDB_MODE says otherwise; `wandb sync <run>/wandb/offline-run-*` uploads):
  the run id is kept in ``<run>/wandb/bench-run.json`` with the highest step sent; the resumed process
  logs under that id and skips steps up to it (wandb cannot take a step back; a CPU resume is bit-exact,
  so the skipped values are the ones already sent).
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import RunConfig
from bench.io import append_jsonl, atomic_write_json
from bench.method import ConfigError

_NOT_SCALARS = ("images", "stage", "time")     # the step, a label, the wall clock (each sink keeps its own)
_PROGRESS = ("flops", "stage_images")           # x-axis-like values, one curve over all stages


def _missing(extra: str, module: str) -> ConfigError:
    return ConfigError(f"train.loggers: {extra!r} needs the {module} package: "
                       f"pip install 'pixel-diffusion-bench[{extra}]'")


def _as_float(v: Any) -> float | None:
    if isinstance(v, (str, bool)) or v is None:
        return None
    try:
        return float(v)              # ints, floats, numpy and 0-d torch scalars
    except (TypeError, ValueError):
        return None


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """A log.jsonl record -> {tag: value}: progress/<x> for FLOPs and stage images, <stage>/<term> else."""
    stage = str(record.get("stage") or "train")
    out: dict[str, float] = {}
    for k, v in record.items():
        f = _as_float(v)
        if k in _NOT_SCALARS or f is None:
            continue
        out[f"progress/{k}" if k in _PROGRESS else f"{stage}/{k}"] = f
    return out


class _TensorBoard:
    def __init__(self, run_dir: Path, start_images: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events at steps >= it from earlier processes are dropped by TensorBoard's readers.
        self.w = SummaryWriter(str(run_dir / "tensorboard"), flush_secs=30,
                               purge_step=start_images + 1 if start_images > 0 else None)

    def scalars(self, step: int, values: dict[str, float], walltime: float | None) -> None:
        for tag, v in values.items():
            self.w.add_scalar(tag, v, step, walltime=walltime)

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        if grid.shape[-1] == 1:
            self.w.add_image(tag, grid[..., 0], step, dataformats="HW")
        else:
            self.w.add_image(tag, grid, step, dataformats="HWC")
        self.w.flush()               # a preview is worth seeing now, not at the next 30-s flush

    def close(self) -> None:
        self.w.close()


class _Wandb:
    def __init__(self, run_dir: Path, cfg: RunConfig):
        import wandb

        self.state_file = run_dir / "wandb" / "bench-run.json"
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            state = {}
        self.run_id = state.get("id") or uuid.uuid4().hex[:12]
        self.floor = int(state.get("last_step", -1))     # steps up to here were sent by earlier processes
        self.last = self.floor
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "pixel-diffusion-bench"), name=run_dir.name,
            group=run_dir.parent.name, id=self.run_id, resume="allow", dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"), config=cfg.model_dump(mode="json"),
            settings=wandb.Settings(console="off", silent=True))   # leave stdout/stderr (tqdm) alone
        self._save()
        self._image = wandb.Image

    def _save(self) -> None:
        atomic_write_json(self.state_file, {"id": self.run_id, "last_step": self.last})

    def _log(self, step: int, data: dict[str, Any]) -> None:
        if step <= self.floor:
            return
        self.run.log(data, step=step)
        if step > self.last:
            self.last = step
            self._save()

    def scalars(self, step: int, values: dict[str, float], walltime: float | None) -> None:
        self._log(step, {"images": step, **values})

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        self._log(step, {tag: self._image(grid[..., 0] if grid.shape[-1] == 1 else grid)})

    def close(self) -> None:
        self.run.finish()


class RunLoggers:
    """The optional sinks of one run (``train.loggers``) and its preview grids (``train.preview_images``)."""

    def __init__(self, run_dir: str | Path, cfg: RunConfig, rank: int = 0, start_images: int = 0):
        self.run_dir, self.cfg = Path(run_dir), cfg
        names = [n for n in cfg.train.loggers if n != "jsonl"]
        for name in names:                    # every rank: a missing extra fails all ranks the same way
            try:
                if name == "tensorboard":
                    import torch.utils.tensorboard  # noqa: F401
                elif name == "wandb":
                    import wandb  # noqa: F401
            except ImportError:
                raise _missing(name, name) from None
        self.active = rank == 0
        self.sinks: list[Any] = []
        self.previewer = None
        if not self.active:
            return
        for name in names:
            self.sinks.append(_TensorBoard(self.run_dir, start_images) if name == "tensorboard"
                              else _Wandb(self.run_dir, cfg))
        if cfg.train.preview_images:
            from bench.preview import Previewer
            self.previewer = Previewer(cfg, start_images)

    def scalars(self, record: dict[str, Any]) -> None:
        """The record train.py appends to log.jsonl (it carries ``images``, ``stage``, ``flops``)."""
        if not self.sinks:
            return
        step, values = int(record["images"]), scalar_tags(record)
        wall = _as_float(record.get("time"))
        for s in self.sinks:
            s.scalars(step, values, wall)

    def images(self, tag: str, grid: np.ndarray, step: int) -> None:
        """One uint8 HWC image (a grid) at ``step`` images."""
        for s in self.sinks:
            s.image(tag, grid, int(step))

    def preview(self, method, ema, images: int) -> None:
        """Draw a preview grid when one is due (every ``train.preview_images`` images; rank 0)."""
        if self.previewer is None or not self.previewer.due(images):
            return
        drawn = self.previewer(self.run_dir, method, ema, images)
        if drawn is None:
            return
        path, grid, seconds = drawn
        self.images("preview", grid, images)
        for s in self.sinks:
            s.scalars(images, {"progress/preview_seconds": seconds}, None)
        append_jsonl(self.run_dir / "previews" / "log.jsonl",
                     {"images": images, "file": path.name, "seconds": seconds})

    def close(self) -> None:
        sinks, self.sinks = self.sinks, []
        for s in sinks:
            s.close()
