"""``maskrcnn-tfx convert-coco``: COCO JSON + images -> sharded TFRecords, label map and conversion report.

Examples::

    maskrcnn-tfx convert-coco --annotations instances.json --images images/ --output data/ \\
        --eval-fraction 0.1 --workers 4 --on-error skip
    maskrcnn-tfx convert-coco --annotations instances.json --images images/ --output data/ --runner beam \\
        -- --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing

Everything after ``--`` goes to Beam's PipelineOptions unchanged (``--runner beam`` only).
"""
from __future__ import annotations

import argparse
import os
import sys

from maskrcnn_tfx.images import DEFAULT_MAX_IMAGE_PIXELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("Beam pipeline arguments follow '--', e.g.\n"
                     "  --runner beam -- --runner=DirectRunner --direct_num_workers=2")
    parser.add_argument("--annotations", required=True, metavar="FILE", help="COCO instances JSON file.")
    parser.add_argument("--images", required=True, metavar="DIR",
                        help="Folder that the images' file_name entries are relative to.")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="Output folder: <split>/<split>.tfrecord-*-of-*, label_map.json, "
                             "conversion_report.json.")
    parser.add_argument("--num-shards", type=int, default=None, metavar="N",
                        help="Shards per split (default: about one per 500 images).")
    parser.add_argument("--eval-fraction", type=float, default=0.0, metavar="F",
                        help="Share of images (chosen by a hash of their id) written to the 'eval' split "
                             "(default 0: all in --split-name).")
    parser.add_argument("--split-name", default="train", metavar="NAME", help="Name of the main split.")
    parser.add_argument("--seed", type=int, default=0, help="Salt of the train/eval hash.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="Local runner: processes, one shard each at a time (default: CPU count). "
                             "The output does not depend on it.")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                        help="fail: stop at the first bad image or annotation (default); skip: leave it out "
                             "and list it in the report.")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                        help="An image whose header declares more pixels is a bad image, refused before it is "
                             "decoded (an error, or skipped with --on-error skip). Keep it equal to the trainer "
                             f"configuration's export.max_image_pixels (default {DEFAULT_MAX_IMAGE_PIXELS}).")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="No progress bar.")
    parser.add_argument("--runner", choices=("local", "beam"), default="local",
                        help="local: multiprocessing on this machine (default); beam: an Apache Beam pipeline.")
    parser.add_argument("beam_args", nargs="*", metavar="-- BEAM_ARGS",
                        help="Beam PipelineOptions arguments (after '--').")


def main(args: argparse.Namespace) -> int:
    from maskrcnn_tfx.data.coco import ConversionError  # pylint: disable=g-import-not-at-top

    if args.runner == "local" and args.beam_args:
        print(f"error: Beam arguments given ({' '.join(args.beam_args)}) but --runner is local",
              file=sys.stderr)
        return 2
    try:
        if args.runner == "beam":
            from maskrcnn_tfx.data.beam_convert import convert_coco_beam  # pylint: disable=g-import-not-at-top

            report = convert_coco_beam(
                args.annotations, args.images, args.output, num_shards=args.num_shards,
                eval_fraction=args.eval_fraction, split_name=args.split_name, on_error=args.on_error,
                seed=args.seed, max_image_pixels=args.max_image_pixels, pipeline_args=args.beam_args)
        else:
            from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top

            report = convert_coco(
                args.annotations, args.images, args.output, num_shards=args.num_shards,
                eval_fraction=args.eval_fraction, split_name=args.split_name, num_workers=args.workers,
                on_error=args.on_error, progress=args.progress, seed=args.seed,
                max_image_pixels=args.max_image_pixels)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        if args.on_error == "fail" and e.item is not None:
            print("(--on-error skip leaves bad records out and lists them in the report)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: no shard was written (temporary files removed)", file=sys.stderr)
        return 130
    except RuntimeError as e:  # a local worker died (WorkerDiedError); the message says what to check
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # invalid arguments
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
