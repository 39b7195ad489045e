"""``matryoshka-st report``: tables, summary and plots from mteb results. Thin wrapper around
:func:`matryoshka_st.evaluation.report.render`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Render the quality-against-dimension report from results written by `matryoshka-st eval` (or any
mteb result folders): report.md and scores.csv (task x dim: score and share of the full-dim score,
bytes per vector at each precision), summary.json (with the recommended dimension: the smallest
whose mean score keeps --keep of the full-dim score) and the plots score_vs_dim.png and
score_vs_bytes.png. Several result folders are merged, e.g. base and fine-tuned runs.

examples:
  matryoshka-st report eval_out --output eval_out/report
  matryoshka-st report base_eval tuned_eval --output comparison --keep 0.95
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="tables, summary and plots of quality against dimension",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS", help="result folders or JSON files")
    parser.add_argument("--output", required=True, type=Path, help="folder for the report files")
    parser.add_argument("--keep", type=float, default=0.98, help="share of the full-dim score to keep (default: 0.98)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from matryoshka_st.evaluation.report import render

    try:
        report = render(args.results, args.output, keep=args.keep)
    except (ValueError, FileNotFoundError) as error:
        print(f"matryoshka-st report: error: {error}", file=sys.stderr)
        return 2
    print(report.table)
    print(f"Report written to {report.markdown.parent}")
    return 0
