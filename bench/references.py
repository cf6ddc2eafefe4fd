"""`reference: auto` — reference statistics built from the dataset itself, cached beside the suite's runs.

For CPU-scale data without standard statistics: if the suite's extractor is `trained:<name>` and no such
extractor is staged, one is trained on the dataset's labels first (bench.metrics.trained), then the
statistics are computed over the whole dataset with it. The file name carries the extractor, so numbers
from different extractors never share a reference.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.method import ConfigError

AUTO = "auto"


def auto_reference_path(suite_dir: Path, dataset: str, extractor: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", extractor)
    return suite_dir / "refs" / f"{dataset}--{slug}.npz"


def ensure_reference(suite_dir: str | Path, dataset_name: str, data_spec: dict[str, Any], extractor: str,
                     *, assets=None, device: str = "cpu", log=print) -> Path:
    """Path of the dataset's reference statistics for ``extractor``, building (and training) what is missing."""
    from bench.data.spec import DatasetSpec, build_dataset
    from bench.metrics.api import build_reference
    from bench.metrics.assets import AssetError, AssetFolder
    from bench.metrics.extractors import build_extractor
    from bench.method import validate_model

    out = auto_reference_path(Path(suite_dir), dataset_name, extractor)
    if out.is_file():
        return out
    assets = assets or AssetFolder()
    spec = validate_model(DatasetSpec, {**data_spec, "text": None}, prefix="data.")
    dataset = build_dataset(spec, with_text=False)
    try:
        build_extractor(extractor, assets, device)
    except AssetError:
        if not extractor.startswith("trained:"):
            raise
        from bench.metrics.trained import train_extractor
        name = extractor.split(":", 1)[1]
        if not getattr(dataset, "num_classes", 0):
            raise ConfigError(f"reference: auto with extractor {extractor!r} needs a labelled dataset; "
                              f"{dataset_name!r} has no class labels") from None
        entry = train_extractor(dataset, name, assets, device=device, source=f"dataset {dataset_name}",
                                progress=False)
        log(f"trained feature extractor {extractor} on {dataset_name} "
            f"(held-out accuracy {entry['val_accuracy']:.3f})")
    build_reference(dataset, out, assets, extractor=extractor, pr_images=min(10_000, len(dataset)),
                    device=device, meta={"dataset": spec.model_dump(mode="json"), "auto": True}, progress=False)
    log(f"reference statistics for {dataset_name} ({len(dataset)} images, {extractor}) -> {out}")
    return out
