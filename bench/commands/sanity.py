"""`bench sanity METHOD|all [--claims]`: does training work? Scores beside baselines, PASS/FAIL, exit 1 on FAIL."""
from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sanity", help="learning checks: train a method's cpu-demo preset on 16-px clip art and "
                                      "score it beside a Gaussian, its untrained network and held-out images")
    p.add_argument("methods", nargs="*", help="method names, or 'all' (every generative method); "
                                              "none with --claims")
    p.add_argument("--claims", action="store_true", help="also check the papers' orderings (cd, ict, edm, relay)")
    p.add_argument("--only-claims", default=None, help="comma-separated claim names (default: all of them)")
    p.add_argument("--flops", type=float, default=None, help="training FLOPs per method (default: the check's)")
    p.add_argument("--cache", default=None, help="cache folder (default $BENCH_CACHE/sanity or results/sanity-cache)")
    p.add_argument("--grids", default=None, help="write sample grids (PNG) of each method here")
    p.add_argument("--markdown", default=None, help="write the results table (markdown) to this file")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--metric", default=None, choices=["l2", "l1", "pseudo_huber", "lpips"],
                   help="consistency models' training distance (default: the preset's); lpips uses randomly "
                        "initialised LPIPS weights (nothing is downloaded)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from bench import sanity as S
    from bench.method import ConfigError, load_all

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.methods and not args.claims:
        raise ConfigError("sanity: name a method (or 'all'), or pass --claims")
    registry = load_all()
    names: list[str] = []
    for n in args.methods:
        if n == "all":
            names += sorted(k for k, c in registry.items() if getattr(c, "generative", True))
        elif n not in registry:
            raise ConfigError(f"sanity: unknown method {n!r}; registered: {', '.join(sorted(registry))}")
        else:
            names.append(n)
    names = list(dict.fromkeys(names))
    for n in names:
        if S.PRESET not in registry[n].presets:
            raise ConfigError(f"sanity: method {n!r} has no {S.PRESET!r} preset")
    claims = list(S.CLAIMS)
    if args.only_claims:
        claims = [c.strip() for c in args.only_claims.split(",") if c.strip()]
        bad = [c for c in claims if c not in S.CLAIMS]
        if bad:
            raise ConfigError(f"sanity: unknown claim(s) {bad}; claims: {', '.join(S.CLAIMS)}")
    t0 = time.perf_counter()
    ctx = S.Context(Path(args.cache) if args.cache else None)
    grids = Path(args.grids) if args.grids else None
    flops = args.flops or S.BUDGET_FLOPS
    print(f"sanity: {ctx.n} samples per row, scored against {ctx.data.train.shape[0]} training images "
          f"({S.EXTRACTOR} features); PASS = fd <= {S.FD_RATIO:g} x the better baseline and recall >= the better "
          f"baseline + {S.RECALL_MARGIN:g}; budget {flops:.3g} FLOPs per method", flush=True)
    checks, failed = [], []
    for n in names:
        t1 = time.perf_counter()
        c = S.check_method(ctx, n, flops, grids, metric=args.metric)
        checks.append(c)
        print(S.format_check(c) + f"\n    ({time.perf_counter() - t1:.0f}s)", flush=True)
        if not c.passed:
            failed.append(n)
    results = []
    if args.claims:
        if args.flops:
            raise ConfigError("sanity: --claims uses the fixed budget; drop --flops")
        for name in claims:
            t1 = time.perf_counter()
            c = S.CLAIMS[name](ctx)
            results.append(c)
            print(S.format_claim(c) + f"\n    ({time.perf_counter() - t1:.0f}s)", flush=True)
            if not c.passed:
                failed.append(f"claim {name}")
    if args.markdown:
        from bench.io import atomic_write_text
        text = S.table_markdown(checks) if checks else ""
        if results:
            text += "\n" + S.claims_markdown(results)
        atomic_write_text(args.markdown, text)
    print(f"sanity: {len(checks)} method(s), {len(results)} claim(s), {len(failed)} FAIL"
          + (f" ({', '.join(failed)})" if failed else "") + f"; {time.perf_counter() - t0:.0f}s")
    return 1 if failed else 0
