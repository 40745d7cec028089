"""A full-page screenshot of a compare report, for the README:

    .venv/bin/python scripts/screenshot_report.py artifacts/reports/NAME/report.html docs/report.png [--width 1280]

Needs Debian's chromium (apt-get install chromium) and Playwright (the test extra); see scripts/browser.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_html", type=Path, help="a report.html written by `cnnfeat compare`")
    parser.add_argument("out_png", type=Path, help="where the PNG goes")
    parser.add_argument("--width", type=int, default=1280, help="the page's width in pixels (default 1280)")
    args = parser.parse_args(argv)
    if not args.report_html.is_file():
        parser.error(f"no such file: {args.report_html}")
    sys.path.insert(0, str(REPO))  # run as a file: the repository's scripts package
    from scripts.browser import BrowserMissing, screenshot

    try:
        out = screenshot(args.report_html, args.out_png, width=args.width)
    except BrowserMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
