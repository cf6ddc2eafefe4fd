"""`bench perf trainer` and `bench perf gpu` run end to end on the CPU and write every promised number."""
from __future__ import annotations

import json

import pytest

from bench.cli import main


@pytest.mark.slow
def test_perf_trainer_json_has_every_field(tmp_path):
    out = tmp_path / "perf.json"
    rc = main(["perf", "trainer", "--steps", "2", "--repeats", "1", "--breakdown-steps", "1", "--batch", "8",
               "--scaling-steps", "2", "--quiet", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    for key in ("overhead", "img_per_s", "breakdown_ms", "scalar_reads_per_step", "scaling_2_ranks",
                "peak_memory_bytes", "flops_per_image", "mfu"):
        assert key in r, key
    assert set(r["breakdown_ms"]) == {"data", "forward_backward", "grad_sync", "optimizer", "ema"}
    assert all(v >= 0 for v in r["breakdown_ms"].values())
    assert r["scalar_reads_per_step"] == 0 and r["scalar_reads_per_sync_step"] >= 1
    assert 0 < r["scaling_2_ranks"] < 2 and r["img_per_s"] > 0 and r["flops_per_image"] > 0
    assert r["mfu"] is None and r["peak_flops"] is None          # CPU: no peak, no MFU


def test_perf_gpu_runs_the_cpu_presets_and_says_so(tmp_path):
    out = tmp_path / "gpu.json"
    rc = main(["perf", "gpu", "--methods", "edm,greedy", "--steps", "1", "--warmup", "0", f"--json={out}"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["gpu"] is False and "not GPU numbers" in r["note"]
    assert [x["method"] for x in r["results"]] == ["edm", "greedy"]
    for x in r["results"]:
        assert "error" not in x, x
        assert x["preset"] == "cpu-tiny" and x["img_per_s"] > 0 and x["flops_per_image"] > 0 and x["mfu"] is None
