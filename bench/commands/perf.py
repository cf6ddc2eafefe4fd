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
    t.set_defaults(func=lambda a: __import__("bench.perf.trainer", fromlist=["x"]).run_perf_trainer(a))
    for name, mod, fn in (("eval", "bench.perf.eval", "run_perf_eval"), ("data", "bench.perf.data", "run_perf_data")):
        q = which.add_parser(name, help=f"{name} benchmark", add_help=True)
        q.set_defaults(func=lambda a, mod=mod, fn=fn: getattr(__import__(mod, fromlist=["x"]), fn)(a),
                       perf_name=name, accepts_overrides=True)
    p.set_defaults(func=lambda a: p.print_help() or 2)
