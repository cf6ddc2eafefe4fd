"""Files from users never run code: checkpoints and weight files load weights-only, YAML through the safe
loader, npz without pickles; a refused file is one line naming it (exit 2 in the CLI)."""
from __future__ import annotations

import argparse
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.checkpoint import CheckpointStore, load_checkpoint, trust_checkpoints
from bench.cli import main
from bench.commands import add_trust_checkpoint
from bench.config import dump_run_config
from bench.method import ConfigError
from bench.safeload import UnsafeFileError
from bench.train import train
from helpers import tiny_run_config


class Payload:
    """Unpickling this calls os.system (returns 0): the marker file appears iff the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _cfg():
    return tiny_run_config("edm", "cpu-tiny", images=8, batch=4, checkpoint_images=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run folder written by the current trainer: stopped after 4 of 8 images (so it can be resumed)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    out = train(_cfg(), run, stop_after_images=4)
    assert not out["done"]
    return run


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def _plant(run: Path, marker: Path) -> Path:
    """Add a checkpoint newer than the run's, holding the real state plus a code-running object."""
    store = CheckpointStore(run / "ckpt", keep=100)
    state = torch.load(store.latest(), weights_only=True)
    state["extra"] = Payload(marker)
    path = run / "ckpt" / "ckpt-999999999999.pt"
    torch.save(state, path)
    assert store.latest() == path
    return path


def _one_error_line(err: str, path: Path) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert str(path) in lines[0]
    return lines[0]


# ---- the current format is weights-only -----------------------------------------------------------
def test_trainer_checkpoints_resume_and_sample_weights_only(trained, tmp_path, monkeypatch, capsys):
    run = _copy(trained, tmp_path / "run")
    for _, p in CheckpointStore(run / "ckpt").list():      # the raw format, without our wrapper
        state = torch.load(p, weights_only=True)
        assert set(state) == {"method", "ema", "optimizer", "stage_idx", "stage_images", "images", "flops", "rng"}
    calls: list[bool] = []
    real = torch.load

    def spy(*a, **kw):
        calls.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    out = train(_cfg(), run)                               # resumes from the 4-image checkpoint
    assert out["done"] and out["images"] == 8
    assert main(["sample", str(run), "--n", "2", "--batch", "2", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz", allow_pickle=False)["arr_0"].shape[0] == 2
    assert calls and all(c is True for c in calls), f"torch.load weights_only per call: {calls}"


# ---- a checkpoint whose pickle runs code --------------------------------------------------------
def test_store_refuses_code_and_names_the_file(trained, tmp_path):
    run, marker = _copy(trained, tmp_path / "run"), tmp_path / "PWNED"
    path = _plant(run, marker)
    with pytest.raises(UnsafeFileError) as info:
        CheckpointStore(run / "ckpt").load_latest()
    msg = _one_error_line(str(info.value), path)
    assert "--trust-checkpoint" in msg and "tensors" in msg and "global posix.system" in msg
    with pytest.raises(UnsafeFileError):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["sample", "train", "eval"])
def test_cli_refuses_code_checkpoint_with_exit_2(command, trained, tmp_path, capsys, request):
    run, marker = _copy(trained, tmp_path / "run"), tmp_path / "PWNED"
    path = _plant(run, marker)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(dump_run_config(_cfg()))
    if command == "sample":
        argv = ["sample", str(run), "--n", "1", "--device", "cpu"]
    elif command == "train":
        argv = ["train", str(cfg), "--run-dir", str(run)]
    else:                                                  # IS needs no reference, only the asset folder
        assets = request.getfixturevalue("metric_assets").root
        argv = ["eval", str(run), "--seeds", "0-1", "--metrics", "is", "--assets", str(assets), "--device", "cpu",
                "--no-progress", "--out", str(tmp_path / "m.json")]
    capsys.readouterr()
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, path)
    assert line.startswith(f"bench {command}: error: checkpoint ") and "--trust-checkpoint" in line
    assert not marker.exists()


