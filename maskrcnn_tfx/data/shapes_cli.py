"""``maskrcnn-tfx make-shapes``: generate the synthetic shapes set and convert it to TFRecords.

Writes ``OUTPUT/coco/`` (annotations.json + images/) with :func:`maskrcnn_tfx.data.shapes.generate_shapes`,
then ``OUTPUT/tfrecords/`` (train/eval shards, label_map.json, conversion_report.json) with the COCO
converter, exactly as real data would go in.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from typing import List

TFRECORDS_DIR = "tfrecords"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="output folder; gets coco/ (JSON + images) and tfrecords/")
    parser.add_argument("--num-images", type=int, default=256, metavar="N", help="images to generate (default 256)")
    parser.add_argument("--image-size", type=int, default=128, metavar="S",
                        help="side of the square images in pixels (default 128, at least 32)")
    parser.add_argument("--seed", type=int, default=0, metavar="K",
                        help="seed of the set; the same seed gives byte-identical files (default 0)")
    parser.add_argument("--eval-fraction", type=float, default=0.2, metavar="F",
                        help="fraction of images put in the eval split (default 0.2)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="processes for generation and conversion; the output does not depend on it "
                             "(default 1)")
    parser.add_argument("--format", choices=("png", "jpeg"), default="png", dest="image_format",
                        help="image encoding (default png: lossless, so masks match the pixels exactly; "
                             "jpeg is written at quality 95)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar during the conversion")


def _validate(args: argparse.Namespace) -> str:
    """The first problem with the arguments, or an empty string."""
    from maskrcnn_tfx.data import shapes  # pylint: disable=g-import-not-at-top

    if args.num_images < 1:
        return f"--num-images must be at least 1 (got {args.num_images})"
    if args.image_size < shapes.MIN_IMAGE_SIZE:
        return f"--image-size must be at least {shapes.MIN_IMAGE_SIZE} (got {args.image_size})"
    if args.seed < 0:
        return f"--seed must be >= 0 (got {args.seed})"
    if not 0.0 <= args.eval_fraction < 1.0:
        return f"--eval-fraction must be in [0, 1) (got {args.eval_fraction})"
    if args.workers < 1:
        return f"--workers must be at least 1 (got {args.workers})"
    return ""


def main(args: argparse.Namespace) -> int:
    problem = _validate(args)
    if problem:
        print(f"make-shapes: error: {problem}", file=sys.stderr)
        return 2

    from maskrcnn_tfx.data import convert, shapes  # pylint: disable=g-import-not-at-top

    # The converter refuses an empty split; find out before replacing anything in --output.
    splits = ["train"] + ([convert.EVAL_SPLIT] if args.eval_fraction > 0 else [])
    split_sizes = collections.Counter(convert.split_of(image_id, args.eval_fraction, args.seed)
                                      for image_id in range(1, args.num_images + 1))
    empty = [split for split in splits if not split_sizes[split]]
    if empty:
        print(f"make-shapes: error: no image of {args.num_images} falls into the {empty[0]} split with "
              f"--eval-fraction {args.eval_fraction} and --seed {args.seed}; use more images or another "
              f"fraction", file=sys.stderr)
        return 2

    start = time.monotonic()
    annotations_path = shapes.generate_shapes(
        args.output, num_images=args.num_images, image_size=args.image_size, seed=args.seed,
        image_format=args.image_format, num_workers=args.workers)
    with open(annotations_path, encoding="utf-8") as f:
        coco = json.load(f)
    per_class = collections.Counter(a["category_id"] for a in coco["annotations"])
    class_counts = ", ".join(f"{per_class[i]} {name}s" for i, name in shapes.SHAPES_LABEL_MAP.entries)
    print(f"Generated {len(coco['images'])} images of {args.image_size}x{args.image_size} "
          f"({args.image_format}, seed {args.seed}) with {len(coco['annotations'])} instances ({class_counts}) "
          f"in {time.monotonic() - start:.1f}s")
    images_dir = os.path.join(os.path.dirname(annotations_path), shapes.IMAGES_DIR)
    print(f"  annotations: {annotations_path}")
    print(f"  images:      {images_dir}")

    tfrecords_dir = os.path.join(args.output, TFRECORDS_DIR)
    _remove_splits_not_rewritten(tfrecords_dir, splits)
    try:
        report = convert.convert_coco(
            annotations_path, images_dir, tfrecords_dir, eval_fraction=args.eval_fraction,
            num_workers=args.workers, progress=args.progress, seed=args.seed)
    except convert.ConversionError as e:
        print(f"make-shapes: error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _remove_splits_not_rewritten(tfrecords_dir: str, splits: List[str]) -> None:
    """The converter keeps splits of earlier runs that a run does not rewrite (to add an eval set from another
    file). Here the whole set was just regenerated, so such a split (e.g. ``eval`` of a run with
    --eval-fraction, now 0) would describe other images: remove its shards and the report that lists it."""
    from maskrcnn_tfx.data import convert  # pylint: disable=g-import-not-at-top

    report_file = os.path.join(tfrecords_dir, convert.REPORT_FILE)
    if not os.path.isfile(report_file):
        return
    try:
        previous = convert.ConversionReport.load(report_file)
    except (OSError, ValueError, KeyError):
        return  # Not a report of ours: leave the folder alone; the converter decides what to do.
    stale = sorted(set(previous.splits) - set(splits))
    for split in stale:
        convert.remove_stale_shards(tfrecords_dir, split, keep=())
        try:
            os.rmdir(os.path.join(tfrecords_dir, split))
        except OSError:
            pass  # Not empty: it holds files that are not ours.
    if stale:
        os.remove(report_file)
