"""Checkpoint folder: ``ckpt-<images>.pt`` written atomically, the newest few kept."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from bench.io import atomic_write

_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")


class CheckpointStore:
    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder, self.keep = Path(folder), keep

    def list(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1][1] if found else None

    def save(self, images: int, state: dict[str, Any]) -> Path:
        path = atomic_write(self.folder / f"ckpt-{images:012d}.pt", lambda f: torch.save(state, f))
        for _, old in self.list()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        path = self.latest()
        if path is None:
            return None
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:  # a truncated file cannot come from atomic writes; say which file it is
            raise RuntimeError(f"checkpoint {path} cannot be read ({err}); delete it to resume from the previous one") \
                from err
