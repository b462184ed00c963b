"""Benchmark: the Evaluator's COCO metrics on Beam against pycocotools' COCOeval on the same predictions.

For 3, 20 and 80 classes, synthetic images with ground-truth masks (crowd regions included) and detections with
box-relative masks, shaped like the exported model's outputs, are written as TFRecords of the product's example
format with the predictions stored beside the features (``detection_boxes``, ``detection_masks``, ...), so no
model runs. Then, in the same run:

- TFMA (``tfma.run_model_analysis`` without a model, ``ModelSpec.prediction_keys`` naming the stored
  predictions) with the product's EvalConfig (``maskrcnn_tfx.pipelines.eval_config.build_eval_config``: mask AP and the
  default exact box AP, sliced by object count, ``maskrcnn_tfx.pipelines.metrics.custom_extractors``), on Beam's
  DirectRunner in process and in 2 worker processes;
- pycocotools' ``COCOeval`` ``segm`` and ``bbox`` directly: the same records read and parsed, ground-truth PNG
  masks decoded and RLE-encoded, the detections' masks pasted with the product's paste
  (``maskrcnn_tfx.masks.paste_masks``), then COCO's evaluate / accumulate / summarize;

and prints the wall time of each, their ratio (TFMA / COCOeval) and the largest difference over every number
both report (AP, AP50, AP75, APs/m/l, per-class AP, masks and boxes). Target: ratio at most 2, differences at
most 1e-4, at ``--images`` (500).

Which figure is which: the table's ratio is of whole wall times, TFMA's fixed cost included (building the Beam
pipeline, its stages, and with ``multi_processing`` starting the worker processes, which import TensorFlow and
TFMA). The same comparison runs again at ``--marginal-images`` (2000), and the second table gives the cost per
added image of each, their ratio (the marginal ratio, fixed costs excluded) and TFMA's fixed cost (its time
extrapolated to 0 images). Both sides first run once, untimed, on ``--warmup-images``, so the one-time imports
of a process do not land on the first row (those times are printed too).

``--tfma-box-images N`` also times TFMA's own ``COCOMeanAveragePrecision`` (``box_metric: tfma``) on N images of
3 classes against the estimate ``maskrcnn_tfx.pipelines.eval_config`` warns with. ``--with-model`` runs the whole local
pipeline on coco128 (``$MASKRCNN_TFX_COCO128``: converted, the tiny model at 256 px trained a few steps) and prints the
Evaluator component's time from ML Metadata.

    .venv/bin/python -m benchmarks.evaluator [--images 500] [--marginal-images 2000] [--classes 3 20 80] [--with-model]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import maskrcnn_tfx  # noqa: F401  (before TensorFlow: selects tf_keras)
import numpy as np

MASK_SIZE = 28
SUMMARY = ("", "50", "75", "_small", "_medium", "_large")


# --------------------------------------------------------------------------------------------------------------
# Synthetic images with predictions
# --------------------------------------------------------------------------------------------------------------

def _blob(height: int, width: int, box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A filled ellipse or rectangle inside the pixel box (x0, y0, x1, y1)."""
    import cv2  # pylint: disable=g-import-not-at-top

    mask = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    if rng.random() < 0.5:
        mask[y0:y1, x0:x1] = 1
    else:
        cv2.ellipse(mask, ((x0 + x1) // 2, (y0 + y1) // 2), (max(1, (x1 - x0) // 2), max(1, (y1 - y0) // 2)),
                    0, 0, 360, 1, thickness=-1)
    return mask


def _box_relative(mask: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A detection's [M, M] mask probabilities: the full mask cropped to the box, resized, blurred, noised."""
    import cv2  # pylint: disable=g-import-not-at-top

    height, width = mask.shape
    x0, y0, x1, y1 = (int(np.clip(round(v), 0, lim)) for v, lim in zip(box, (width, height, width, height)))
    crop = mask[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].astype(np.float32)
    if not crop.size:
        crop = np.zeros((1, 1), np.float32)
    small = cv2.resize(crop, (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_LINEAR)
    small = cv2.GaussianBlur(small, (5, 5), 1.0) + rng.normal(0.0, 0.15, small.shape)
    return np.clip(small, 0.0, 1.0).astype(np.float32)


def make_image(source_id: int, num_classes: int, rng: np.random.Generator):
    """One image: ground truth (tf.Example of the product's format) and detections stored beside it."""
    from maskrcnn_tfx import example_format as ef  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx import signature  # pylint: disable=g-import-not-at-top

    height, width = int(rng.integers(240, 481)), int(rng.integers(240, 481))
    num_objects = int(rng.integers(0, 9))
    gt_boxes, gt_masks, gt_classes, crowd = [], [], [], []
    for _ in range(num_objects):
        side = float(np.exp(rng.uniform(np.log(12), np.log(0.6 * min(height, width)))))
        w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
        x0, y0 = rng.uniform(0, width - min(w, width - 2)), rng.uniform(0, height - min(h, height - 2))
        box = np.array([x0, y0, min(x0 + w, width), min(y0 + h, height)])
        mask = _blob(height, width, box, rng)
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        gt_boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        gt_masks.append(mask)
        gt_classes.append(int(rng.integers(1, num_classes + 1)))
        crowd.append(int(rng.random() < 0.04))
    det_boxes, det_classes, det_scores, det_masks = [], [], [], []
    for box, mask, cls in zip(gt_boxes, gt_masks, gt_classes):
        for _ in range(int(rng.random() < 0.85) + int(rng.random() < 0.1)):  # found, sometimes twice
            size = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float64)
            jittered = np.array(box, np.float64) + rng.normal(0.0, 0.08, 4) * size
            jittered = np.clip(jittered, 0, [width, height, width, height])
            if jittered[2] - jittered[0] < 2 or jittered[3] - jittered[1] < 2:
                continue
            det_boxes.append(jittered)
            det_classes.append(cls if rng.random() < 0.85 else int(rng.integers(1, num_classes + 1)))
            det_scores.append(float(rng.beta(5, 2)))
            det_masks.append(_box_relative(mask, jittered, rng))
    for _ in range(int(rng.integers(0, 6))):  # false positives
        w, h = rng.uniform(8, width / 3), rng.uniform(8, height / 3)
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box = np.array([x0, y0, x0 + w, y0 + h])
        det_boxes.append(box)
        det_classes.append(int(rng.integers(1, num_classes + 1)))
        det_scores.append(float(rng.beta(2, 5)))
        det_masks.append(_box_relative(_blob(height, width, box, rng), box, rng))
    order = np.argsort(-np.asarray(det_scores, np.float64), kind="stable")
    num = len(order)
    pixel = np.asarray(det_boxes, np.float64).reshape(-1, 4)[order]
    normalized = (pixel[:, [1, 0, 3, 2]] / [height, width, height, width]).astype(np.float32)

    gt = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    example = ef.InstanceExample(
        source_id=source_id, encoded=f"image {source_id}".encode(), format="png", height=height, width=width,
        boxes=(gt[:, [1, 0, 3, 2]] / [height, width, height, width]).astype(np.float32),
        classes=np.asarray(gt_classes, np.int64), class_texts=[str(c) for c in gt_classes],
        is_crowd=np.asarray(crowd, np.int64), areas=np.asarray([m.sum() for m in gt_masks], np.float32),
        masks_png=[ef.encode_png_mask(m) for m in gt_masks])
    proto = ef.to_tf_example(example)
    feature = proto.features.feature
    feature[signature.DETECTION_BOXES].float_list.value.extend(normalized.reshape(-1))
    feature[signature.DETECTION_CLASSES].float_list.value.extend(np.asarray(det_classes, np.float32)[order])
    feature[signature.DETECTION_SCORES].float_list.value.extend(np.asarray(det_scores, np.float32)[order])
    feature[signature.NUM_DETECTIONS].float_list.value.append(float(num))
    masks = np.asarray(det_masks, np.float32).reshape(-1, MASK_SIZE, MASK_SIZE)[order]
    feature[signature.DETECTION_MASKS].float_list.value.extend(masks.reshape(-1))
    return proto.SerializeToString()


def write_records(path: str, num_images: int, num_classes: int, seed: int) -> None:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(seed)
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(num_images):
            writer.write(make_image(i + 1, num_classes, rng))


def label_map_of(num_classes: int):
    from maskrcnn_tfx.label_map import LabelMap  # pylint: disable=g-import-not-at-top

    return LabelMap.from_dict({c: f"class{c}" for c in range(1, num_classes + 1)})


# --------------------------------------------------------------------------------------------------------------
# TFMA on Beam, without a model
# --------------------------------------------------------------------------------------------------------------

def run_tfma(data: str, label_map, output: str, beam_args: Sequence[str], **config_kwargs) -> Tuple[float, Dict]:
    """Seconds of ``tfma.run_model_analysis`` and the overall slice's metrics."""
    import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx.pipelines import metrics  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx.pipelines import eval_config as eval_config_lib  # pylint: disable=g-import-not-at-top

    config = eval_config_lib.build_eval_config(label_map, stored_predictions=True, **config_kwargs)
    shutil.rmtree(output, ignore_errors=True)
    start = time.monotonic()
    tfma.run_model_analysis(eval_config=config, data_location=data, output_path=output,
                            extractors=metrics.custom_extractors(None, config),
                            pipeline_options=PipelineOptions(list(beam_args)))
    seconds = time.monotonic() - start
    overall: Dict[str, float] = {}
    slices = 0
    for metrics_for_slice in tfma.load_metrics(output):
        slices += 1
        if metrics_for_slice.slice_key.single_slice_keys:
            continue
        for kv in metrics_for_slice.metric_keys_and_values:
            if kv.value.HasField("double_value"):
                overall[kv.key.name] = kv.value.double_value.value
    overall["__slices__"] = slices
    return seconds, overall


# --------------------------------------------------------------------------------------------------------------
# pycocotools directly
# --------------------------------------------------------------------------------------------------------------

def run_cocoeval(data: str, label_map) -> Tuple[float, float, Dict[str, float]]:
    """(total seconds, seconds of COCOeval alone, metrics named as the product names them)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from pycocotools import mask as mask_api  # pylint: disable=g-import-not-at-top
    from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
    from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
    from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx import example_format as ef  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx import masks as masks_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx import signature  # pylint: disable=g-import-not-at-top

    start = time.monotonic()
    images, annotations, boxes_results, segm_results = [], [], [], []
    for record in tf.data.TFRecordDataset(data).as_numpy_iterator():
        feature = example_pb2.Example.FromString(record).features.feature
        image_id = int(feature[ef.SOURCE_ID].bytes_list.value[0])
        height, width = feature[ef.HEIGHT].int64_list.value[0], feature[ef.WIDTH].int64_list.value[0]
        images.append({"id": image_id, "height": height, "width": width})
        coords = [np.asarray(feature[k].float_list.value, np.float64)
                  for k in (ef.BBOX_XMIN, ef.BBOX_YMIN, ef.BBOX_XMAX, ef.BBOX_YMAX)]
        for j, png in enumerate(feature[ef.MASK].bytes_list.value):
            xmin, ymin, xmax, ymax = (c[j] * s for c, s in zip(coords, (width, height, width, height)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": int(feature[ef.CLASS_LABEL].int64_list.value[j]),
                "iscrowd": int(feature[ef.IS_CROWD].int64_list.value[j]),
                "area": float(feature[ef.AREA].float_list.value[j]), "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
                "segmentation": mask_api.encode(np.asfortranarray(ef.decode_png_mask(png)))})
        num = int(feature[signature.NUM_DETECTIONS].float_list.value[0])
        if not num:
            continue
        boxes = np.asarray(feature[signature.DETECTION_BOXES].float_list.value, np.float32).reshape(-1, 4)[:num]
        masks = np.asarray(feature[signature.DETECTION_MASKS].float_list.value, np.float32)
        masks = masks.reshape(-1, MASK_SIZE, MASK_SIZE)[:num]
        classes = np.asarray(feature[signature.DETECTION_CLASSES].float_list.value)[:num].round().astype(int)
        scores = np.asarray(feature[signature.DETECTION_SCORES].float_list.value, np.float64)[:num]
        full = masks_lib.paste_masks(masks, boxes, height, width)
        rles = mask_api.encode(np.asfortranarray(np.transpose(full, (1, 2, 0))))
        pixel = boxes.astype(np.float64)[:, [1, 0, 3, 2]] * [width, height, width, height]
        for k in range(num):
            x0, y0, x1, y1 = (float(v) for v in pixel[k])
            common = {"image_id": image_id, "category_id": int(classes[k]), "score": float(scores[k])}
            boxes_results.append(dict(common, bbox=[x0, y0, x1 - x0, y1 - y0]))
            segm_results.append(dict(common, segmentation=rles[k]))
    categories = [{"id": c} for c in label_map.ids]
    coco_start = time.monotonic()
    found: Dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        for iou_type, name, results in (("segm", "mask_ap", segm_results), ("bbox", "box_ap", boxes_results)):
            evaluation = COCOeval(gt, gt.loadRes(results), iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            for suffix, value in zip(SUMMARY, evaluation.stats[:6]):
                found[name + suffix] = float(value)
            precision = evaluation.eval["precision"][:, :, :, 0, -1]
            for k, class_name in enumerate(label_map.names):
                valid = precision[:, :, k][precision[:, :, k] > -1]
                found[f"{name}/{class_name}"] = float(np.mean(valid)) if valid.size else -1.0
    end = time.monotonic()
    return end - start, end - coco_start, found


def largest_difference(tfma_values: Dict[str, float], coco_values: Dict[str, float]) -> Tuple[float, str, int]:
    """(largest |difference|, its metric, numbers compared); COCO's -1 and TFMA's NaN both mean undefined."""
    worst, worst_name = 0.0, ""
    for name, expected in coco_values.items():
        got = tfma_values.get(name)
        if got is None:
            return math.inf, f"{name} missing from TFMA's output", 0
        if expected == -1 or math.isnan(got):
            if not (expected == -1 and math.isnan(got)):
                return math.inf, f"{name}: TFMA {got} COCOeval {expected}", 0
            continue
        if abs(got - expected) > worst:
            worst, worst_name = abs(got - expected), name
    return worst, worst_name, len(coco_values)


# --------------------------------------------------------------------------------------------------------------
# The whole Evaluator on coco128, with a model
# --------------------------------------------------------------------------------------------------------------

def evaluator_on_coco128(work: str, train_steps: int, image_size: int) -> Dict[str, float]:
    from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines import component_ids as ids  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines import local_runner, outputs  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top

    coco128 = os.environ.get("MASKRCNN_TFX_COCO128", "")
    annotations = os.path.join(coco128, "annotations", "instances.json")
    if not os.path.isfile(annotations):
        raise SystemExit(f"--with-model needs coco128: set MASKRCNN_TFX_COCO128 (no {annotations})")
    data = os.path.join(work, "coco128")
    report = convert_coco(annotations, os.path.join(coco128, "images"), data, eval_fraction=0.25, progress=False,
                          num_workers=2)
    config = config_lib.from_dict({
        "pipeline_name": "evaluator-bench", "pipeline_root": os.path.join(work, "pipeline"),
        "data": {"root": data},
        "trainer": {"preset": "tiny", "model": {"input_size": image_size},
                    "train": {"train_steps": train_steps, "eval_steps": 1, "batch_size": 2, "eval_batch_size": 2}},
        # The product's default evaluation; a few-step model is not expected to be blessed.
    })
    start = time.monotonic()
    local_runner.run(config)
    total = time.monotonic() - start
    summary = outputs.summarize_run(config)
    evaluator = summary.executions[ids.EVALUATOR]
    print("\n".join(summary.lines()))
    return {"eval_images": float(report.splits["eval"].images), "evaluator_s": evaluator.seconds, "run_s": total,
            "trainer_s": summary.executions[ids.TRAINER].seconds}


# --------------------------------------------------------------------------------------------------------------


def _compare(work: str, num_images: int, num_classes: int, seed: int, modes: Sequence[str], workers: int,
             label: str = "") -> List[Dict]:
    """TFMA (each DirectRunner mode) and COCOeval on the same ``num_images`` images: one row per mode."""
    data = os.path.join(work, f"records_{num_classes}c_{num_images}i_seed{seed}.tfrecord")
    if not os.path.exists(data):
        start = time.monotonic()
        write_records(data + ".tmp", num_images, num_classes, seed + num_classes)
        os.replace(data + ".tmp", data)
        print(f"wrote {num_images} images of {num_classes} classes in {time.monotonic() - start:.1f} s: {data}")
    label_map = label_map_of(num_classes)
    coco_s, cocoeval_s, coco_values = run_cocoeval(data, label_map)
    rows = []
    for mode in modes:
        beam_args = [f"--direct_running_mode={mode}",
                     f"--direct_num_workers={1 if mode == 'in_memory' else workers}"]
        tfma_s, tfma_values = run_tfma(data, label_map, os.path.join(work, f"tfma_{num_classes}_{num_images}_{mode}"),
                                       beam_args)
        diff, where, compared = largest_difference(tfma_values, coco_values)
        rows.append({"images": num_images, "classes": num_classes, "mode": mode, "tfma": tfma_s, "coco": coco_s,
                     "cocoeval": cocoeval_s, "diff": diff, "where": where, "compared": compared,
                     "slices": tfma_values["__slices__"], "mask_ap": tfma_values.get("mask_ap", math.nan),
                     "box_ap": tfma_values.get("box_ap", math.nan)})
        print(f"{label}{num_images} images, {num_classes} classes, {mode}: TFMA {tfma_s:.1f} s, COCOeval "
              f"{coco_s:.1f} s (COCOeval calls {cocoeval_s:.1f} s), largest difference {diff:.2e} ({where})",
              flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500, help="images of the target comparison")
    parser.add_argument("--marginal-images", type=int, default=2000,
                        help="also compare on this many images and print the per-image (marginal) ratio and "
                             "TFMA's fixed cost from the two sizes (0: skip)")
    parser.add_argument("--classes", type=int, nargs="+", default=[3, 20, 80])
    parser.add_argument("--modes", nargs="+", default=["in_memory", "multi_processing"],
                        choices=["in_memory", "multi_processing"], help="DirectRunner running modes")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of multi_processing")
    parser.add_argument("--warmup-images", type=int, default=20,
                        help="an untimed first comparison on this many images (0: none); its times are printed")
    parser.add_argument("--tfma-box-images", type=int, default=0,
                        help="also time box_metric 'tfma' on this many images of 3 classes (0: skip)")
    parser.add_argument("--tfma-box-thresholds", type=int, default=100)
    parser.add_argument("--with-model", action="store_true", help="the whole Evaluator on coco128 with a model")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--work-dir", help="keep the data here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.marginal_images and args.marginal_images <= args.images:
        parser.error("--marginal-images must be above --images (or 0)")

    work = args.work_dir or tempfile.mkdtemp(prefix="evaluator-bench-")
    os.makedirs(work, exist_ok=True)
    if args.warmup_images:
        # The first TFMA and COCOeval runs of a process also pay one-time imports and initialization; without a
        # warm-up that cost would land on whichever row runs first.
        warmup = _compare(work, args.warmup_images, args.classes[0], args.seed, args.modes, args.workers,
                          label="warm-up (not in the table): ")
    rows: List[Dict] = []
    for num_classes in args.classes:
        for num_images in [args.images] + ([args.marginal_images] if args.marginal_images else []):
            rows += _compare(work, num_images, num_classes, args.seed, args.modes, args.workers)

    target = [r for r in rows if r["images"] == args.images]
    worst_overall = max(r["diff"] for r in rows)
    print(f"\n== COCO mask + box AP: TFMA on Beam (product EvalConfig, slices by object count, stored predictions) "
          f"vs pycocotools COCOeval on the same predictions (parse, decode, paste, evaluate, accumulate)")
    if args.warmup_images:
        print(f"(after an untimed warm-up of both on {args.warmup_images} images: "
              + ", ".join(f"{r['mode']} TFMA {r['tfma']:.1f} s / COCOeval {r['coco']:.1f} s" for r in warmup)
              + "; a TFX Evaluator pays that first-run cost once per run)")
    print(f"{'images':>6} {'classes':>7} {'DirectRunner':<17} {'TFMA s':>8} {'COCOeval s':>10} {'ratio':>6} "
          f"{'(COCOeval calls only)':>22} {'max |diff|':>10} {'numbers':>7} {'slices':>6} {'mask AP':>7} "
          f"{'box AP':>7}")
    for r in rows:
        print(f"{r['images']:>6} {r['classes']:>7} {r['mode']:<17} {r['tfma']:>8.1f} {r['coco']:>10.1f} "
              f"{r['tfma'] / r['coco']:>6.2f} {r['cocoeval']:>10.1f} s, x{r['tfma'] / r['cocoeval']:>6.2f}   "
              f"{r['diff']:>10.1e} {r['compared']:>7} {r['slices']:>6} {r['mask_ap']:>7.4f} {r['box_ap']:>7.4f}")
    ratios = [r["tfma"] / r["coco"] for r in target]
    print(f"target at {args.images} images (whole wall times, fixed costs included): ratio <= 2 "
          f"({'met' if max(ratios) <= 2 else 'NOT met'}: worst {max(ratios):.2f}), differences <= 1e-4 "
          f"({'met' if worst_overall <= 1e-4 else 'NOT met'}: worst {worst_overall:.1e})")
    if args.marginal_images:
        n1, n2 = args.images, args.marginal_images
        print(f"\n== per-image (marginal) cost from {n1} to {n2} images: (t({n2}) - t({n1})) / {n2 - n1}; TFMA's fixed "
              f"cost is its time at 0 images on that line (pipeline construction, Beam's stages and worker start)")
        print(f"{'classes':>7} {'DirectRunner':<17} {'TFMA ms/img':>11} {'COCOeval ms/img':>15} {'marginal ratio':>14} "
              f"{'TFMA fixed s':>12} {'ratio at ' + str(n1):>12} {'ratio at ' + str(n2):>12}")
        marginal = []
        for small in target:
            large = next(r for r in rows if r["images"] == n2 and r["classes"] == small["classes"]
                         and r["mode"] == small["mode"])
            tfma_per = (large["tfma"] - small["tfma"]) / (n2 - n1)
            coco_per = (large["coco"] - small["coco"]) / (n2 - n1)
            marginal.append(tfma_per / coco_per)
            print(f"{small['classes']:>7} {small['mode']:<17} {1000 * tfma_per:>11.1f} {1000 * coco_per:>15.1f} "
                  f"{tfma_per / coco_per:>14.2f} {small['tfma'] - n1 * tfma_per:>12.1f} "
                  f"{small['tfma'] / small['coco']:>12.2f} {large['tfma'] / large['coco']:>12.2f}")
        print(f"marginal ratio (the cost per added image, fixed costs excluded): worst {max(marginal):.2f}")

    if args.tfma_box_images:
        from maskrcnn_tfx.pipelines import eval_config as eval_config_lib  # pylint: disable=g-import-not-at-top

        data = os.path.join(work, f"records_3c_{args.tfma_box_images}i_tfmabox.tfrecord")
        write_records(data, args.tfma_box_images, 3, args.seed + 1000)
        label_map = label_map_of(3)
        exact_s, _ = run_tfma(data, label_map, os.path.join(work, "tfma_exact_small"),
                              ["--direct_running_mode=in_memory", "--direct_num_workers=1"])
        tfma_box_s, _ = run_tfma(data, label_map, os.path.join(work, "tfma_box_small"),
                                 ["--direct_running_mode=in_memory", "--direct_num_workers=1"], box_metric="tfma",
                                 box_num_thresholds=args.tfma_box_thresholds)
        cost = eval_config_lib.tfma_box_metric_cost(3, args.tfma_box_thresholds)
        print(f"\n== box_metric 'tfma' (TFMA's COCOMeanAveragePrecision), 3 classes, {args.tfma_box_thresholds} "
              f"thresholds, {args.tfma_box_images} images, in process")
        print(f"TFMA with box_metric 'tfma': {tfma_box_s:.1f} s ({(tfma_box_s - exact_s) / args.tfma_box_images:.2f} "
              f"s per image over the default's {exact_s:.1f} s); the warning's estimate: "
              f"{cost.seconds_per_image:.2f} s per image, {cost.computations} computations")

    if args.with_model:
        figures = evaluator_on_coco128(os.path.join(work, "with_model"), args.train_steps, args.image_size)
        print(f"\n== the whole Evaluator component on coco128's eval split (tiny model at {args.image_size} px, "
              f"{args.train_steps} steps, product defaults, LocalDagRunner)")
        print(f"Evaluator {figures['evaluator_s']:.1f} s on {figures['eval_images']:.0f} eval images "
              f"({figures['evaluator_s'] / max(figures['eval_images'], 1):.2f} s per image, model included), "
              f"Trainer {figures['trainer_s']:.1f} s, whole run {figures['run_s']:.1f} s")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
