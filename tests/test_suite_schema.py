"""Suite schema, expansion into cells, stable ids, matched-compute planning and one-line errors."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from bench.compute import FlopCache, spend_check, split_budget
from bench.launch import plan_cells
from bench.method import ConfigError
from bench.suite import expand_suite, load_profile, load_suite, shard_seeds

REPO = Path(__file__).resolve().parent.parent
FAKE_FLOPS = [("main", 1.0, 1.0e6)]


def write(tmp_path: Path, **over) -> Path:
    suite = {
        "name": "t", "output": str(tmp_path / "results"),
        "datasets": {"s16": {"kind": "synthetic", "resolution": 16, "options": {"n": 64}}},
        "methods": [{"method": "edm", "preset": "cpu-tiny", "method_config": {"resolution": 16}}],
        "train": {"batch": 4}, "seeds": [0], "budget": {"flops": 1.0e8},
        "sampling": {"n": 8, "batch": 4, "shards": 2}, "metrics": ["fid"],
    }
    for k, v in over.items():
        if v is None:
            suite.pop(k, None)
        else:
            suite[k] = v
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(suite))
    return p


def cache_with(stages=FAKE_FLOPS) -> FlopCache:
    from bench.flops import StageCost

    c = FlopCache()
    c.costs = lambda *a, **k: [StageCost(*s) for s in stages]  # type: ignore[method-assign]
    return c


def test_grid_zip_seeds_expand_and_ids_are_stable(tmp_path):
    p = write(tmp_path, seeds=[0, 1], sweep={"grid": {"train.lr": [1e-4, 2e-4, 3e-4]},
                                              "zip": {"sampling.steps": [[4], [8]], "budget.flops": [1e8, 2e8]}})
    cells = expand_suite(load_suite(p))
    assert len(cells) == 3 * 2 * 2
    assert len({c.id for c in cells}) == len(cells)
    assert {c.run["train"]["lr"] for c in cells} == {1e-4, 2e-4, 3e-4}
    assert {(c.sampling["steps"][0], c.budget["flops"]) for c in cells} == {(4, 1e8), (8, 2e8)}
    again = expand_suite(load_suite(p))
    assert [c.id for c in cells] == [c.id for c in again]
    # execution-only fields do not change ids; a real change does
    q = write(tmp_path, seeds=[0, 1], train={"batch": 4, "progress": False},
              sweep={"grid": {"train.lr": [1e-4, 2e-4, 3e-4]},
                     "zip": {"sampling.steps": [[4], [8]], "budget.flops": [1e8, 2e8]}})
    assert [c.id for c in expand_suite(load_suite(q))] == [c.id for c in cells]
    r = write(tmp_path, train={"batch": 8})
    assert expand_suite(load_suite(r))[0].id not in {c.id for c in cells}


def test_all_expands_to_every_registered_generative_method(tmp_path):
    from bench.method import load_all

    p = write(tmp_path, methods=[{"method": "all", "preset": "cpu-tiny", "if_missing_preset": "skip"}],
              datasets={"s32": {"kind": "synthetic", "resolution": 32}})
    skipped: list[str] = []
    cells = expand_suite(load_suite(p), skipped)
    generators = {n: c for n, c in load_all().items() if c.generative}
    with_preset = {n for n, c in generators.items() if "cpu-tiny" in c.presets}
    assert {c.method for c in cells} == with_preset
    assert len(skipped) == len(generators) - len(with_preset)
    assert "cdec" not in {c.method for c in cells}     # a decoder, not a generator


def test_matched_budget_split_and_spend_flag():
    plan = split_budget(1.0e9, [("a", 0.25, 1.0e5), ("b", 0.75, 3.0e5)], batch=10)
    assert [s.images for s in plan.stages] == [2500, 2500]
    assert [s.steps for s in plan.stages] == [250, 250]
    assert abs(plan.planned_flops - 1.0e9) / 1.0e9 < 0.02
    assert plan.stages[0].macs_per_example == 0.5e5
    assert spend_check(1.0e9, 1.01e9)["spend_flagged"] is False
    assert spend_check(1.0e9, 1.03e9)["spend_flagged"] is True


def test_plan_writes_stage_images_into_run_config(tmp_path):
    cells = expand_suite(load_suite(write(tmp_path)))
    planned = plan_cells(cells, tmp_path, cache_with())
    cfg = planned[0].cell.run_config()
    assert cfg.stage_images == [100] and cfg.train.images == 100       # 1e8 / 1e6, whole batches of 4
    assert planned[0].plan.planned_flops == 1.0e8


@pytest.mark.parametrize("over, needle", [
    ({"budgte": {"flops": 1}}, "unknown field 'budgte'"),
    ({"methods": [{"method": "edmm"}]}, "unknown method 'edmm'"),
    ({"methods": [{"method": "edm", "preset": "huge"}]}, "unknown preset 'huge'"),
    ({"train": {"batch": 4, "lrr": 1}}, "train.lrr"),
    ({"methods": [{"method": "edm", "preset": "cpu-tiny", "method_config": {"resolution": 16, "sigma_dta": 1}}]},
     "sigma_dta"),
    ({"sweep": {"grid": {"trian.lr": [1]}}}, "sweep key 'trian.lr'"),
    ({"budget": {"gpu_hours": 3}}, "throughput_flops"),
    ({"methods": [{"method": "edm", "preset": "cpu-tiny"}]}, "resolution 32 != dataset"),
])
def test_bad_input_is_one_clear_line(tmp_path, over, needle):
    with pytest.raises(ConfigError) as e:
        expand_suite(load_suite(write(tmp_path, **over)))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_budget_too_small_for_one_step(tmp_path):
    cells = expand_suite(load_suite(write(tmp_path, budget={"flops": 1.0e6})))
    with pytest.raises(ConfigError, match="too small for one step"):
        plan_cells(cells, tmp_path, cache_with())


def test_unknown_cluster_profile():
    with pytest.raises(ConfigError, match="unknown cluster profile 'nope'.*profiles in slurm/: .*ci"):
        load_profile("nope")
    assert load_profile("ci").partition == "debug"
    assert load_profile(REPO / "slurm" / "example-a100.yaml").train.gpus_per_node == 8


def test_shards_partition_the_seeds():
    s = {"n": 10, "shards": 3, "seed_start": 100}
    seeds = [x for k in range(3) for x in shard_seeds(s, k)]
    assert seeds == list(range(100, 110))


def test_shipped_suites_parse():
    for p in sorted((REPO / "suites").glob("*.yaml")):
        suite = load_suite(p)
        assert suite.methods and suite.datasets, p


def test_dry_run_of_200_cells_plans_in_under_5s(tmp_path, capsys):
    """Cold cache: the FLOPs are counted (meta device) inside the timed call, once for the one architecture."""
    from bench.cli import main

    p = write(tmp_path, seeds=list(range(10)), budget={"flops": 1.0e12},
              sweep={"grid": {"train.lr": [1e-4, 2e-4, 3e-4, 4e-4, 5e-4], "train.ema_halflife_kimg": [[1], [2]],
                              "sampling.guidance": [[1.0], [2.0]]}})
    main(["methods"])                       # imports the adapters and torch's meta kernels outside the timing
    capsys.readouterr()
    assert not (tmp_path / "results" / "t" / ".flops_cache.json").exists()
    t0 = time.perf_counter()
    assert main(["run", str(p), "--dry-run"]) == 0
    dt = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "planned 200 cells" in out and out.count("main: ") == 200
    assert (tmp_path / "results" / "t" / ".flops_cache.json").is_file()
    assert "mem/rank" in out
    assert dt < 5.0, f"dry run of 200 cells took {dt:.2f}s"