def test_trust_checkpoint_flag_reads_with_full_pickle(trained, tmp_path):
    """The flag does what its help says: the file is unpickled as is (so its code runs)."""
    run, marker = _copy(trained, tmp_path / "run"), tmp_path / "RAN"
    _plant(run, marker)
    assert main(["sample", str(run), "--n", "1", "--steps", "2", "--device", "cpu", "--trust-checkpoint",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert marker.exists()
    marker.unlink()
    with trust_checkpoints():
        assert CheckpointStore(run / "ckpt").load_latest()["images"] == 4
    assert marker.exists()
    with pytest.raises(UnsafeFileError):                   # the trust ends with its block
        CheckpointStore(run / "ckpt").load_latest()
    p = argparse.ArgumentParser()                          # its help says what it allows
    add_trust_checkpoint(p)
    assert "arbitrary code" in p.format_help()


def test_slurm_jobs_keep_the_trust_flag_through_pickling():
    from bench.launch import EvaluateJob, SampleJob, TrainJob

    for cls in (TrainJob, SampleJob, EvaluateJob):
        assert pickle.loads(pickle.dumps(cls(True))).trust is True
        assert pickle.loads(pickle.dumps(cls())).trust is False


# ---- other torch files a user supplies -----------------------------------------------------------
def _evil_file(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "x": Payload(marker)}, path)
    return path


def _load_extractor(p):
    from bench.metrics.trained import TrainedExtractor
    TrainedExtractor.load(p, "trained", "trained:x")


def _load_vae(p):
    from bench.consistency.latents import load_sd_vae_encoder
    load_sd_vae_encoder(p)


def _load_inception(p):
    from bench.metrics.inception import InceptionExtractor
    InceptionExtractor(p, "inception:x", None)


def _load_plain_pickle_checkpoint(p):
    p.write_bytes(pickle.dumps({"x": Payload(Path(str(p) + ".marker"))}))   # not even a torch file
    load_checkpoint(p)


@pytest.mark.parametrize("loader", [_load_extractor, _load_vae, _load_inception, _load_plain_pickle_checkpoint])
def test_weight_files_refuse_code(loader, tmp_path):
    marker = tmp_path / "PWNED"
    path = _evil_file(tmp_path / "w.pt", marker)
    with pytest.raises(UnsafeFileError) as info:
        loader(path)
    _one_error_line(str(info.value), path)
    assert not marker.exists() and not Path(str(path) + ".marker").exists()


def test_caption_cache_with_code_is_rebuilt_not_run(tmp_path, capsys):
    from bench.data.text import CaptionCache

    cache = CaptionCache(tmp_path, "ds", "enc")
    marker = tmp_path / "PWNED"
    _evil_file(cache.path, marker)
    assert cache._load() == ([], None)
    warning = capsys.readouterr().out
    assert str(cache.path) in warning and len(warning.strip().splitlines()) == 1
    assert not marker.exists()


# ---- YAML and npz --------------------------------------------------------------------------------
def _tagged_yaml(marker: Path) -> str:
    return f"method: !!python/object/apply:os.system ['touch {marker}']\npreset: cpu-tiny\n"


@pytest.mark.parametrize("kind", ["run config", "suite", "run folder config", "cell", "override"])
def test_yaml_python_tags_are_refused_in_one_line(kind, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    f = tmp_path / "x.yaml"
    f.write_text(_tagged_yaml(marker))
    capsys.readouterr()
    if kind == "run config":
        assert main(["train", str(f), "--run-dir", str(tmp_path / "run")]) == 2
        _one_error_line(capsys.readouterr().err, f)
    elif kind == "suite":
        assert main(["run", str(f), "--dry-run"]) == 2
        _one_error_line(capsys.readouterr().err, f)
    elif kind == "run folder config":
        (tmp_path / "run").mkdir()
        f = tmp_path / "run" / "config.yaml"
        f.write_text(_tagged_yaml(marker))
        assert main(["sample", str(tmp_path / "run"), "--n", "1"]) == 2
        _one_error_line(capsys.readouterr().err, f)
    elif kind == "cell":
        from bench.store import RunFolder
        rf = RunFolder(tmp_path / "cell")
        rf.path.mkdir()
        rf.cell_file.write_text(_tagged_yaml(marker))
        with pytest.raises(ConfigError) as info:
            rf.read_cell()
        _one_error_line(str(info.value), rf.cell_file)
    else:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(dump_run_config(_cfg()))
        assert main(["train", str(cfg), f"seed=!!python/object/apply:os.system ['touch {marker}']"]) == 2
        assert "override 'seed'" in capsys.readouterr().err
    assert not marker.exists()


def test_npz_object_arrays_are_refused(tmp_path):
    from bench.metrics.sources import iter_npz

    marker = tmp_path / "PWNED"
    obj = np.empty(2, dtype=object)
    obj[:] = [Payload(marker), Payload(marker)]
    images = np.zeros((2, 8, 8, 3), np.uint8)
    bad_images, bad_captions = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(bad_images, arr_0=obj)
    np.savez(bad_captions, arr_0=images, captions=obj)
    for p in (bad_images, bad_captions):
        with pytest.raises(ConfigError) as info:
            list(iter_npz(p))
        _one_error_line(str(info.value), p)
    assert not marker.exists()
