"""Counting what training a stage costs: FLOPs per example, and the bytes it holds.

FLOPs follow torch.utils.flop_counter (a multiply-add = 2 FLOPs) for one loss forward + backward on
``method.flops_batch(stage)`` examples, with the trainer's frozen set frozen (no weight gradients for
frozen modules) and its train / eval modes. Two ways, one number:

- ``training_flops(method, stage)``: on a live method, real tensors on its device, torch's counter over a
  real forward + backward (the trainer);
- ``stage_costs(name, preset, config)``: planning, on a twin built on torch's meta device (shapes only, no
  memory, no arithmetic). Only the loss *forward* runs; each matmul / convolution / attention adds the
  backward torch would count, read off which operands require gradients (``_ForwardCounter``). A
  paper-scale preset is counted in about a second on a CPU.

What keeps the two equal (tests/test_flops.py checks it exactly on every adapter's cpu-tiny preset):
- attention: torch counts its fused kernels differently (the CPU flash kernel not at all, the GPU ones
  with the backward's recompute) and the meta device runs the math path. Every variant is counted here as
  the math path does (forward QKᵀ and AV; backward four matmuls of those sizes): the algorithm's FLOPs,
  the same on every device and kernel;
- host reads: losses read values on the host (logging ``float(x.mean())``, range checks). A meta tensor
  has no value, so reads are answered with a stand-in (NaN / 0 / False) that only feeds logs and checks.
  A loss whose control flow depended on tensor values would count differently on meta; the test would
  see it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (FlopCounterMode, conv_backward_flop, flop_registry, sdpa_flop_count,
                                      shape_wrapper)

from bench.diffusion.rng import StackedRandom

COUNTER_VERSION = 2        # bump when counting changes, so cached counts are not reused
FLOPS_PER_MAC = 2          # torch's FlopCounterMode counts a multiply-add as 2 FLOPs

aten = torch.ops.aten


def _attention_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                        **kwargs) -> int:
    # dQ, dK, dV and dP: four matmuls of the forward's two sizes (no recompute: an implementation choice)
    return 2 * sdpa_flop_count(query_shape, key_shape, value_shape)


_FORWARD_KERNELS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")


def _attention_mapping() -> dict[Any, Any]:
    out = {}
    for name in _FORWARD_KERNELS:
        for op, fn in ((name, _attention_forward), (f"{name}_backward", _attention_backward)):
            packet = getattr(aten, op, None)
            if packet is not None:
                out[packet] = fn
    return out


def _attention_forwards() -> set[Any]:
    return {getattr(aten, name) for name in _FORWARD_KERNELS if hasattr(aten, name)}


def flop_counter() -> FlopCounterMode:
    """torch's counter, with every attention kernel counted as the math path counts it."""
    return FlopCounterMode(display=False, custom_mapping=_attention_mapping())


def _stand_in(t: torch.Tensor) -> Any:
    return False if t.dtype == torch.bool else (math.nan if t.dtype.is_floating_point or t.dtype.is_complex else 0)


