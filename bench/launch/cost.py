"""What a planned cell will cost before it runs: GPU-hours at a stated throughput, and peak memory per rank.

GPU-hours = planned training FLOPs / (sustained FLOP/s per GPU) / 3600 — training only (sampling and
evaluation are not included), at the throughput the cluster profile states (``throughput_flops``), else
the one the suite's gpu_hours budget states.

Peak memory per rank is estimated for the stage that needs most, as the sum of
  weights      every module's parameters + buffers, at their dtype (fp32: the trainer keeps fp32 masters)
  gradients    the stage's trainable parameters
  optimizer    Adam / AdamW / RAdam moments: 2 x the trainable parameters
  EMA copies   one fp32 copy of every module's state per ``train.ema_halflife_kimg`` entry (bench.ema)
  all-reduce   one flattened gradient buffer when the training job has more than one rank
  activations  the tensors autograd saves for backward, counted per example on the meta device (fp32
               graph), times the per-rank micro-batch ceil(train.batch / ranks / train.accumulate).
Left out: the CUDA context and allocator slack (typically 1-2 GiB), kernels' temporary buffers, and bf16
autocast's saving (most saved activations are bf16 on GPU, so the activation term is an upper bound).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.flops import StageCost

ADAM_MOMENTS = 2


def gpu_hours(flops: float, throughput_flops: float | None) -> float | None:
    if not throughput_flops or throughput_flops <= 0:
        return None
    return float(flops) / float(throughput_flops) / 3600.0


@dataclass(frozen=True)
class MemoryEstimate:
    stage: str
    weights: float
    gradients: float
    optimizer: float
    ema: float
    allreduce: float
    activations: float
    micro_batch: int

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.ema + self.allreduce + self.activations


def peak_memory(costs: list[StageCost], train: dict[str, Any], ranks: int = 1) -> MemoryEstimate | None:
    """The largest per-rank estimate over the stages (None when no costs were counted)."""
    if not costs:
        return None
    ranks = max(1, int(ranks))
    micro = max(1, math.ceil(int(train.get("batch", 1)) / ranks / int(train.get("accumulate", 1) or 1)))
    n_ema = len(train.get("ema_halflife_kimg") or [1])
    best = None
    for c in costs:
        grads = float(c.trainable_bytes)
        est = MemoryEstimate(c.name, float(c.state_bytes), grads, ADAM_MOMENTS * grads, n_ema * float(c.state_bytes),
                             grads if ranks > 1 else 0.0, c.activation_bytes_per_example * micro, micro)
        if best is None or est.total > best.total:
            best = est
    return best


def gib(x: float | None) -> str:
    """Bytes as G (GiB) or M (MiB), short enough for a table column."""
    if x is None:
        return "-"
    return f"{x / 2**30:.1f}G" if x >= 2**30 else f"{x / 2**20:.0f}M"
