"""`report`: the study's tables and figures, rebuilt from the store."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltech_core import layout
from caltech_core.cli.common import open_store, print_json


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
