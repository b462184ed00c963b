"""``maskrcnn-tfx report``: the HTML report of a pipeline run and the index of all runs (see maskrcnn_tfx.report)."""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_GALLERY_SIZE = 6  # maskrcnn_tfx.report.build.DEFAULT_GALLERY_SIZE (not imported: --help stays light)
DEFAULT_SCORE_THRESHOLD = 0.5  # maskrcnn_tfx.report.gallery.DEFAULT_SCORE_THRESHOLD


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline-root", required=True,
                        help="the pipeline root of `maskrcnn-tfx run` (its metadata store is read from there)")
    parser.add_argument("--output", required=True,
                        help="the report folder: index.html (every run) and runs/<run>/index.html")
    parser.add_argument("--run", default="", metavar="ID",
                        help="the run to report on, as `maskrcnn-tfx run` printed it (default: the latest)")
    parser.add_argument("--all-runs", action="store_true",
                        help="also build the page of every run that has none in --output yet")
    parser.add_argument("--metadata-path", default="",
                        help="the SQLite metadata store (default: PIPELINE_ROOT/metadata.sqlite)")
    parser.add_argument("--pipeline-name", default="",
                        help="the pipeline to report on when the metadata store holds several")
    parser.add_argument("--gallery-size", type=int, default=DEFAULT_GALLERY_SIZE,
                        help=f"eval images shown with the model's masks (default {DEFAULT_GALLERY_SIZE}; 0: none)")
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                        help=f"the gallery shows detections scoring at least this (default {DEFAULT_SCORE_THRESHOLD})")


def main(args: argparse.Namespace) -> int:
    if args.gallery_size < 0:
        print(f"error: --gallery-size must be >= 0, not {args.gallery_size}", file=sys.stderr)
        return 2
    if not 0.0 <= args.score_threshold <= 1.0:
        print(f"error: --score-threshold must be in [0, 1], not {args.score_threshold}", file=sys.stderr)
        return 2
    from maskrcnn_tfx.report import build, runs  # pylint: disable=g-import-not-at-top

    try:
        report = build.build_report(args.pipeline_root, args.output, args.run, metadata_path=args.metadata_path,
                                    pipeline_name=args.pipeline_name, all_runs=args.all_runs,
                                    gallery_size=args.gallery_size, score_threshold=args.score_threshold)
    except runs.ReportInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for page in report.pages:
        for problem in page.problems:
            print(f"warning: run {page.run_id}: {problem}", file=sys.stderr)
        print(f"run {page.run_id}: {os.path.abspath(page.path)}")
    print(f"report: {os.path.abspath(report.index_path)}")
    return 0
