"""FLOP counting without real tensors (bench.flops): the meta-device plan equals a real forward + backward
on every adapter's cpu-tiny preset, attention is counted on every kernel, frozen modules take no
gradients, and the cache is keyed by the resolved method config."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import sdpa_flop_count

from bench.compute import FlopCache
from bench.flops import COUNTER_VERSION, flop_counter, planned_flops, stage_costs, training_flops
from bench.method import build_method, load_all

TINY = sorted(n for n, c in load_all().items() if "cpu-tiny" in c.presets)


@pytest.mark.parametrize("name", TINY)
def test_meta_plan_equals_a_real_forward_and_backward(name):
    torch.manual_seed(0)
    costs = stage_costs(name, "cpu-tiny", {})                 # meta device, forward only
    m = build_method(name, "cpu-tiny")                         # real CPU tensors, forward + backward
    real = []
    for stage in m.stages():
        if stage.enter:
            stage.enter()
        real.append(training_flops(m, stage))
    assert [c.name for c in costs] == [s.name for s in m.stages()]
    # integer FLOP totals divided by the same batch size: equal exactly, not approximately
    assert [c.flops_per_example for c in costs] == real
    assert all(c.flops_per_example > 0 and c.state_bytes > 0 and c.activation_bytes_per_example > 0 for c in costs)
    assert all(not p.is_meta for mod in m.modules().values() for p in mod.parameters())


def test_real_forward_counter_equals_torch_backward_on_cpu():
    """The forward-only rule (planned_flops) on real tensors equals torch's forward + backward count."""
    m = build_method("simple", "cpu-tiny")                     # convolutions, attention, linear layers
    stage = m.stages()[0]
    assert planned_flops(m, stage)[0] == training_flops(m, stage)


def test_attention_is_counted_on_the_cpu_kernel():
    q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))
    with flop_counter() as c:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    fwd = sdpa_flop_count(q.shape, k.shape, v.shape)           # 2 x (2*16*16*8) per head and example
    assert fwd == 2 * (2 * 4 * 16 * 16 * 8 * 2)
    assert c.get_total_flops() == 3 * fwd                      # forward + 4 backward matmuls of those sizes


def test_frozen_modules_take_no_weight_gradients():
    m = build_method("greedy", "cpu-tiny")
    m.grow()
    _, b1, b2 = m.stages()
    assert training_flops(m, b1) < training_flops(m, b2)       # B1: core frozen
    assert all(p.requires_grad for p in m.core.parameters())   # restored afterwards
    assert all(p.grad is None for mod in m.modules().values() for p in mod.parameters())


def test_cache_is_keyed_by_the_resolved_config(tmp_path):
    path = tmp_path / "c.json"
    calls = []

    def count():
        calls.append(1)
        return stage_costs("edm", "cpu-tiny", {"resolution": 16})

    cache = FlopCache(path)
    first = cache.costs("edm", "cpu-tiny", {"resolution": 16}, count)
    # the same resolved config spelled differently shares the entry; a changed field does not
    assert cache.costs("edm", "cpu-tiny", {"resolution": 16, "steps": 18}, count) == first      # 18 = preset's
    assert cache.costs("edm", None, {"resolution": 16, "unet": "cpu-tiny"}, count) == first    # = the preset
    assert len(calls) == 1
    cache.costs("edm", "cpu-tiny", {"resolution": 16, "sigma_data": 0.6}, count)
    assert len(calls) == 2
    assert FlopCache(path).costs("edm", "cpu-tiny", {"resolution": 16}, count) == first and len(calls) == 2
    raw = json.loads(path.read_text())
    assert all(v["version"] == COUNTER_VERSION for v in raw.values())
    for v in raw.values():
        v["version"] = COUNTER_VERSION - 1                     # another counter: never read back
    path.write_text(json.dumps(raw))
    FlopCache(path).costs("edm", "cpu-tiny", {"resolution": 16}, count)
    assert len(calls) == 3
    path.write_text("{not json")
    assert FlopCache(path).costs("edm", "cpu-tiny", {"resolution": 16}, count) == first   # unreadable: recount
