"""`trained:<name>` extractors: a small CNN trained on a dataset's own labels.

Standard Inception features say little about 32-px clipart or emoji, and the real weights may be
absent on CPU machines. A classifier trained on the dataset gives features in which FID-style
distances are meaningful at that scale. Numbers made with it carry its id and their own columns.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.method import ConfigError
from bench.metrics.assets import AssetFolder, trained_spec
from bench.metrics.inception import spatial_to_sfid


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, input_size: int = 64):
        super().__init__()
        self.arch = {"num_classes": num_classes, "width": width, "input_size": input_size}
        self.input_size = input_size
        self.stem = nn.Sequential(_block(3, width, 1), _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2))
        self.head = nn.Sequential(_block(4 * width, 8 * width, 2), _block(8 * width, 8 * width, 1))
        self.fc = nn.Linear(8 * width, num_classes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        mid = self.stem(self.prepare(images))
        pool = self.head(mid).mean(dim=(2, 3))
        return {"pool": pool, "spatial": spatial_to_sfid(mid), "logits": self.fc(pool)}


class TrainedExtractor:
    provides = ("pool", "spatial", "logits")
    official = None

    def __init__(self, net: SmallCNN, family: str, extractor_id: str, info: dict[str, Any], device):
        self.net, self.family, self.id, self.info = net.to(device).eval(), family, extractor_id, info
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: Path, family: str, extractor_id: str, device="cpu") -> "TrainedExtractor":
        from bench.safeload import torch_load
        blob = torch_load(path, "trained extractor", hint="retrain it with `bench assets train-extractor`")
        net = SmallCNN(**blob["arch"])
        net.load_state_dict(blob["state_dict"])
        return cls(net, family, extractor_id, {k: v for k, v in blob.items() if k != "state_dict"}, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in self.net(images.to(self.device)).items()}


def train_extractor(dataset, name: str, assets: AssetFolder, *, epochs: int = 5, batch: int = 64,
                    lr: float = 2e-3, width: int = 32, input_size: int = 64, seed: int = 0,
                    val_fraction: float = 0.1, device: str = "cpu", source: str = "",
                    progress: bool = True) -> dict[str, Any]:
    """Train a SmallCNN on ``dataset`` labels, stage it as ``trained:<name>``; returns the manifest entry
    plus the held-out accuracy (a sanity check that the features carry class information)."""
    num_classes = int(getattr(dataset, "num_classes", 0) or 0)
    if num_classes < 2:
        raise ConfigError(f"train-extractor: dataset has num_classes={num_classes}; a labelled dataset is needed")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g).tolist()
    n_val = max(1, int(len(order) * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]

    def load(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [dataset[i] for i in idx]
        return torch.stack([it["image"] for it in items]), torch.tensor([int(it["label"]) for it in items])

    torch.manual_seed(seed)
    net = SmallCNN(num_classes, width, input_size).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    from tqdm import tqdm
    steps = max(1, len(train_idx) // batch) * epochs
    bar = tqdm(total=steps, desc=f"train-extractor {name}", disable=not progress)
    for _ in range(epochs):
        perm = torch.randperm(len(train_idx), generator=g).tolist()
        for s in range(0, max(1, len(perm) - batch + 1), batch):
            x, y = load([train_idx[i] for i in perm[s:s + batch]])
            x = x.to(device)
            if torch.rand((), generator=g) < 0.5:
                x = x.flip(-1)
            loss = F.cross_entropy(net(x)["logits"], y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    net.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(val_idx), batch):
            x, y = load(val_idx[s:s + batch])
            correct += int((net(x.to(device))["logits"].argmax(1).cpu() == y).sum())
    acc = correct / len(val_idx)
    blob = {"arch": net.arch, "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
            "val_accuracy": acc, "num_train": len(train_idx), "epochs": epochs, "source": source}
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "extractor.pt"
        torch.save(blob, p)
        entry = assets.add(trained_spec(name), p, source=source or f"trained on {len(train_idx)} images")
    return {**entry, "val_accuracy": acc}
