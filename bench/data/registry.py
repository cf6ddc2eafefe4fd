"""The reader registry: dataset kind -> builder. The bottom floor of bench.data.

Reader modules register here (``@reader("folder")``); bench.data.readers imports them all and
bench.data.spec.build_dataset looks kinds up, so no reader module imports its registry back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from bench.method import ConfigError

if TYPE_CHECKING:                      # annotations only: spec.py sits above the readers
    from bench.data.spec import DatasetSpec

READERS: dict[str, Callable[["DatasetSpec"], Any]] = {}


def reader(kind: str):
    def deco(fn):
        READERS[kind] = fn
        return fn
    return deco


def check_options(spec: "DatasetSpec", allowed: set[str]) -> None:
    """One line naming the unknown reader options of ``spec`` and the allowed ones."""
    extra = set(spec.options) - allowed
    if extra:
        raise ConfigError(f"field 'data.options': unknown option(s) {sorted(extra)} for kind {spec.kind!r}; "
                          f"allowed: {', '.join(sorted(allowed)) or 'none'}")
