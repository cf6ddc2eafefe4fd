"""Watching a run: TensorBoard / offline wandb logging, preview grids, `bench status` progress and plot."""
from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.io import append_jsonl
from bench.loggers import RunLoggers, scalar_tags
from bench.method import ConfigError
from bench.train import train
from helpers import state_equal, tiny_run_config



def _needs(*mods: str):
    """The extras are in the `test` extra (CI has them); without them only these tests are skipped."""
    missing = [m for m in mods if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs pip install 'pixel-diffusion-bench[{','.join(missing)}]'")


# EDM cpu-tiny, 4 images a step; 2 sampler steps keep each preview cheap.
WATCH = dict(images=24, batch=4, log_images=4, checkpoint_images=8, preview_images=8, preview_grid=4,
             preview_steps=2, threads=1)


def _cfg(**kw):
    return tiny_run_config("edm", "cpu-tiny", **{**WATCH, **kw})


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def _tb(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def _wandb_history(run: Path) -> list[tuple[int, dict]]:
    """(step, {key: value}) of every history row in every offline-run file of the run, in file order.

    The .wandb file is a LevelDB-style log (7-byte header; 32 KiB blocks of records with a 7-byte
    crc/length/type header; types 1 full, 2 first, 3 middle, 4 last) of wandb's protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        data, pos, buf = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:          # a block's tail too short for a header is padding
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            buf += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):
                rec = pb.Record()
                rec.ParseFromString(buf)
                buf = b""
                if rec.WhichOneof("record_type") == "history":
                    rows.append((rec.history.step.num, {(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                                        for i in rec.history.item}))
    return rows


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_scalar_tags_per_stage_and_progress():
    rec = {"images": 8, "stage": "base", "stage_images": 8, "lr": 1e-3, "loss": torch.tensor(0.5),
           "img_per_s": 10, "flops": 2e9, "time": 1.7e9, "note": "x"}
    assert scalar_tags(rec) == {"progress/stage_images": 8.0, "base/lr": 1e-3, "base/loss": 0.5,
                                "base/img_per_s": 10.0, "progress/flops": 2e9}


@_needs("tensorboard")
def test_tensorboard_run_writes_readable_events(tmp_path):
    run = tmp_path / "tb"
    train(_cfg(loggers=["tensorboard"]), run)
    log, ea = _log(run), _tb(run)
    loss = ea.Scalars("main/loss")
    assert [e.step for e in loss] == [r["images"] for r in log] == [4, 8, 12, 16, 20, 24]
    # float32 in the event file: equal to log.jsonl's float64 within float32 rounding
    assert np.allclose([e.value for e in loss], [r["loss"] for r in log], rtol=2 ** -23, atol=0)
    assert [e.step for e in ea.Scalars("progress/flops")] == [4, 8, 12, 16, 20, 24]
    assert np.allclose([e.value for e in ea.Scalars("progress/flops")], [r["flops"] for r in log], rtol=2 ** -23)
    tags = set(ea.Tags()["scalars"])
    assert {"main/lr", "main/img_per_s", "progress/stage_images", "progress/preview_seconds"} <= tags
    imgs = ea.Images("preview")
    assert [e.step for e in imgs] == [8, 16, 24]
    # the logged image is the PNG written in the run folder (a 2 x 2 grid of the 4 preview seeds)
    import io
    for e in imgs:
        sent = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))
        assert np.array_equal(sent, _pixels(run / "previews" / f"preview-{e.step:012d}.png"))
    r = _cfg().data.resolution
    assert _pixels(run / "previews" / "preview-000000000008.png").shape == (2 * r, 2 * r, 3)


@_needs("wandb")
def test_wandb_offline_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)         # offline is the default, no account needed
    run = tmp_path / "wb"
    train(_cfg(loggers=["wandb"]), run)
    state = json.loads((run / "wandb" / "bench-run.json").read_text())
    assert state["last_step"] == 24
    folders = list((run / "wandb").glob(f"offline-run-*-{state['id']}"))
    assert len(folders) == 1
    rows = _wandb_history(run)
    log = {r["images"]: r for r in _log(run)}
    assert [s for s, _ in rows] == [4, 8, 12, 16, 20, 24]
    for step, row in rows:
        assert row["images"] == step and row["main/loss"] == pytest.approx(log[step]["loss"], rel=1e-12)
        assert (row.get("preview/_type") == "image-file") == (step % 8 == 0)
        if step % 8 == 0:
            assert row["preview/width"] == 2 * _cfg().data.resolution


@_needs("tensorboard", "wandb")
def test_resume_after_requeue_is_exact_and_logger_steps_monotonic(tmp_path, monkeypatch):
    """Stop at 20 images and lose the last checkpoint (a preemption between checkpoints): the resumed
    run restarts at 16, trains 20 again and must neither duplicate nor rewind a step in any sink."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = _cfg(loggers=["tensorboard", "wandb"], preview_images=4)
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(cfg, full)
    first = train(cfg, cut, stop_after_images=20)
    assert not first["done"] and (cut / "ckpt" / "ckpt-000000000020.pt").is_file()
    (cut / "ckpt" / "ckpt-000000000020.pt").unlink()          # resume from 16
    assert train(cfg, cut)["done"]

    a = torch.load(full / "ckpt" / "ckpt-000000000024.pt", weights_only=False)
    b = torch.load(cut / "ckpt" / "ckpt-000000000024.pt", weights_only=False)
    assert state_equal(a["method"], b["method"])
    assert all(state_equal(x, y) for x, y in zip(a["ema"]["shadows"], b["ema"]["shadows"]))

    names = sorted(p.name for p in (full / "previews").glob("*.png"))
    assert names == [f"preview-{i:012d}.png" for i in (4, 8, 12, 16, 20, 24)]
    assert sorted(p.name for p in (cut / "previews").glob("*.png")) == names
    for n in names:
        assert np.array_equal(_pixels(full / "previews" / n), _pixels(cut / "previews" / n)), n

    ea_full, ea_cut = _tb(full), _tb(cut)
    for tag in ("main/loss", "progress/flops"):
        steps = [e.step for e in ea_cut.Scalars(tag)]
        assert steps == [4, 8, 12, 16, 20, 24], (tag, steps)
        assert [e.value for e in ea_cut.Scalars(tag)] == [e.value for e in ea_full.Scalars(tag)]
    assert [e.step for e in ea_cut.Images("preview")] == [4, 8, 12, 16, 20, 24]

    rows = _wandb_history(cut)
    assert len(list((cut / "wandb").glob("offline-run-*"))) == 2         # one per process, one run id
    steps = [s for s, _ in rows]
    assert steps == [4, 8, 12, 16, 20, 24], steps
    preview_steps = [s for s, r in rows if "preview/_type" in r]
    assert preview_steps == [4, 8, 12, 16, 20, 24]


def test_previews_do_not_change_training(tmp_path):
    plain, watched = tmp_path / "plain", tmp_path / "watched"
    train(_cfg(preview_images=None, images=12), plain)
    train(_cfg(preview_images=4, images=12), watched)
    a = torch.load(plain / "ckpt" / "ckpt-000000000012.pt", weights_only=False)
    b = torch.load(watched / "ckpt" / "ckpt-000000000012.pt", weights_only=False)
    assert state_equal(a["method"], b["method"]) and torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert not (plain / "previews").exists() and len(list((watched / "previews").glob("*.png"))) == 3
    # the same seeds every time: a grid is a function of the EMA weights alone
    assert [r["images"] for r in map(json.loads, (watched / "previews" / "log.jsonl").read_text().splitlines())] \
        == [4, 8, 12]


def test_missing_extra_is_one_line_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # import raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'pixel-diffusion-bench\[tensorboard\]'"):
        RunLoggers(tmp_path, _cfg(loggers=["tensorboard"]), rank=0)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"pixel-diffusion-bench\[wandb\]"):
        RunLoggers(tmp_path, _cfg(loggers=["wandb"]), rank=1)     # every rank checks


def test_unknown_logger_names_the_field():
    with pytest.raises(ConfigError, match=r"train\.loggers.*unknown logger 'tb'.*jsonl, tensorboard, wandb"):
        _cfg(loggers=["tb"])
    assert _cfg(loggers=["wandb", "tensorboard", "wandb"]).train.loggers == ["jsonl", "tensorboard", "wandb"]


@_needs("tensorboard", "wandb")
def test_other_ranks_write_nothing(tmp_path):
    lg = RunLoggers(tmp_path, _cfg(loggers=["tensorboard", "wandb"]), rank=1)
    lg.scalars({"images": 4, "stage": "main", "loss": 1.0})
    lg.preview(None, None, 8)
    lg.close()
    assert list(tmp_path.iterdir()) == []


def _fake_cell(root: Path, name: str, state: str, total: int, records: list[dict]) -> Path:
    import yaml

    d = root / name
    d.mkdir(parents=True)
    (d / "cell.yaml").write_text(yaml.safe_dump({"label": name, "run": {"stage_images": [total // 2, total // 2]}}))
    (d / "status").write_text(state + "\n")
    for r in records:
        append_jsonl(d / "log.jsonl", r)
    return d


def test_read_log_resolves_requeue_rewinds(tmp_path):
    from bench.progress import read_log

    p = tmp_path / "log.jsonl"
    for i, pid in ((4, 1), (8, 1), (12, 1), (8, 2), (12, 2), (16, 2)):   # process 2 restarted from 4
        append_jsonl(p, {"images": i, "loss": float(i), "pid": pid})
    with p.open("a") as f:
        f.write('{"images": 2')                         # a line being written
    assert [(r["images"], r["pid"]) for r in read_log(p)] == [(4, 1), (8, 2), (12, 2), (16, 2)]


def test_status_shows_loss_rate_eta_and_plots(tmp_path, capsys):
    from bench.commands.status import status
    from bench.progress import format_eta

    recs = [{"images": i, "stage": "base" if i <= 400 else "nest", "loss": 1.0 / i, "img_per_s": 50.0}
            for i in range(100, 700, 100)]
    _fake_cell(tmp_path, "a-running", "training", 1600, recs)
    _fake_cell(tmp_path, "b-done", "done", 600, recs)
    _fake_cell(tmp_path, "c-pending", "pending", 600, [])
    out_png = tmp_path / "plots" / "loss.png"
    assert status(type("A", (), {"suite": str(tmp_path), "plot": str(out_png)})()) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    run = lines["a-running"]
    # 600 of 1600 images done at 50 img/s: 1000 / 50 = 20 s left
    assert "600/1600 img (38%)" in run and "loss 0.001667" in run and "50.0 img/s" in run
    assert f"train ETA {format_eta(20.0)}" in run and format_eta(20.0) == "0:00:20"
    assert "loss 0.001667" in lines["b-done"] and "img/s" not in lines["b-done"]
    assert "loss" not in lines["c-pending"]
    img = Image.open(out_png)
    assert img.format == "PNG" and img.size[0] > 300
    assert format_eta(3 * 3600 + 5 * 60 + 7.4) == "3:05:07" and format_eta(None) == "-"
