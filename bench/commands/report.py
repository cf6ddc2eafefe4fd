"""`bench report <suite>`: tables (md/csv/tex/html), curves, plots, summary.json and report.html from the run folders."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the comparison table, plots and report.html of a suite")
    p.add_argument("suite", help="suite YAML file or its results folder")
    p.add_argument("--out", default=None, help="output folder (default: <results>/<suite>/report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.commands.status import resolve_root
    from bench.report import write_report
    from bench.suite import load_suite

    root = resolve_root(args.suite)
    suite = load_suite(args.suite) if Path(args.suite).is_file() else None
    paths = write_report(root, args.out, published=suite.published if suite else None,
                         targets=suite.targets if suite else None, baseline=suite.baseline if suite else None)
    print(paths["md"].read_text())
    for k, p in paths.items():
        print(f"{k}: {p}")
    return 0
