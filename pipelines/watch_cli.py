"""``maskrcnn-tfx watch``: run the local pipeline on each new span of the data, one run at a time.

Examples::

    maskrcnn-tfx watch --config pipeline.yaml                  # polls every 5 minutes until SIGTERM
    maskrcnn-tfx watch --config pipeline.yaml --once           # from cron: run the new span, if any, and exit

The configuration's data patterns must hold ``{SPAN}`` (see pipelines/watcher.py).
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="the pipeline configuration YAML (runner local or beam, span patterns); re-read "
                             "before every run")
    parser.add_argument("--poll-seconds", type=float, default=300.0,
                        help="how often the data root is checked for a new span (default 300)")
    parser.add_argument("--settle-seconds", type=float, default=60.0,
                        help="a new span runs once its files stayed unchanged this long (default 60; 0: at once)")
    parser.add_argument("--once", action="store_true",
                        help="check once, run the new span if there is one, and exit (for cron); exits 0 "
                             "without running when another watcher or run holds the lock")
    parser.add_argument("--report-dir", default="",
                        help="where the HTML report is written after each run (default: beside the metadata "
                             "store, report/)")
    parser.add_argument("--gallery-size", type=int, default=None,
                        help="eval images with the model's masks in the report (default: the report's)")
    parser.add_argument("--max-runs", type=int, default=0, help="stop after this many runs (0: never)")


def main(args: argparse.Namespace) -> int:
    from maskrcnn_tfx.pipelines import watcher as watcher_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.config import ConfigError  # pylint: disable=g-import-not-at-top

    def log(message: str) -> None:
        print(f"[watch {watcher_lib._now()}] {message}", flush=True)  # pylint: disable=protected-access

    if args.poll_seconds <= 0 or args.settle_seconds < 0 or args.max_runs < 0:
        print("error: --poll-seconds must be > 0, --settle-seconds and --max-runs >= 0", file=sys.stderr)
        return 2
    try:
        watcher = watcher_lib.Watcher(args.config, poll_seconds=args.poll_seconds,
                                      settle_seconds=args.settle_seconds, report_dir=args.report_dir,
                                      gallery_size=args.gallery_size, max_runs=args.max_runs, log=log)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    watcher.install_signal_handlers()
    try:
        return watcher.watch(once=args.once)
    except watcher_lib.WatcherBusy as e:
        if args.once:
            log(f"nothing started: {e}")
            return 0
        print(f"error: {e}", file=sys.stderr)
        return 1
