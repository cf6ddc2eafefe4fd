"""`bench assets fetch`: stage weights on a machine with internet, for air-gapped compute nodes.

Each fetcher downloads into a temporary folder, then ``AssetFolder.add`` copies the file in
atomically and records its sha256. Hub libraries are used in online mode here only.
"""
from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path

from bench.metrics.assets import AssetError, AssetFolder, AssetSpec, spec_from_key


def _download(url: str, dst: Path) -> Path:
    with urllib.request.urlopen(url, timeout=60) as resp, open(dst, "wb") as f:  # noqa: S310 - fixed URLs
        while block := resp.read(1 << 22):
            f.write(block)
    return dst


def _fetch_clip(spec: AssetSpec, tmp: Path) -> Path:
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    _, model, tag = spec.key.split(":")
    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        raise AssetError(f"open_clip has no pretrained tag {tag!r} for {model!r}; "
                         f"known: {open_clip.list_pretrained_tags_by_model(model)}")
    return Path(download_pretrained(cfg, cache_dir=str(tmp)))


def _fetch_dinov2(spec: AssetSpec, tmp: Path) -> Path:
    from huggingface_hub import hf_hub_download

    name = spec.key.split(":", 1)[1]
    return Path(hf_hub_download(f"timm/{name}", "model.safetensors", cache_dir=str(tmp)))


def _package_file(spec: AssetSpec) -> Path:
    """A weight file shipped inside an installed package (``package:<pkg>/<path>``): nothing is downloaded."""
    from importlib import resources

    pkg, _, rel = spec.url.removeprefix("package:").partition("/")
    try:
        path = Path(str(resources.files(pkg).joinpath(rel)))
    except ModuleNotFoundError:
        raise AssetError(f"asset {spec.key}: package {pkg!r} is not installed (pip install {pkg})") from None
    if not path.is_file():
        raise AssetError(f"asset {spec.key}: {path} is not in the installed {pkg!r} package")
    return path


def _fetch_t5(spec: AssetSpec, folder: AssetFolder) -> Path:
    """Download a T5 checkpoint, keep its encoder as one model.safetensors beside config + tokenizer."""
    from transformers import AutoTokenizer, T5EncoderModel

    name = spec.key.split(":", 1)[1]
    dst = (folder.root / spec.relpath).parent
    T5EncoderModel.from_pretrained(name).save_pretrained(str(dst), max_shard_size="1000GB")
    AutoTokenizer.from_pretrained(name).save_pretrained(str(dst))
    return dst / "model.safetensors"


def fetch(folder: AssetFolder, key: str) -> dict:
    spec = spec_from_key(key)
    if spec.url is None:
        raise AssetError(f"asset {key}: nothing to download (build it with `bench assets train-extractor`)")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.pop(var, None)
    try:
        import huggingface_hub.constants as hc
        hc.HF_HUB_OFFLINE = False
    except Exception:  # noqa: BLE001
        pass
    folder.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.root) as tmpd:
        tmp = Path(tmpd)
        try:
            if key in ("inception", "lpips-vgg16"):
                src = _download(spec.url, tmp / Path(spec.relpath).name)
            elif spec.url.startswith("package:"):
                src = _package_file(spec)
            elif key.startswith("clip:"):
                src = _fetch_clip(spec, tmp)
            elif key.startswith("t5:"):
                src = _fetch_t5(spec, folder)
            else:
                src = _fetch_dinov2(spec, tmp)
        except AssetError:
            raise
        except Exception as err:  # noqa: BLE001 - any network failure becomes one line
            raise AssetError(f"fetching {key} from {spec.url} failed: {type(err).__name__}: {err}".splitlines()[0]) \
                from None
        entry = folder.add(spec, src, source=spec.url)
    if entry.get("official") is False:
        raise AssetError(f"{spec.relpath}: downloaded file has sha256 {entry['sha256'][:16]}..., expected prefix "
                         f"{spec.published_sha256_prefix}")
    return entry
