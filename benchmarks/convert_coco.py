"""Benchmark: our COCO converter against TF Model Garden's ``create_coco_tf_record`` on the same data.

Builds a COCO file that repeats coco128 ``--repeat`` times (new image and annotation ids, the same image
files), converts it with both tools, each as a whole process (imports included: ours through the
``maskrcnn-tfx convert-coco`` command, Model Garden's through ``python -m``), with the same number of
processes and shards, checks that both wrote the same instances, and prints images/s, the ratio and the
projected time for COCO train2017 (start-up once, plus the per-image rate measured beyond a 16-image run).

    .venv/bin/python -m benchmarks.convert_coco [--repeat 8] [--workers N] [--coco128 DIR]

Model Garden's flags (official/vision/data/create_coco_tf_record.py): --image_dir, --object_annotations_file,
--output_file_prefix, --num_shards, --include_masks, --num_processes (0 disables multiprocessing, so ours
with one worker is compared to its single process).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import maskrcnn_tfx  # noqa: F401  (before TensorFlow: selects tf_keras)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COCO_TRAIN2017_IMAGES = 118_287
SMALL_RUN_IMAGES = 16


def default_coco128() -> str:
    return os.environ.get("MASKRCNN_TFX_COCO128", "")


def build_repeated_coco(coco128: str, repeat: int, path: str, first: int = 0) -> Tuple[int, int]:
    """Writes coco128 repeated ``repeat`` times with fresh ids (only its ``first`` images if given);
    returns (images, annotations)."""
    with open(os.path.join(coco128, "annotations", "instances.json"), encoding="utf-8") as f:
        base = json.load(f)
    if first:
        base["images"] = base["images"][:first]
        kept = {im["id"] for im in base["images"]}
        base["annotations"] = [a for a in base["annotations"] if a["image_id"] in kept]
    image_stride = max(im["id"] for im in base["images"]) + 1
    ann_stride = max(a["id"] for a in base["annotations"]) + 1
    images, annotations = [], []
    for r in range(repeat):
        images += [dict(im, id=im["id"] + r * image_stride) for im in base["images"]]
        annotations += [dict(a, id=a["id"] + r * ann_stride, image_id=a["image_id"] + r * image_stride)
                        for a in base["annotations"]]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(base, images=images, annotations=annotations), f)
    return len(images), len(annotations)


def timed(cmd: List[str], log_path: str) -> float:
    """Wall time of a command; its output goes to a log, which is printed if it fails."""
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    seconds = time.monotonic() - start
    if code != 0:
        with open(log_path, encoding="utf-8") as f:
            sys.stderr.write(f.read()[-5000:])
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}")
    return seconds


def run_ours(annotations: str, images_dir: str, out: str, workers: int, shards: int, log: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    return timed([sys.executable, "-m", "maskrcnn_tfx", "convert-coco", "--annotations", annotations,
                  "--images", images_dir, "--output", out, "--num-shards", str(shards), "--workers", str(workers),
                  "--no-progress"], log)


def run_model_garden(annotations: str, images_dir: str, out: str, workers: int, shards: int, log: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    return timed([sys.executable, "-m", "official.vision.data.create_coco_tf_record", "--logtostderr",
                  f"--image_dir={images_dir}", f"--object_annotations_file={annotations}",
                  f"--output_file_prefix={os.path.join(out, 'train')}", f"--num_shards={shards}",
                  "--include_masks=True", f"--num_processes={workers if workers > 1 else 0}"], log)


def read_examples(pattern: str) -> Dict[int, "object"]:
    import tensorflow as tf

    from maskrcnn_tfx.example_format import from_tf_example

    examples = {}
    for path in sorted(glob.glob(pattern)):
        for record in tf.data.TFRecordDataset(path):
            example = from_tf_example(bytes(record.numpy()))
            examples[example.source_id] = example
    return examples


def compare(ours: Dict[int, "object"], theirs: Dict[int, "object"]) -> List[str]:
    """Differences in instances (masks, boxes, classes, crowd flags, areas), by source_id and instance order."""
    import numpy as np

    problems = []
    if sorted(ours) != sorted(theirs):
        problems.append(f"different images: {len(ours)} ours, {len(theirs)} Model Garden's")
    for source_id in sorted(set(ours) & set(theirs)):
        a, b = ours[source_id], theirs[source_id]
        if a.num_instances != b.num_instances:
            problems.append(f"image {source_id}: {a.num_instances} instances, Model Garden {b.num_instances}")
            continue
        if a.encoded != b.encoded:
            problems.append(f"image {source_id}: different image bytes")
        if not (np.array_equal(a.classes, b.classes) and np.array_equal(a.is_crowd, b.is_crowd)):
            problems.append(f"image {source_id}: different classes or crowd flags")
        if not np.allclose(a.boxes, b.boxes, rtol=1e-6, atol=1e-7) or not np.allclose(a.areas, b.areas, rtol=1e-6):
            problems.append(f"image {source_id}: different boxes or areas")
        if not np.array_equal(a.decoded_masks(), b.decoded_masks()):
            problems.append(f"image {source_id}: different masks")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco128", default=default_coco128(), help="coco128 folder (images/, annotations/)")
    parser.add_argument("--repeat", type=int, default=8, help="copies of coco128 (8: 1,024 images)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for both tools")
    parser.add_argument("--num-shards", type=int, default=None, help="shards for both (default: 4 x workers)")
    parser.add_argument("--trials", type=int, default=1, help="runs of each tool (alternating); best time counts")
    parser.add_argument("--work-dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    annotations_128 = os.path.join(args.coco128, "annotations", "instances.json")
    if not os.path.isfile(annotations_128):
        raise SystemExit(f"no coco128 at {args.coco128} (give --coco128 or set $MASKRCNN_TFX_COCO128)")
    shards = args.num_shards or 4 * args.workers
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_convert_coco_")
    os.makedirs(work, exist_ok=True)
    images_dir = os.path.join(args.coco128, "images")
    annotations = os.path.join(work, "instances_repeated.json")
    num_images, num_annotations = build_repeated_coco(args.coco128, args.repeat, annotations)
    for path in glob.glob(os.path.join(images_dir, "*")):  # warm the page cache for both tools alike
        with open(path, "rb") as f:
            f.read()
    print(f"Data: coco128 x {args.repeat} = {num_images} images, {num_annotations} instances; "
          f"{args.workers} processes, {shards} shards, {os.cpu_count()} CPUs")

    # A run on a few images measures each tool's fixed cost (interpreter, imports, pool start), so the
    # train2017 projection uses the per-image rate without it.
    small = os.path.join(work, "instances_small.json")
    num_small, _ = build_repeated_coco(args.coco128, 1, small, first=SMALL_RUN_IMAGES)
    ours_dir, mg_dir = os.path.join(work, "ours"), os.path.join(work, "model_garden")
    ours_times, mg_times, ours_fixed, mg_fixed = [], [], [], []
    for _ in range(args.trials):
        mg_times.append(run_model_garden(annotations, images_dir, mg_dir, args.workers, shards,
                                         os.path.join(work, "model_garden.log")))
        ours_times.append(run_ours(annotations, images_dir, ours_dir, args.workers, shards,
                                   os.path.join(work, "ours.log")))
        mg_fixed.append(run_model_garden(small, images_dir, mg_dir + "_small", args.workers, args.workers,
                                         os.path.join(work, "model_garden_small.log")))
        ours_fixed.append(run_ours(small, images_dir, ours_dir + "_small", args.workers, args.workers,
                                   os.path.join(work, "ours_small.log")))

    ours = read_examples(os.path.join(ours_dir, "train", "train.tfrecord-*-of-*"))
    theirs = read_examples(os.path.join(mg_dir, "train-*-of-*.tfrecord"))
    problems = compare(ours, theirs)
    instances = sum(e.num_instances for e in ours.values())
    print(f"Check: {len(ours)} images, {instances} instances compared (masks, boxes, classes, crowd, areas): "
          + ("identical" if not problems else f"{len(problems)} differences"))
    for line in problems[:20]:
        print(f"  {line}")

    rows = []
    for name, times, fixed in (("ours", ours_times, ours_fixed), ("Model Garden", mg_times, mg_fixed)):
        seconds, fixed_s = min(times), min(fixed)
        # Images beyond the small run, over the time beyond it: the rate once started.
        steady = (num_images - num_small) / max(seconds - fixed_s, 1e-9)
        rows.append((name, seconds, num_images / seconds, fixed_s, steady))
    print(f"{'converter':<14} {'seconds':>8} {'images/s':>9} {'start-up s':>11} {'images/s after':>15} "
          f"{'train2017 h':>12}")
    for name, seconds, rate, fixed_s, steady in rows:
        hours = (fixed_s + COCO_TRAIN2017_IMAGES / steady) / 3600
        print(f"{name:<14} {seconds:>8.1f} {rate:>9.1f} {fixed_s:>11.1f} {steady:>15.1f} {hours:>12.2f}")
    (_, _, ours_rate, _, ours_steady), (_, _, mg_rate, _, mg_steady) = rows
    print(f"ratio ours / Model Garden: {ours_rate / mg_rate:.2f}x whole processes (imports included), "
          f"{ours_steady / mg_steady:.2f}x after start-up")
    if args.trials > 1:
        print(f"all times (s): ours {[round(t, 1) for t in ours_times]}, "
              f"Model Garden {[round(t, 1) for t in mg_times]}")
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"outputs kept in {work}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
