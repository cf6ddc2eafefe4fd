"""`bench perf trainer|eval|data`: side-by-side benchmarks that print ratios measured in one run."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perf", help="benchmarks (ratios measured side by side in one run)")
    which = p.add_subparsers(dest="which", metavar="WHAT")
    t = which.add_parser("trainer", help="training-loop overhead vs a bare PyTorch loop on the same model/batch")
    t.add_argument("--method", default="edm")
    t.add_argument("--preset", default="cpu-tiny")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--steps", type=int, default=30)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--device", default="auto")
    t.add_argument("--log-images", type=int, default=10 ** 9, help="log interval of the timed runs (images)")
    t.add_argument("--breakdown-steps", type=int, default=10)
    t.add_argument("--scaling-steps", type=int, default=15, help="timed steps of the 2-rank scaling check")
    t.add_argument("--no-scaling", action="store_true", help="skip the 2-rank gloo scaling check")
    t.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU (default: table)")
    t.add_argument("--json", default=None, metavar="FILE", help="write every number as JSON")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=lambda a: __import__("bench.perf.trainer", fromlist=["x"]).run_perf_trainer(a))
    for name, mod, fn in (("eval", "bench.perf.eval", "run_perf_eval"), ("data", "bench.perf.data", "run_perf_data"),
                          ("gpu", "bench.perf.gpu", "run_perf_gpu")):
        q = which.add_parser(name, help=f"{name} benchmark", add_help=True)
        q.set_defaults(func=lambda a, mod=mod, fn=fn: getattr(__import__(mod, fromlist=["x"]), fn)(a),
                       perf_name=name, accepts_overrides=True)
    p.set_defaults(func=lambda a: p.print_help() or 2)
