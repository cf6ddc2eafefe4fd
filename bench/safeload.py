"""Reading files that may come from someone else without running their code.

Pickle-based formats execute whatever a file asks for while it is read, so every torch file the harness
reads from a user (checkpoints, trained extractors, SD-VAE weights, caption caches) goes through
``torch_load``: PyTorch's weights-only unpickler, which builds tensors and plain containers (dicts,
lists, tuples, strings, numbers, None) and refuses anything else. YAML is read with the safe loader
only (``load_yaml``: no python/* tags), npz files with ``allow_pickle=False``, manifests as JSON.
Checkpoints alone can be read the unsafe way, on request (``bench.checkpoint``, ``--trust-checkpoint``).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import yaml

from bench.method import ConfigError


class UnsafeFileError(ConfigError):
    """A file holds objects the weights-only unpickler refuses (one line naming it; exit 2 in the CLI)."""


def _reason(err: BaseException) -> str:
    """What torch's long weights-only message says was refused, in a few words."""
    text = str(err)
    if m := re.search(r"GLOBAL ([\w.]+)", text):
        return f"global {m.group(1)}"
    if m := re.search(r"Unsupported operand (\d+)", text):
        return f"pickle opcode {m.group(1)}: not a torch.save file?"
    return type(err).__name__


def torch_load(path: str | Path, what: str, map_location: Any = "cpu", *, trust: bool = False,
               hint: str = "replace it with a file that holds only tensors (a state dict)",
               data: bytes | None = None) -> Any:
    """``torch.load`` restricted to tensors and plain containers unless ``trust``; a refused file raises
    UnsafeFileError naming ``what`` and ``path``, with ``hint`` saying what to do about it. ``data``: the
    file's bytes, already read (then ``path`` only names it)."""
    import io

    import torch

    source = io.BytesIO(data) if data is not None else path
    if trust:
        return torch.load(source, map_location=map_location, weights_only=False)
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # torch wraps every refusal (and non-torch pickles) in this
        raise UnsafeFileError(
            f"{what} {path} holds objects other than tensors and plain containers ({_reason(err)}), which "
            f"unpickling could run as code: refused; {hint}") from None


def load_yaml(path: str | Path, what: str) -> Any:
    """A YAML file through the safe loader; bad YAML and python/* tags are one ConfigError line."""
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML for the safe loader (no python/* tags): "
                          f"{str(err).splitlines()[0]}") from None


def yaml_value(text: str, field: str) -> Any:
    """One ``key=value`` override's value, parsed as safe YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {field!r}: value {text!r} is not valid YAML for the safe loader: "
                          f"{str(err).splitlines()[0]}") from None
