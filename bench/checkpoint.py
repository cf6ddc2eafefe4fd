"""Checkpoint folder: ``ckpt-<images>.pt`` written atomically, the newest few kept.

Every checkpoint read goes through ``load_checkpoint``: weights only (tensors and plain containers, see
bench.safeload), since run folders are shared and a pickled checkpoint could otherwise run code on the
machine that loads it. ``trust=True`` (the CLI's ``--trust-checkpoint``) reads a file the old way.
"""
from __future__ import annotations

import contextlib
import contextvars
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from bench.io import atomic_write
from bench.safeload import UnsafeFileError, torch_load

_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")
# Ambient because train() builds its own CheckpointStore: the CLI flag reaches it without new arguments.
_TRUST: contextvars.ContextVar[bool] = contextvars.ContextVar("trust_checkpoints", default=False)


@contextlib.contextmanager
def trust_checkpoints(trust: bool = True) -> Iterator[None]:
    """Within this block (this thread), ``load_checkpoint(..., trust=None)`` reads with full pickle if ``trust``."""
    token = _TRUST.set(bool(trust))
    try:
        yield
    finally:
        _TRUST.reset(token)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", trust: bool | None = None) -> dict[str, Any]:
    """A checkpoint's dict, read weights-only unless ``trust`` (None: the enclosing ``trust_checkpoints``)."""
    trust = _TRUST.get() if trust is None else trust
    return torch_load(path, "checkpoint", map_location, trust=trust,
                      hint="if you trust its source, read it with --trust-checkpoint")


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

    def load_latest(self, map_location: Any = "cpu", trust: bool | None = None) -> dict[str, Any] | None:
        path = self.latest()
        if path is None:
            return None
        try:
            return load_checkpoint(path, map_location, trust)
        except UnsafeFileError:
            raise
        except Exception as err:  # a truncated file cannot come from atomic writes; say which file it is
            raise RuntimeError(f"checkpoint {path} cannot be read ({err}); delete it to resume from the previous one") \
                from err
