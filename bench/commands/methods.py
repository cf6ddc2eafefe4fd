"""`bench methods`: every registered method with presets, stages, conditioning and parameter counts."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list registered methods and presets")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from bench.method import build_method, load_all

    rows = []
    for name, cls in sorted(load_all().items()):
        for preset in cls.presets:
            # Built on the meta device: shapes only, so paper-scale (billion-parameter) presets cost nothing.
            with torch.device("meta"):
                m = build_method(name, preset)
            n = m.param_count(m.sampling_modules())
            params = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
            stages = " -> ".join(f"{s.name}({s.share:.3g})" for s in m.stages())
            rows.append((name, preset, ",".join(cls.conditioning), stages, params))
    head = ("method", "preset", "conditioning", "stages (budget share)", "params")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return 0
