"""``charlm-report``: console entry point (see :mod:`charlm.report`)."""

from __future__ import annotations

import sys

from charlm.report import main as _main


def main() -> None:
    sys.exit(_main())


if __name__ == "__main__":
    main()
