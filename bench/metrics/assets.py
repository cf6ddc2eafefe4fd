"""One asset folder for every weight file the metrics need, with expected hashes and offline use.

Layout (root from ``--assets``, else $BENCH_ASSETS, else ./assets):
  assets.json                         manifest: relpath -> sha256, size, mtime_ns, source
  inception/weights-inception-2015-12-05-6726825d.pth
  clip/<model>--<pretrained>.bin      open_clip state dict
  dinov2/<timm-name>.safetensors      DINOv2 weights in timm's layout
  extractors/<name>.pt                small CNNs trained by `bench assets train-extractor`
  t5/<hf-name with / as __>/          T5 text encoder: model.safetensors (registered), config.json, tokenizer

A file's expected hash is the one recorded in the manifest when it was staged; for files with a
published hash (Inception) the published prefix is also checked and the result recorded, so numbers
made with non-official weights (e.g. random test weights) are marked as such. Re-hashing is skipped
while size and mtime are unchanged, so `require` answers in milliseconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from bench.asset_specs import (INCEPTION_URL, AssetSpec, clip_spec, dinov2_spec, inception_spec,  # noqa: F401
                               sd_vae_spec, spec_from_key, t5_spec, trained_spec)
from bench.io import atomic_write, atomic_write_json
from bench.method import ConfigError

ENV_VAR = "BENCH_ASSETS"
MANIFEST = "assets.json"


class AssetError(ConfigError):
    """A missing, unregistered or corrupt asset (one line: file, expected hash, staging command)."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_root(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get(ENV_VAR) or "assets").expanduser().resolve()


def enter_offline_mode(root: Path) -> None:
    """Point every hub cache into the asset folder and make hub libraries fail instantly instead of
    downloading or retrying (open_clip retries for ~46 s without HF_HUB_OFFLINE)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_CACHE", str(root / "hf"))
    os.environ.setdefault("TORCH_HOME", str(root / "torch"))
    try:  # huggingface_hub reads the flag once at import time
        import huggingface_hub.constants as hc
        hc.HF_HUB_OFFLINE = True
    except Exception:  # noqa: BLE001 - not installed or layout changed: the env var still applies
        pass


class AssetFolder:
    def __init__(self, root: str | Path | None = None, offline: bool = True):
        self.root = resolve_root(root)
        if offline:
            enter_offline_mode(self.root)

    # ---- manifest ---------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict[str, dict[str, Any]]:
        if not self.manifest_path.is_file():
            return {}
        try:
            data = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise AssetError(f"asset manifest {self.manifest_path} is not valid JSON ({err}); "
                             "re-stage with `bench assets fetch` or `bench assets add`") from None
        return data if isinstance(data, dict) else {}

    def _record(self, relpath: str, entry: dict[str, Any]) -> None:
        man = self.manifest()
        man[relpath] = entry
        atomic_write_json(self.manifest_path, man)

    # ---- staging ----------------------------------------------------------------------------
    def add(self, spec: AssetSpec, src: str | Path, source: str) -> dict[str, Any]:
        """Copy ``src`` into the folder (atomically), hash it and record it in the manifest."""
        src = Path(src)
        if not src.is_file():
            raise AssetError(f"asset source {src} does not exist")
        dst = self.root / spec.relpath
        if src.resolve() != dst.resolve():
            with open(src, "rb") as fin:
                atomic_write(dst, lambda f: shutil.copyfileobj(fin, f, 1 << 22))
        return self.register_in_place(spec, source)

    def register_in_place(self, spec: AssetSpec, source: str) -> dict[str, Any]:
        dst = self.root / spec.relpath
        digest = sha256_file(dst)
        st = dst.stat()
        official = None if spec.published_sha256_prefix is None else digest.startswith(spec.published_sha256_prefix)
        entry = {"key": spec.key, "sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                 "source": source, "official": official}
        self._record(spec.relpath, entry)
        return entry

    # ---- lookup -----------------------------------------------------------------------------
    def _fail(self, spec: AssetSpec, what: str, expected: str | None) -> AssetError:
        exp = expected or (f"{spec.published_sha256_prefix}..." if spec.published_sha256_prefix else "none recorded")
        how = (f"bench assets fetch {spec.key}" if spec.url else
               "bench assets train-extractor" if spec.key.startswith("trained:") else f"bench assets add {spec.key} FILE")
        return AssetError(f"asset {self.root / spec.relpath}: {what} (expected sha256 {exp}); "
                          f"stage it with `{how} --assets {self.root}` (or set ${ENV_VAR})")

    def require(self, spec: AssetSpec) -> tuple[Path, dict[str, Any]]:
        """Path and manifest entry of a present, intact asset; AssetError otherwise (fast: no hashing
        while size and mtime match the manifest)."""
        path = self.root / spec.relpath
        entry = self.manifest().get(spec.relpath)
        expected = entry.get("sha256") if entry else None
        if not path.is_file():
            raise self._fail(spec, "missing", expected)
        if entry is None:
            raise self._fail(spec, "present but not registered in assets.json", None)
        st = path.stat()
        if st.st_size != entry.get("size"):
            raise self._fail(spec, f"corrupt (size {st.st_size} != {entry.get('size')})", expected)
        if st.st_mtime_ns != entry.get("mtime_ns"):
            digest = sha256_file(path)
            if digest != expected:
                raise self._fail(spec, f"corrupt (sha256 {digest[:16]}...)", expected)
            entry = {**entry, "mtime_ns": st.st_mtime_ns}
            self._record(spec.relpath, entry)
        return path, entry

    def status(self, specs: list[AssetSpec] | None = None) -> list[dict[str, Any]]:
        """One row per known asset (the manifest's plus ``specs``): present / missing / corrupt."""
        man = self.manifest()
        keys = {e.get("key", rel): rel for rel, e in man.items()}
        rows = []
        for spec in (specs or []) + [spec_from_key(k) for k in keys if k not in {s.key for s in specs or []}]:
            try:
                path, entry = self.require(spec)
                rows.append({"key": spec.key, "state": "ok", "path": str(path), "sha256": entry["sha256"],
                             "official": entry.get("official"), "source": entry.get("source")})
            except AssetError as err:
                rows.append({"key": spec.key, "state": "missing-or-corrupt", "path": str(self.root / spec.relpath),
                             "error": str(err)})
        return rows


def weights_id(family: str, entry: dict[str, Any]) -> str:
    """Extractor id recorded beside every number: family plus the weight file's sha256 prefix."""
    return f"{family}:{entry['sha256'][:12]}"
