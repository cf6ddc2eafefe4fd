"""Text conditioning: a frozen open_clip text tower, an on-disk caption-embedding cache, and a dataset
wrapper that adds ``text`` (the embedding of the item's chosen caption) to every item.

All captions of a dataset are encoded once, when the wrapper is built (cache miss) or loaded from the
cache (hit); training then only indexes a table, so it never re-encodes and loader workers never hold
the encoder. The caption an item shows is chosen by the reader from (caption_seed, index, epoch)
(bench.data.base.choose_caption), so runs stay reproducible.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from bench.method import ConfigError

CACHE_ENV = "BENCH_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/bench").expanduser() / "captions"


class TextEncoder:
    """Frozen open_clip text tower. ``pretrained`` is a weight file path, or a tag whose file is looked up
    in the asset folder (bench.metrics.assets: ``clip/<model>--<tag>.bin``, root $BENCH_ASSETS)."""

    def __init__(self, model: str, pretrained: str, *, assets: str | Path | None = None,
                 device: str | torch.device = "cpu", normalize: bool = True, batch_size: int = 256):
        import open_clip

        path = Path(pretrained).expanduser()
        if path.is_file():
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            if os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors")):
                raise ConfigError(f"field 'data.text.pretrained': weight file {pretrained!r} does not exist")
            from bench.metrics.assets import AssetFolder, clip_spec
            path, entry = AssetFolder(assets).require(clip_spec(model, pretrained))
            sha = entry["sha256"]
        if model not in open_clip.list_models():
            raise ConfigError(f"field 'data.text.model': unknown open_clip model {model!r}")
        self.model_name, self.normalize, self.batch_size = model, normalize, batch_size
        self.device = torch.device(device)
        self.id = f"open_clip:{model}:{sha[:12]}:{'norm' if normalize else 'raw'}"
        net = open_clip.create_model(model, pretrained=str(path), device=self.device, weights_only=True)
        net.visual = None  # only the text tower is used; free the image tower's memory
        self.net = net.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model)
        self.calls = 0  # number of encode() batches run (tests check cache hits by it)

    @property
    def dim(self) -> int:
        return int(self.net.text_projection.shape[-1]) if self.net.text_projection is not None else int(
            self.net.token_embedding.weight.shape[-1])

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Pooled text embeddings (N, dim), float32 on CPU."""
        out = []
        for lo in range(0, len(captions), self.batch_size):
            self.calls += 1
            tok = self.tokenizer(list(captions[lo:lo + self.batch_size])).to(self.device)
            emb = self.net.encode_text(tok).float()
            out.append((F.normalize(emb, dim=-1) if self.normalize else emb).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


class CaptionCache:
    """Caption -> embedding table on disk, one file per (dataset key, encoder id).

    ``lookup`` encodes only the captions the file lacks (a miss), then rewrites the file atomically;
    ``hits`` / ``misses`` count captions served from disk / encoded in this process.
    """

    def __init__(self, cache_dir: str | Path | None, dataset_key: str, encoder_id: str):
        self.dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.path = self.dir / f"{_slug(dataset_key)}--{_slug(encoder_id)}.pt"
        self.encoder_id = encoder_id
        self.hits = self.misses = 0

    def _load(self) -> tuple[list[str], torch.Tensor | None]:
        if not self.path.is_file():
            return [], None
        try:
            from bench.safeload import torch_load
            data = torch_load(self.path, "caption cache")
            if data["encoder"] != self.encoder_id:
                raise ValueError(f"made by encoder {data['encoder']!r}, not {self.encoder_id!r}")
            return list(data["captions"]), data["embeddings"]
        except Exception as err:  # unreadable cache: rebuild rather than train on wrong embeddings
            print(f"warning: caption cache {self.path} unusable ({err}); re-encoding")
            return [], None

    def lookup(self, captions: Sequence[str], encoder: TextEncoder) -> tuple[dict[str, int], torch.Tensor]:
        """(caption -> row, table) covering every caption in ``captions``."""
        if encoder.id != self.encoder_id:
            raise ValueError(f"cache is for encoder {self.encoder_id!r}, got {encoder.id!r}")
        known, table = self._load()
        row = {c: k for k, c in enumerate(known)}
        wanted = list(dict.fromkeys(captions))
        missing = [c for c in wanted if c not in row]
        self.hits += len(wanted) - len(missing)
        self.misses += len(missing)
        if missing:
            new = encoder.encode(missing)
            table = new if table is None else torch.cat([table, new])
            for c in missing:
                row[c] = len(row)
            known += missing
            self._save(known, table)
        assert table is not None
        return row, table

    def _save(self, captions: list[str], table: torch.Tensor) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        torch.save({"encoder": self.encoder_id, "captions": captions, "embeddings": table.contiguous()}, tmp)
        os.replace(tmp, self.path)


def dataset_key(spec: Any) -> str:
    """A stable name for a dataset's caption set: kind + hash of (root, split, options, max_items)."""
    root = os.path.abspath(os.path.expanduser(spec.root)) if spec.root else None
    ident = json.dumps({"kind": spec.kind, "root": root, "split": spec.split, "options": spec.options,
                        "max_items": spec.max_items}, sort_keys=True, default=str)
    return f"{spec.kind}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


class TextConditioned:
    """Wraps a captioned dataset: each item also carries ``text`` = embedding of its ``caption``.

    ``null_text`` is the embedding of the empty caption (what classifier-free guidance drops to).
    """

    def __init__(self, dataset: Any, encoder: TextEncoder, cache: CaptionCache):
        if not getattr(dataset, "has_captions", False):
            raise ConfigError("field 'data.text': this dataset has no captions to encode")
        captions = [""]
        for i in range(len(dataset)):
            caps = dataset.captions_of(i)
            if not caps:
                raise ConfigError(f"field 'data.text': {dataset.describe(i)} has no caption")
            captions += caps
        self.row, self.table = cache.lookup(captions, encoder)
        self.dataset, self.encoder_id = dataset, encoder.id
        self.text_dim = int(self.table.shape[-1])
        self.null_text = self.table[self.row[""]]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # resolution, channels, num_classes, class_names, ...
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def embedding(self, caption: str) -> torch.Tensor:
        return self.table[self.row[caption]]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        item["text"] = self.embedding(item["caption"])
        return item

    def get(self, i: int, epoch: int = 0) -> dict[str, Any]:
        item = self.dataset.get(i, epoch)
        item["text"] = self.embedding(item["caption"])
        return item
