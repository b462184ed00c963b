"""Shared helpers of the training benchmarks: a converted shapes data set, and COCO evaluation of a SavedModel.

Not a benchmark itself; ``benchmarks/train_throughput.py``, ``train_accuracy.py`` and ``finetune.py`` import it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import time
from typing import Dict, List, Optional

import maskrcnn_tfx  # noqa: F401  (before TensorFlow: selects tf_keras)

# Seed of the held-out images: another seed than the training set's, so no held-out image is a training one.
EVAL_SEED_OFFSET = 1000


@dataclasses.dataclass(frozen=True)
class ShapesSplits:
    """A converted shapes set: training TFRecords, held-out TFRecords, and the held-out set's COCO files."""

    train_pattern: str
    eval_pattern: str
    label_map: str
    eval_annotations: str  # COCO JSON of the held-out images (ground truth for COCOeval)
    eval_images_dir: str
    num_train: int
    num_eval: int
    image_size: int
    seed: int


def prepare_shapes(base_dir: str, *, num_train: int, num_eval: int, image_size: int, seed: int = 0,
                   num_workers: int = 2) -> ShapesSplits:
    """Generates and converts (once; reused when ``base_dir`` already holds the same set) ``num_train`` training
    shapes images of seed ``seed`` and ``num_eval`` held-out ones of seed ``seed + EVAL_SEED_OFFSET``."""
    from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.data.shapes import generate_shapes  # pylint: disable=g-import-not-at-top

    out = os.path.join(base_dir, f"shapes_{num_train}+{num_eval}x{image_size}_seed{seed}")
    done = os.path.join(out, "DONE.json")
    if not os.path.exists(done):
        body = {}
        for split, count, split_seed in (("train", num_train, seed), ("eval", num_eval, seed + EVAL_SEED_OFFSET)):
            annotations = generate_shapes(os.path.join(out, f"raw_{split}"), num_images=count,
                                          image_size=image_size, seed=split_seed, num_workers=num_workers)
            images_dir = os.path.join(os.path.dirname(annotations), "images")
            report = convert_coco(annotations, images_dir, os.path.join(out, f"tfrecords_{split}"),
                                  split_name=split, eval_fraction=0.0, progress=False, num_workers=num_workers)
            body[f"{split}_pattern"] = report.file_pattern(split)
            body["label_map"] = report.label_map_file  # same classes in both
            if split == "eval":
                body["eval_annotations"] = annotations
                body["eval_images_dir"] = images_dir
        body.update(num_train=num_train, num_eval=num_eval, image_size=image_size, seed=seed)
        with open(done, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=1)
    with open(done, encoding="utf-8") as f:
        return ShapesSplits(**json.load(f))


def coco_evaluate_saved_model(serving_dir: str, annotations_file: str, images_dir: str, *,
                              batch_size: int = 8) -> Dict[str, float]:
    """COCO box and mask AP of an exported model on a COCO-format set, through its ``serving_default`` signature.

    Images are sent as their encoded file bytes; the box-relative masks are pasted onto the image with
    ``maskrcnn_tfx.masks.masks_to_rle`` (the product's shared utility). Every returned detection is scored
    (COCOeval keeps the top 100 per image). Returns {"box_AP", "box_AP50", "mask_AP", "mask_AP50",
    "eval_seconds", "detections"}.
    """
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
    from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx.masks import masks_to_rle  # pylint: disable=g-import-not-at-top

    start = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotations_file)
    serve = tf.saved_model.load(serving_dir).signatures["serving_default"]
    image_ids = sorted(gt.getImgIds())
    results: List[Dict] = []
    for i in range(0, len(image_ids), batch_size):
        ids = image_ids[i:i + batch_size]
        infos = gt.loadImgs(ids)
        encoded = []
        for info in infos:
            with open(os.path.join(images_dir, info["file_name"]), "rb") as f:
                encoded.append(f.read())
        out = serve(images=tf.constant(encoded))
        out = {k: v.numpy() for k, v in out.items()}
        for j, info in enumerate(infos):
            n = int(out["num_detections"][j])
            if not n:
                continue
            h, w = int(info["height"]), int(info["width"])
            boxes = out["detection_boxes"][j, :n]
            rles = masks_to_rle(out["detection_masks"][j, :n], boxes, h, w)
            for k in range(n):
                ymin, xmin, ymax, xmax = (float(v) for v in boxes[k])
                results.append({
                    "image_id": int(info["id"]),
                    "category_id": int(out["detection_classes"][j, k]),
                    "score": float(out["detection_scores"][j, k]),
                    "bbox": [xmin * w, ymin * h, (xmax - xmin) * w, (ymax - ymin) * h],
                    "segmentation": rles[k],
                })
    metrics: Dict[str, float] = {"detections": float(len(results))}
    for iou_type, prefix in (("bbox", "box"), ("segm", "mask")):
        if not results:
            metrics[f"{prefix}_AP"] = metrics[f"{prefix}_AP50"] = 0.0
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            # Each evaluation sees only its own field: loadRes would take areas from the boxes otherwise.
            drop = "segmentation" if iou_type == "bbox" else "bbox"
            dt = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in results])
            evaluator = COCOeval(gt, dt, iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[f"{prefix}_AP"] = float(evaluator.stats[0])
        metrics[f"{prefix}_AP50"] = float(evaluator.stats[1])
    metrics["eval_seconds"] = time.monotonic() - start
    return metrics


def median(values: List[float]) -> Optional[float]:
    import statistics  # pylint: disable=g-import-not-at-top

    return statistics.median(values) if values else None
