"""`report`: the study's tables and figures, rebuilt from the store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from caltech_core import layout
from caltech_core.cli.common import Parents, open_store, print_json


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser("report", parents=[parents.common, parents.rooted],
                       help="rebuild the study's tables and figures")
    p.add_argument("--out", metavar="DIR", help="output folder (default: STORE/report)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild the study's tables and figures from the store; write report.md (+ figures) to --out."""
    from caltech_core.study import export, report

    store = open_store(args)
    rep = report.build_report(store, args.root)
    out = Path(args.out) if args.out else layout.report_dir(store.home)
    path = export.export_markdown(rep, out)
    if args.json:
        print_json({**report.report_summary(rep), "markdown": str(path)})
    else:
        print("\n".join(report.summary_lines(rep)))
        print(f"report written to {path}")
    return 0
