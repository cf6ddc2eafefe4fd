"""Training-loop behaviour: stages, freezing, EMA, accumulation, divergence, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.checkpoint import CheckpointStore, load_checkpoint
from bench.config import load_run_config
from bench.ema import EMA
from bench.method import REGISTRY, Batch, ConfigError, Method, MethodConfig, Stage, build_method
from bench.train import TrainingDiverged, stage_budgets, train
from helpers import state_equal, tiny_run_config

ROOT = Path(__file__).resolve().parents[1]


class ToyConfig(MethodConfig):
    resolution: int = 8
    blow_up_at: int = -1          # make the loss NaN from this many images on (tests divergence)


class Toy(Method):
    """Two stages: 'core' trains `core` at 4 px; 'grow' adds `head` (zero-init) and trains it with core frozen."""

    name = "toy-two-stage"
    Config = ToyConfig
    presets = {"cpu-tiny": {}}

    def __init__(self, config):
        super().__init__(config)
        self.core = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.head: torch.nn.Module | None = None
        self.seen = 0
        self.entered: list[str] = []

    def modules(self):
        mods = {"core": self.core}
        if self.head is not None:
            mods["head"] = self.head
        return mods

    def _grow(self):
        self.entered.append("grow")
        self.head = torch.nn.Conv2d(3, 3, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def stages(self):
        return [Stage("core", 0.5, (4,), trainable=("core",)),
                Stage("grow", 0.5, (4, 8), trainable=("head",), enter=self._grow)]

    def loss(self, batch: Batch, stage: Stage):
        x = batch.images[4]
        noise = batch.rng.randn(x.shape).to(x.device)
        out = self.core(x + noise)
        if self.head is not None:
            out = out + self.head(out)
        loss = ((out - x) ** 2).mean()
        self.seen += x.shape[0]
        if 0 <= self.config.blow_up_at <= self.seen:
            loss = loss * float("nan")
        return loss, {"noise_std": float(noise.std())}

    def default_steps(self):
        return 1

    def sample(self, rng, cond=None, steps=None, guidance=1.0):
        x = rng.randn((len(rng), 3, 8, 8))
        return x.clamp(-1, 1), 1


@pytest.fixture
def toy():
    REGISTRY[Toy.name] = Toy
    yield Toy
    REGISTRY.pop(Toy.name, None)


def _cfg(images=32, batch=4, **train_kw):
    t = dict(images=images, batch=batch, checkpoint_images=4, log_images=4, warmup_images=0, progress=False,
             device="cpu", ema_halflife_kimg=[0.01, 0.1])
    t.update(train_kw)
    return load_run_config(data={"method": "toy-two-stage", "preset": "cpu-tiny",
                                 "data": {"kind": "synthetic", "resolution": 8, "options": {"n": 16}}, "train": t})


def test_stages_freeze_and_grow(toy, tmp_path):
    cfg = _cfg(keep_checkpoints=100)
    out = train(cfg, tmp_path)
    assert out["done"] and out["stage_budgets"] == [16, 16]
    store = CheckpointStore(tmp_path / "ckpt", keep=100)
    logs = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in logs][:4] == ["core"] * 4 and logs[-1]["stage"] == "grow"
    # core weights at the end of stage 1 (after init_from_ema copied the primary EMA in) == at the end of stage 2
    final = load_checkpoint(store.latest())
    first = [p for i, p in store.list() if i == 16]
    assert first, "no checkpoint at the stage boundary"
    boundary = load_checkpoint(first[-1])
    assert "head" in final["method"] and "head" not in boundary["method"]
    assert not torch.equal(final["method"]["head"]["weight"], torch.zeros(3, 3, 1, 1)), "head was not trained"
    ema_core = boundary["ema"]["shadows"][0]["core"]
    assert all(torch.equal(final["method"]["core"][k], ema_core[k]) for k in ema_core), \
        "frozen core changed in stage 2 or did not start from the stage-1 EMA"


def test_explicit_stage_images(toy):
    cfg = _cfg(images=32)
    cfg.stage_images = [8, 24]
    assert stage_budgets(cfg, Toy(ToyConfig()).stages()) == [8, 24]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(toy, tmp_path):
    cfg = _cfg(images=32)
    cfg.method_config = {"blow_up_at": 12}
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        train(cfg, tmp_path)
    latest = load_checkpoint(CheckpointStore(tmp_path / "ckpt").latest())
    assert latest["images"] == 8   # the loss of the 3rd step (examples 9..12) was NaN: nothing after 8 saved
    assert all(torch.isfinite(v).all() for v in latest["method"]["core"].values())


def test_gradient_accumulation_matches_full_batch(tmp_path):
    base = tiny_run_config("edm", "cpu-tiny", images=8, batch=4, overrides={"unet_overrides": {"dropout": 0.0}})
    train(base, tmp_path / "a")
    acc = base.model_copy(deep=True)
    acc.train.accumulate = 2
    train(acc, tmp_path / "b")
    a = load_checkpoint(CheckpointStore(tmp_path / "a" / "ckpt").latest())["method"]
    b = load_checkpoint(CheckpointStore(tmp_path / "b" / "ckpt").latest())["method"]
    for n in a["denoiser"]:
        torch.testing.assert_close(a["denoiser"][n], b["denoiser"][n], rtol=1e-4, atol=1e-5)


def test_ema_halflife_in_images():
    m = build_method("edm", "cpu-tiny")
    ema = EMA(m, [1.0], rampup=None)          # 1 kimg half-life
    assert ema.beta(0, 1000, 10 ** 6) == pytest.approx(0.5)
    assert ema.beta(0, 500, 10 ** 6) == pytest.approx(0.5 ** 0.5)
    ramp = EMA(m, [1.0], rampup=0.05)
    assert ramp.beta(0, 100, 10_000) == pytest.approx(0.5 ** (100 / 500))   # 0.05 * 10k = 500 < 1000
    with torch.no_grad():
        p = m.denoiser.net.conv_in.weight
        before = ema.shadows[0]["denoiser"]["net.conv_in.weight"].clone()
        p.add_(1.0)
        ema.update(m, 1000, 10 ** 6)
        torch.testing.assert_close(ema.shadows[0]["denoiser"]["net.conv_in.weight"], before + 0.5)


def test_resume_after_finish_is_a_no_op(tmp_path):
    cfg = tiny_run_config("edm", "cpu-tiny", images=8, batch=4)
    train(cfg, tmp_path)
    s1 = load_checkpoint(CheckpointStore(tmp_path / "ckpt").latest())
    again = train(cfg, tmp_path)
    s2 = load_checkpoint(CheckpointStore(tmp_path / "ckpt").latest())
    assert again["done"] and again["images"] == 8 and state_equal(s1["method"], s2["method"])


@pytest.mark.parametrize("data,needle", [
    ({"method": "edm", "preset": "cpu-tiny", "data": {"kind": "synthetic"}, "train": {"batchsize": 4}},
     "unknown field 'train.batchsize'"),
    ({"method": "edm", "preset": "cpu-tiny", "data": {"kind": "synthetic"}, "train": {"batch": "many"}},
     "field 'train.batch'"),
    ({"method": "edm", "data": {"kind": "synthetic"}, "tarin": {}}, "unknown field 'tarin'"),
])
def test_bad_run_config_one_line(data, needle):
    with pytest.raises(ConfigError) as err:
        load_run_config(data=data)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_method_preset_and_method_field():
    with pytest.raises(ConfigError, match="unknown method 'edn'; registered: .*edm"):
        build_method("edn", "cpu-tiny")
    with pytest.raises(ConfigError, match="unknown preset 'cpu-huge' for method 'edm'; presets: cpu-tiny"):
        build_method("edm", "cpu-huge")
    with pytest.raises(ConfigError, match="unknown field 'method.sigma_dat'"):
        build_method("edm", "cpu-tiny", {"sigma_dat": 0.5})


def test_cli_reports_bad_field_in_one_line(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: edm\npreset: cpu-tiny\ndata: {kind: synthetic, resolution: 32}\n")
    p = subprocess.run([sys.executable, "-m", "bench.cli", "train", str(cfg), "train.lr=-1",
                        "--run-dir", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "train.lr" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "bench.cli", "train", str(tmp_path / "nope.yaml")], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 2 and "nope.yaml" in p.stderr and "does not exist" in p.stderr


def test_sample_cli_writes_adm_npz_and_grid(tmp_path):
    import numpy as np

    cfg = tiny_run_config("edm", "cpu-tiny-cond", images=8, batch=4)
    train(cfg, tmp_path / "run")
    out = tmp_path / "s.npz"
    p = subprocess.run([sys.executable, "-m", "bench.cli", "sample", str(tmp_path / "run"), "--seeds", "3-7",
                        "--steps", "2", "--batch", "2", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    d = np.load(out)
    assert d["arr_0"].shape == (5, 32, 32, 3) and d["arr_0"].dtype == np.uint8
    assert d["seeds"].tolist() == [3, 4, 5, 6, 7] and d["arr_1"].shape == (5,) and int(d["nfe"]) == 3
    assert (tmp_path / "s.png").is_file()
    from bench.sample import labels_for_seeds
    assert d["arr_1"].tolist() == labels_for_seeds([3, 4, 5, 6, 7], 4).tolist()


def test_text_conditional_sampling_uses_dataset_captions(tmp_path):
    import numpy as np

    from bench.sample import sample_to_npz
    cfg = tiny_run_config("edm", "cpu-tiny", images=4, batch=4,
                          overrides={"conditioning": "text", "text_dim": 8})
    train(cfg, tmp_path / "run")
    sample_to_npz(tmp_path / "run", [0, 1, 2], tmp_path / "t.npz", steps=2, device="cpu", grid=False)
    d = np.load(tmp_path / "t.npz")
    from bench.data.spec import build_dataset
    ds = build_dataset(cfg.data)
    assert d["captions"].tolist() == [ds[i]["caption"] for i in (0, 1, 2)]
    assert d["arr_0"].shape == (3, 32, 32, 3)


def test_class_count_mismatch_is_one_clear_line(tmp_path):
    cfg = tiny_run_config("edm", "cpu-tiny-cond", images=4, batch=4)      # 4 classes
    cfg.data.options = {**cfg.data.options, "num_classes": 7}
    with pytest.raises(ConfigError, match="configured for 4 classes .* dataset 'synthetic' has 7"):
        train(cfg, tmp_path)