class _HostReads(TorchDispatchMode):
    """Answers host reads of meta tensors (``.item()``, ``float(t)``, ``bool(t)``) with a stand-in."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is aten._local_scalar_dense.default and args[0].device.type == "meta":
            return _stand_in(args[0])
        return func(*args, **(kwargs or {}))


def _norm_stats(x: torch.Tensor, kept: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:kept], *([1] * (x.dim() - kept))))


# Output shapes of the ops that take most of the planning time, where torch's meta kernel is a Python
# decomposition (group norm ~40 % of a UNet's count, addmm / layer norm most of a ViT's). Only shapes
# matter on meta, and no backward runs there; the contract test checks the counts against real runs.
_SHAPES_ONLY: dict[Any, Callable[..., Any]] = {
    aten.native_group_norm.default:
        lambda x, w, b, n, c, hw, groups, eps: (torch.empty_like(x), x.new_empty((n, groups)), x.new_empty((n, groups))),
    aten.native_layer_norm.default:
        lambda x, shape, w, b, eps: (torch.empty_like(x), _norm_stats(x, x.dim() - len(shape)),
                                     _norm_stats(x, x.dim() - len(shape))),
    aten.addmm.default: lambda bias, a, b, **kw: a.new_empty((a.shape[0], b.shape[1])),
    aten.mm.default: lambda a, b: a.new_empty((a.shape[0], b.shape[1])),
    aten.bmm.default: lambda a, b: a.new_empty((a.shape[0], a.shape[1], b.shape[2])),
    aten._safe_softmax.default: lambda x, dim, dtype=None: torch.empty_like(x, dtype=dtype or x.dtype),
}

_MATMULS = {aten.mm: (0, 1), aten.addmm: (1, 2), aten.bmm: (0, 1), aten.baddbmm: (1, 2)}   # operand positions


class _ForwardCounter(TorchDispatchMode):
    """Training FLOPs from the forward pass alone (planning on the meta device, where the backward's
    decomposed kernels cost most of the time). Each counted op adds its forward FLOPs and what its backward
    will cost, read off which operands require gradients at that moment:

    - a matmul (mm, addmm, bmm, baddbmm): one matmul of the same size per operand that requires grad;
    - a convolution: torch's convolution_backward formula for the gradients autograd will ask for;
    - attention kernels (the math path on meta runs as bmm, counted above): forward + 2x forward.

    This is what torch's counter sees when autograd runs the backward; the contract test checks it
    against a real forward + backward for every adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self._formulas = {**flop_registry, **{k: shape_wrapper(v) for k, v in _attention_mapping().items()}}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and args[0].device.type == "meta":
            return _stand_in(args[0])
        fast = _SHAPES_ONLY.get(func) if args and getattr(args[0], "is_meta", False) else None
        out = fast(*args, **kwargs) if fast else func(*args, **kwargs)
        packet = func._overloadpacket
        grad = torch.is_grad_enabled()        # under no_grad nothing is recorded, whatever requires grad
        if packet in _MATMULS:
            fwd = self._formulas[packet](*args, out_val=out, **kwargs)
            self.flops += fwd * (1 + grad * sum(bool(args[i].requires_grad) for i in _MATMULS[packet]))
        elif packet is aten.convolution:
            x, w, bias, stride, padding, dilation, transposed, output_padding, groups = args[:9]
            self.flops += self._formulas[packet](*args, out_val=out, **kwargs)
            mask = [grad and bool(x.requires_grad), grad and bool(w.requires_grad), False]
            if mask[0] or mask[1]:
                self.flops += conv_backward_flop(out.shape, x.shape, w.shape, None, stride, padding, dilation,
                                                 transposed, output_padding, groups, mask,
                                                 out_val=(x.shape, w.shape, None))
        elif packet in _attention_forwards():
            fwd = self._formulas[packet](*args, out_val=out, **kwargs)
            needs = grad and any(bool(t.requires_grad) for t in args[:3])
            self.flops += fwd * (3 if needs else 1)
        elif packet in self._formulas:
            raise NotImplementedError(f"bench.flops: no backward rule for counted op {packet.__name__}; "
                                      "count it in _ForwardCounter")
        return out


@contextlib.contextmanager
def _as_the_trainer_sets_it(method, stage) -> Iterator[None]:
    """The stage's trainable modules train and take gradients, the others are frozen in eval mode (as
    bench.train does); everything is restored afterwards."""
    mods = method.modules()
    trainable = set(stage.trainable) if stage.trainable is not None else set(mods)
    saved = {k: (m.training, [p.requires_grad for p in m.parameters()]) for k, m in mods.items()}
    try:
        for name, m in mods.items():
            m.train(name in trainable)
            m.requires_grad_(name in trainable)
        yield
    finally:
        for name, m in mods.items():
            training, flags = saved[name]
            m.train(training)
            for p, flag in zip(m.parameters(), flags):
                p.requires_grad_(flag)
                p.grad = None


