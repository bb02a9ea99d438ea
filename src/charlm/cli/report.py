"""``charlm-report``: a table and a val-bpc plot of every job of a run or multirun folder.

    charlm-report outputs/train/multiruns/2026-01-01_12-00-00_000000
    charlm-report outputs/train/runs/<run> --out reports/ --no-plot

Prints the Markdown table and writes ``report.md``, ``report.csv`` and ``val_bpc.png``
(:func:`charlm.evaluation.report.build_report` says what is read and how jobs are ranked).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from charlm.cli.common import utf8_stdout
from charlm.errors import CharLMError
from charlm.evaluation.report import build_report
from charlm.shell import shown_path


class _Parser(argparse.ArgumentParser):
    """argparse with charlm's error format: one ``error: ...`` line, exit status 2 (argparse's
    own prints the usage first)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message} (charlm-report --help lists the options)", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    """``charlm-report DIR [--out OUT] [--no-plot]``; prints the Markdown table and returns the
    exit status: 0, or 2 on a :class:`CharLMError` (message, no traceback)."""
    utf8_stdout()
    p = _Parser(prog="charlm-report", description="Table and val-bpc plot of every job of a run or multirun folder.")
    p.add_argument("dir", help="a run dir (outputs/train/runs/...) or a multirun dir (outputs/train/multiruns/...)")
    p.add_argument("--out", default=None, help="where to write report.md, report.csv, val_bpc.png (default: DIR)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = p.parse_args(argv)
    try:
        build_report(args.dir, args.out, plot=not args.no_plot)
    except CharLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or args.dir)
    print((out / "report.md").read_text(encoding="utf-8"), end="")
    out = Path(shown_path(out))
    print(f"\nwritten: {out / 'report.md'}, {out / 'report.csv'}" + ("" if args.no_plot else f", {out / 'val_bpc.png'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
