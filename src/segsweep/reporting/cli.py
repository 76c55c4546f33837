"""``segsweep-report <sweep dir>``: write a sweep's leaderboard and report, print the leaderboard.

    segsweep-report outputs/multirun/2025-01-31/12-00-00
    segsweep-report outputs/multirun/2025-01-31/12-00-00 --metric val/dice
    segsweep-report outputs/multirun/2025-01-31/12-00-00 --metric val/loss --mode min --quiet
"""

from __future__ import annotations

import argparse
import sys

from segsweep.reporting.report import write_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segsweep-report",
        description="Rank the jobs of a segsweep multirun and write leaderboard.csv, "
                    "leaderboard.md, report.html and plots into the sweep dir.")
    parser.add_argument("sweep_dir", help="a multirun dir, e.g. outputs/multirun/<date>/<time>")
    parser.add_argument("--metric", default=None,
                        help="metric to rank by (default: the jobs' monitored one, e.g. val/iou)")
    parser.add_argument("--mode", choices=("max", "min"), default=None,
                        help="whether higher or lower is better (default: the jobs' monitor_mode, "
                             "else min for losses/errors)")
    parser.add_argument("--out", default=None, help="write here instead of the sweep dir")
    parser.add_argument("--finished", action="store_true",
                        help="the sweep is over: a job without metrics.json is 'interrupted', "
                             "not 'running'")
    parser.add_argument("--quiet", action="store_true",
                        help="print only the paths written, not the leaderboard")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; exits with code 2 and a message naming the dir if it holds no sweep."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.sweep_dir, out_dir=args.out, metric=args.metric, mode=args.mode,
                             finished=args.finished)
    except FileNotFoundError as err:
        parser.error(str(err))  # usage + message on stderr, exit code 2
    if not args.quiet:
        print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind:>8}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