class _SavedActivations:
    """Bytes of the tensors autograd keeps for backward, parameters and buffers left out."""

    def __init__(self, method) -> None:
        self.state = {id(t) for m in method.modules().values() for t in [*m.parameters(), *m.buffers()]}
        self.seen: dict[int, torch.Tensor] = {}     # holding them keeps ids unique (meta: no memory)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(base) not in self.state and id(t) not in self.state:
            self.seen.setdefault(id(base), base)
        return t

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.seen.values())


def _example(method, stage):
    method = method.structured_for(stage)
    n = int(method.flops_batch(stage))
    return method, n, method.example_batch(stage, n)


def training_flops(method, stage) -> float:
    """Training FLOPs (loss forward + backward) per example of ``stage`` on the live ``method``."""
    method, n, batch = _example(method, stage)
    with _as_the_trainer_sets_it(method, stage), _HostReads(), flop_counter() as counter:
        loss, _ = method.loss(batch, stage)
        loss.backward()
    return counter.get_total_flops() / n


def planned_flops(method, stage) -> tuple[float, float]:
    """(training FLOPs per example, bytes saved for backward per example) from the loss forward alone;
    for a method on the meta device (it runs on real tensors too, for the tests)."""
    method, n, batch = _example(method, stage)
    saved = _SavedActivations(method)
    with _as_the_trainer_sets_it(method, stage), _ForwardCounter() as counter, \
            torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        method.loss(batch, stage)
    return counter.flops / n, saved.bytes / n


@torch.no_grad()
def sampling_cost(method, steps: int | None = None, guidance: float = 1.0) -> dict[str, float]:
    """Sampling cost per image on the live method: NFE, FLOPs per image, FLOPs per network evaluation."""
    for m in method.modules().values():
        m.eval()
    cond = method.example_condition(1)
    with flop_counter() as counter:
        _, nfe = method.sample(StackedRandom([0], device=method.device), cond, steps, guidance)
    flops = float(counter.get_total_flops())
    return {"nfe": int(nfe), "sample_flops_per_image": flops, "sample_macs_per_image": flops / FLOPS_PER_MAC,
            "flops_per_eval": flops / max(int(nfe), 1)}


# ---- planning: a meta-device twin of a method ---------------------------------------------------
@dataclass(frozen=True)
class StageCost:
    """What one stage of a method costs; counted on the meta device."""

    name: str
    share: float
    flops_per_example: float          # training FLOPs (forward + backward) per example
    state_bytes: int = 0              # every module's parameters + buffers (a checkpoint, one EMA copy)
    trainable_params: int = 0         # parameters the stage's optimizer updates (gradients, Adam moments)
    trainable_bytes: int = 0
    activation_bytes_per_example: float = 0.0   # tensors saved for backward, per example (fp32 graph)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageCost":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def stage_costs(method: str, preset: str | None, method_config: dict[str, Any]) -> list[StageCost]:
    """Every stage of a freshly built ``method`` in order, counted on a meta-device twin.

    Stages are entered in order (``enter`` may grow the network), so each is counted on the network it
    really trains."""
    from bench.method import build_method

    meta = torch.device("meta")
    # Networks are made under the meta device (construction, and growth in ``enter``); the loss then runs
    # as on any accelerator: its own small CPU tensors move to the method's device where the code says so.
    with torch.device(meta):
        m = build_method(method, preset, method_config)
    m.device = meta
    out = []
    for stage in m.stages():
        if stage.enter:
            with torch.device(meta):
                stage.enter()
        flops, act = planned_flops(m, stage)
        mods = m.modules()
        trainable = set(stage.trainable) if stage.trainable is not None else set(mods)
        tensors = [t for mod in mods.values() for t in [*mod.parameters(), *mod.buffers()]]
        train_p = [p for k in trainable for p in mods[k].parameters()]
        out.append(StageCost(stage.name, float(stage.share), float(flops),
                             sum(t.numel() * t.element_size() for t in tensors),
                             sum(p.numel() for p in train_p), sum(p.numel() * p.element_size() for p in train_p),
                             float(act)))
    return out


__all__ = ["COUNTER_VERSION", "FLOPS_PER_MAC", "StageCost", "flop_counter", "training_flops", "sampling_cost",
           "stage_costs"]
