"""Real jobs on the single-node SLURM started by slurm/ci-slurm-up.sh (skipped only when `sinfo` is absent).

Tiny cells: synthetic 16-px data, a tiny EDM, a handful of steps. Each test uses a fresh results folder
(SLURM job ids restart at 1 on a fresh controller; stale submitit folders would answer for new jobs).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from bench.checkpoint import load_checkpoint
from bench.method import ConfigError

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(shutil.which("sinfo") is None,
                                 reason="no `sinfo`: SLURM not installed (CI starts it with slurm/ci-slurm-up.sh)")]


def suite_file(tmp_path: Path, methods: list[dict], flops: float = 5.5e9, **over) -> Path:
    suite = {
        "name": "slurmtest", "output": str(tmp_path / "results"),
        "datasets": {"s16": {"kind": "synthetic", "resolution": 16, "options": {"n": 256}}},
        "methods": methods, "seeds": [0], "budget": {"flops": flops},
        "train": {"batch": 4, "warmup_images": 8, "checkpoint_images": 8, "log_images": 4, "progress": False,
                  "threads": 1},
        "sampling": {"n": 8, "steps": [2], "batch": 4, "shards": 2}, "metrics": ["fid"],
        "executor": "slurm", "cluster": "ci", **over,
    }
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(suite))
    return p


EDM16 = {"method": "edm", "preset": "cpu-tiny", "method_config": {"resolution": 16}}


def planned_cells(path: Path):
    from bench.launch import plan_cells
    from bench.suite import expand_suite, load_suite, suite_dir

    suite = load_suite(path)
    return suite, plan_cells(expand_suite(suite), suite_dir(suite))


def sacct_times(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "Submit,Start"], capture_output=True,
                         text=True).stdout.strip().splitlines()
    return tuple(out[0].split("|")) if out else ("", "")  # type: ignore[return-value]


def test_suite_end_to_end_with_a_crashing_cell(tmp_path, capsys):
    from bench.commands.status import status
    from bench.launch import run_slurm, wait_slurm
    from bench.store import RunFolder
    from bench.suite import load_profile

    broken = {"method": "edm", "preset": "cpu-tiny", "label": "broken", "method_config": {"resolution": 16}}
    path = suite_file(tmp_path, [EDM16, broken])
    raw = yaml.safe_load(path.read_text())
    raw["methods"][0]["datasets"] = ["s16"]
    raw["methods"][1]["datasets"] = ["missing"]
    raw["datasets"]["missing"] = {"kind": "folder", "root": str(tmp_path / "no-such-folder"), "resolution": 16}
    path.write_text(yaml.safe_dump(raw))
    suite, planned = planned_cells(path)
    t0 = time.time()
    submitted = run_slurm(planned, suite.name, load_profile("ci"))
    wait_slurm(submitted, timeout_s=180)
    good, bad = (RunFolder(pc.run_dir) for pc in planned)
    assert good.status() == "done", good.error_line()
    metrics = json.loads(good.metrics_file.read_text())
    assert metrics["train"]["done"] and not metrics["spend_flagged"]
    assert [len(np_files := list((good.samples / s["tag"]).glob("*.npz"))) for s in metrics["settings"]] == [2], \
        np_files
    man = json.loads((good.path / "manifest.json").read_text())
    assert man["jobs"]["train"] and len(man["jobs"]["sample"]) == 2 and man["git"] is not None
    assert bad.status() == "failed" and "no-such-folder" in (bad.error_line() or "")
    capsys.readouterr()
    status(type("A", (), {"suite": str(path)})())
    out = capsys.readouterr().out
    assert "done" in out and "reason: train:" in out and "no-such-folder" in out
    sub, start = sacct_times(man["jobs"]["train"])
    print(f"submit->running latency of the train job: {sub} -> {start}; suite wall {time.time() - t0:.1f}s")


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpts = sorted((run_dir / "ckpt").glob("*.pt"))
    state = load_checkpoint(ckpts[-1])
    return {f"{m}.{k}": v for m, sd in state["method"].items() for k, v in sd.items()}


def _wait_for_progress(run_dir: Path, images: int, timeout: float = 90) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        log = run_dir / "log.jsonl"
        if log.is_file():
            lines = log.read_text().splitlines()
            if lines and json.loads(lines[-1]).get("images", 0) >= images:
                return
        time.sleep(0.2)
    raise TimeoutError(f"training in {run_dir} did not reach {images} images")


def test_preempted_training_resumes_to_the_same_weights(tmp_path):
    import submitit

    from bench.launch import TrainJob, prepare, train_phase

    _, (pc,) = planned_cells(suite_file(tmp_path, [EDM16], flops=1.1e11))
    assert pc.plan.steps >= 50
    rf = prepare(pc, "slurmtest")
    ex = submitit.AutoExecutor(folder=tmp_path / "jobs" / "%j", cluster="slurm", slurm_max_num_timeout=5)
    ex.update_parameters(timeout_min=10, slurm_partition="debug", cpus_per_task=1, mem_gb=1,
                         slurm_signal_delay_s=30,
                         slurm_setup=[f"export PYTHONPATH={Path(__file__).resolve().parent.parent}"])
    job = ex.submit(TrainJob(), str(rf.path))
    _wait_for_progress(rf.path, images=16)
    job._interrupt()                             # what a preemption does: USR2, checkpoint, requeue
    result = job.result()
    assert result["done"] and result["images"] == pc.plan.images
    assert "requeued_at" in rf.read_manifest()["parts"]["train"]
    # the same cell trained without interruption, in this process
    ref_dir = tmp_path / "uninterrupted"
    ref_dir.mkdir()
    shutil.copy(rf.cell_file, ref_dir / "cell.yaml")
    assert train_phase(ref_dir, progress=False)["done"]
    a, b = _final_weights(rf.path), _final_weights(ref_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_time_limit_requeues_and_finishes(tmp_path):
    """The `short` partition has MaxTime=3 min: training is sliced to it, USR2 arrives before the limit,
    the job checkpoints, is requeued and finishes."""
    from bench.launch import run_slurm, wait_slurm
    from bench.store import RunFolder
    from bench.suite import load_profile

    prof = load_profile("ci").model_copy(update={"partition": "short", "signal_delay_s": 150, "name": "ci-short"})
    # ~1,800 images (~40 s on an idle core): the first USR2 (due 30 s after start, Slurm may send it up to
    # 60 s early) always lands while training is still running.
    path = suite_file(tmp_path, [EDM16], flops=8.0e11)
    suite, planned = planned_cells(path)
    submitted = run_slurm(planned, suite.name, prof)
    sub = submitted[planned[0].cell.id]
    assert sub.jobs[0].get_info() is not None
    wait_slurm(submitted, timeout_s=200)
    rf = RunFolder(planned[0].run_dir)
    assert rf.status() == "done", rf.error_line()
    assert "requeued_at" in rf.read_manifest()["parts"]["train"]
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", sub.train, "-o", "Timelimit"], capture_output=True,
                         text=True).stdout
    assert "00:03:00" in out


def test_gpu_request_on_gpu_less_cluster_fails_clearly():
    from bench.launch import _explain_submit_error, preflight
    from bench.suite import load_profile

    with pytest.raises(ConfigError) as e:
        preflight(load_profile("ci-gpu"))
    msg = str(e.value)
    assert "ask for 1 GPU(s)" in msg and "partition 'debug' has no GPUs" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="unknown partition 'gpu'"):
        preflight(load_profile("example-a100"))
    import submitit
    ex = submitit.AutoExecutor(folder="/tmp/bench-gpu-test/%j", cluster="slurm")
    ex.update_parameters(timeout_min=1, slurm_partition="debug", gpus_per_node=1)
    with pytest.raises(Exception) as e2:
        ex.submit(print, "x")
    assert "gres" in _explain_submit_error(e2.value).lower()
