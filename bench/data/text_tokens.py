"""Token-sequence caption encoders (T5 encoder family via ``transformers``, open_clip per-token hidden
states), their on-disk token cache, and the dataset wrapper that gives every item ``text`` = the (L, D)
token features of its caption, padding rows zero (the mask convention of bench.nets.text_cond).

Weights come only from the staged asset folder (bench.metrics.assets): T5 as ``t5/<name>/`` holding one
``model.safetensors`` (the encoder, registered with its sha256), ``config.json`` and the tokenizer files
(``bench assets fetch t5:<hf-name>`` writes exactly that); open_clip as ``clip/<model>--<tag>.bin``.

Cache (one folder per encoder id, shared by every dataset): shards of captions, each a flat (tokens, D)
array in a compact dtype (fp16 / bf16 stored as int16 bits / fp32) plus a JSON index (captions and token
counts) written after its array, so a shard exists only once complete. ``lookup`` reads the indexes,
encodes only captions no shard holds — in batches, with a progress bar, one shard per ``shard_size``
captions — so an interrupted encoding resumes from its last complete shard. Training memory-maps the
shards (opened lazily in each loader process) and pads each caption to ``length`` rows.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from bench.io import atomic_write, atomic_write_json
from bench.method import ConfigError

DTYPES = ("fp16", "bf16", "fp32")
T5_FILES = ("config.json",)
T5_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


# ---- encoders -----------------------------------------------------------------------------------

class T5TokenEncoder:
    """Frozen T5 encoder (``T5EncoderModel``): last hidden states of the caption tokens (EOS appended, as
    the T5 tokenizer does), truncated to ``max_length`` tokens."""

    family = "t5"

    def __init__(self, name: str, *, assets: str | Path | None = None, device: str | torch.device = "cpu",
                 max_length: int = 128, batch_size: int = 64):
        from bench.metrics.assets import AssetFolder, t5_spec

        folder = AssetFolder(assets)
        spec = t5_spec(name)
        weights, entry = folder.require(spec)
        d = weights.parent
        how = f"stage it with `bench assets fetch {spec.key} --assets {folder.root}`"
        for f in T5_FILES:
            if not (d / f).is_file():
                raise ConfigError(f"T5 encoder {name!r}: {d / f} is missing; {how}")
        if not any((d / f).is_file() for f in T5_TOKENIZER_FILES):
            raise ConfigError(f"T5 encoder {name!r}: no tokenizer in {d} (expected {' or '.join(T5_TOKENIZER_FILES)}); "
                              f"{how}")
        from transformers import AutoTokenizer, T5EncoderModel

        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        self.net = T5EncoderModel.from_pretrained(str(d), local_files_only=True).to(self.device).eval()
        self.net.requires_grad_(False)
        self.max_length, self.batch_size = max_length, batch_size
        self.dim = int(self.net.config.d_model)
        self.id = f"t5:{name}:{entry['sha256'][:12]}:L{max_length}"
        self.calls = 0

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> list[np.ndarray]:
        """Per caption a float32 (tokens, dim) array of its valid positions."""
        out: list[np.ndarray] = []
        for lo in range(0, len(captions), self.batch_size):
            self.calls += 1
            tok = self.tokenizer(list(captions[lo:lo + self.batch_size]), padding="longest", truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            h = self.net(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
            h, lens = h.float().cpu().numpy(), tok["attention_mask"].sum(1).cpu().tolist()
            out += [h[i, :int(n)] for i, n in enumerate(lens)]
        return out


class OpenClipTokenEncoder:
    """Frozen open_clip text tower's per-token hidden states (after ``ln_final``, before pooling /
    projection), positions up to and including the end-of-text token (the causal mask makes later
    positions padding)."""

    family = "open_clip"

    def __init__(self, model: str, pretrained: str, *, assets: str | Path | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 256):
        from bench.data.text import TextEncoder

        base = TextEncoder(model, pretrained, assets=assets, device=device, normalize=False, batch_size=batch_size)
        self.net, self.tokenizer, self.device = base.net, base.tokenizer, base.device
        if not hasattr(self.net, "token_embedding"):
            raise ConfigError(f"field 'data.text.model': open_clip model {model!r} has no built-in text transformer "
                              "(per-token states are read from CLIP-style text towers only)")
        self.dim = int(self.net.token_embedding.weight.shape[-1])
        self.max_length = int(self.net.positional_embedding.shape[0])
        self.batch_size = batch_size
        self.id = base.id.replace(":norm", "").replace(":raw", "") + ":tokens"
        self.calls = 0

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> list[np.ndarray]:
        net, out = self.net, []
        for lo in range(0, len(captions), self.batch_size):
            self.calls += 1
            text = self.tokenizer(list(captions[lo:lo + self.batch_size])).to(self.device)
            cast = net.transformer.get_cast_dtype()
            x = net.token_embedding(text).to(cast) + net.positional_embedding.to(cast)
            x = net.ln_final(net.transformer(x, attn_mask=net.attn_mask)).float().cpu().numpy()
            ends = text.argmax(dim=-1).cpu().tolist()   # end-of-text has the largest token id
            out += [x[i, :e + 1] for i, e in enumerate(ends)]
        return out


def build_token_encoder(spec: Any) -> T5TokenEncoder | OpenClipTokenEncoder:
    """The encoder a TextSpec names (family t5 | open_clip)."""
    if spec.family == "t5":
        return T5TokenEncoder(spec.model, assets=spec.assets, device=spec.device,
                              max_length=spec.max_length or 128, batch_size=spec.batch_size)
    if not spec.pretrained:
        raise ConfigError("field 'data.text.pretrained': open_clip needs a pretrained tag or weight file")
    return OpenClipTokenEncoder(spec.model, spec.pretrained, assets=spec.assets, device=spec.device,
                                batch_size=spec.batch_size)


# ---- cache --------------------------------------------------------------------------------------

def _to_store(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "fp16":
        return a.astype(np.float16)
    if dtype == "bf16":   # numpy has no bfloat16: keep its bit pattern as int16
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy()
    return a.astype(np.float32)


def _from_store(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.array(a))
    return t.view(torch.bfloat16).float() if dtype == "bf16" else t.float()


class TokenCache:
    """Caption -> token features on disk for one encoder (see the module docstring)."""

    def __init__(self, cache_dir: str | Path | None, encoder_id: str, dtype: str = "fp16", shard_size: int = 8192):
        from bench.data.text import default_cache_dir

        if dtype not in DTYPES:
            raise ConfigError(f"field 'data.text.dtype': expected one of {', '.join(DTYPES)}, got {dtype!r}")
        base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.dir = base / "tokens" / f"{_slug(encoder_id)}--{dtype}"
        self.encoder_id, self.dtype, self.shard_size = encoder_id, dtype, shard_size
        self.hits = self.misses = 0

    def _index(self) -> dict[str, tuple[str, int, int]]:
        """caption -> (shard name, first row, token count) over every complete shard."""
        row: dict[str, tuple[str, int, int]] = {}
        for meta in sorted(self.dir.glob("shard-*.json")):
            try:
                data = json.loads(meta.read_text())
                if data["encoder"] != self.encoder_id or not meta.with_suffix(".npy").is_file():
                    raise ValueError("encoder mismatch or array missing")
            except (ValueError, KeyError) as err:
                print(f"warning: token cache shard {meta} unusable ({err}); its captions are re-encoded")
                continue
            off = 0
            for cap, n in zip(data["captions"], data["lengths"]):
                row.setdefault(cap, (meta.stem, off, int(n)))
                off += int(n)
        return row

    def lookup(self, captions: Sequence[str], encoder: Any, progress: bool = True) -> "TokenTable":
        if encoder.id != self.encoder_id:
            raise ValueError(f"cache is for encoder {self.encoder_id!r}, got {encoder.id!r}")
        row = self._index()
        wanted = list(dict.fromkeys(captions))
        missing = [c for c in wanted if c not in row]
        self.hits += len(wanted) - len(missing)
        self.misses += len(missing)
        if missing:
            from tqdm import tqdm

            bar = tqdm(total=len(missing), desc=f"encoding captions ({encoder.id})", unit="cap",
                       disable=not progress, mininterval=2.0)
            for lo in range(0, len(missing), self.shard_size):
                chunk = missing[lo:lo + self.shard_size]
                feats = []
                for blo in range(0, len(chunk), encoder.batch_size):
                    feats += encoder.encode(chunk[blo:blo + encoder.batch_size])
                    bar.update(min(encoder.batch_size, len(chunk) - blo))
                row.update(self._write(chunk, feats))
            bar.close()
        return TokenTable(self.dir, row, self.dtype, encoder.dim)

    def _write(self, captions: list[str], feats: list[np.ndarray]) -> dict[str, tuple[str, int, int]]:
        name = "shard-" + hashlib.sha256("\n".join(captions).encode()).hexdigest()[:16]
        flat = _to_store(np.concatenate(feats), self.dtype)
        atomic_write(self.dir / f"{name}.npy", lambda f: np.save(f, flat))
        lengths = [int(f.shape[0]) for f in feats]
        atomic_write_json(self.dir / f"{name}.json", {"encoder": self.encoder_id, "dtype": self.dtype,
                                                      "captions": captions, "lengths": lengths})
        out, off = {}, 0
        for c, n in zip(captions, lengths):
            out[c] = (name, off, n)
            off += n
        return out


class TokenTable:
    """Memory-mapped caption -> (length, dim) float32 features, zero-padded; picklable for loader workers
    (the memory maps are reopened in each process)."""

    def __init__(self, folder: Path, row: dict[str, tuple[str, int, int]], dtype: str, dim: int):
        self.folder, self.row, self.dtype, self.dim = folder, row, dtype, dim
        self._maps: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}

    def tokens(self, caption: str) -> torch.Tensor:
        """The valid positions of ``caption`` (n, dim), float32."""
        shard, off, n = self.row[caption]
        if shard not in self._maps:
            self._maps[shard] = np.load(self.folder / f"{shard}.npy", mmap_mode="r")
        return _from_store(self._maps[shard][off:off + n], self.dtype)

    def padded(self, caption: str, length: int) -> torch.Tensor:
        t = self.tokens(caption)[:length]
        out = torch.zeros(length, self.dim)
        out[:t.shape[0]] = t
        return out


class TokenTextConditioned:
    """Wraps a captioned dataset: each item also carries ``text`` = its caption's (length, dim) tokens."""

    def __init__(self, dataset: Any, encoder: Any, cache: TokenCache, length: int | None = None,
                 progress: bool = True):
        if not getattr(dataset, "has_captions", False):
            raise ConfigError("field 'data.text': this dataset has no captions to encode")
        captions: list[str] = []
        for i in range(len(dataset)):
            caps = dataset.captions_of(i)
            if not caps:
                raise ConfigError(f"field 'data.text': {dataset.describe(i)} has no caption")
            captions += caps
        self.table = cache.lookup(captions, encoder, progress=progress)
        self.dataset, self.encoder_id = dataset, encoder.id
        self.text_dim = int(encoder.dim)
        self.text_length = int(length or encoder.max_length)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def embedding(self, caption: str) -> torch.Tensor:
        return self.table.padded(caption, self.text_length)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        item["text"] = self.embedding(item["caption"])
        return item

    def get(self, i: int, epoch: int = 0) -> dict[str, Any]:
        item = self.dataset.get(i, epoch)
        item["text"] = self.embedding(item["caption"])
        return item


__all__ = ["T5TokenEncoder", "OpenClipTokenEncoder", "build_token_encoder", "TokenCache", "TokenTable",
           "TokenTextConditioned", "DTYPES"]
