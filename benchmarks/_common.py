"""COCO evaluation of an exported SavedModel on a COCO-format set, for ``benchmarks/train_accuracy.py``
(its shapes data sets come from ``maskrcnn_tfx.testing.data``). Not a benchmark itself.
"""
from __future__ import annotations

import contextlib
import io
import os
import time
from typing import Dict, List

import maskrcnn_tfx  # noqa: F401  (before TensorFlow: selects tf_keras)

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
