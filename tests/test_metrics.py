"""COCO box and mask mAP through TFMA agree with pycocotools' COCOeval; the blessing thresholds gate as configured.

The fixture is 10 images of 3 classes (ids with a gap) with small, medium and large objects of every class,
occlusions, same-class overlaps, crowd regions with detections on them, duplicates, misclassifications, false
positives, an image without objects and one without detections. The model is a tiny SavedModel whose
tf.Example signature looks up fixed detections by ``image/source_id``, shaped like trainer/export.py's outputs.

TFMA's own box AP (``box_metric="tfma"``) has no crowd handling and bins object areas by box area, so it is
compared with COCOeval ``bbox`` on the ground truth without crowd regions and with box areas; the exact metrics
(``COCOMaskAP``, ``COCOBoxAP``) are compared with COCOeval on the full ground truth.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest

import maskrcnn_tfx  # noqa: F401  (before TensorFlow/TFMA)
from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx import masks as mask_utils
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx.pipelines import eval_config as eval_config_lib
from maskrcnn_tfx.pipelines import metrics

LABEL_MAP = LabelMap.from_dict({1: "square", 2: "circle", 4: "triangle"})
MASK_SIZE = 28
# Mid-bin scores: TFMA's box metric bins scores into this many thresholds, and two detections of one class in
# one bin would tie there but not in COCO.
NUM_THRESHOLDS = 200
SUMMARY_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
SMALL, MEDIUM, LARGE = 32 ** 2, 96 ** 2, 1e10


# --------------------------------------------------------------------------------------------------------------
# The fixture: images, ground truth, detections
# --------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class FixtureImage:
    example: ef.InstanceExample
    gt_masks: np.ndarray  # [G, H, W]
    det_boxes: np.ndarray  # [D, 4] normalized ymin, xmin, ymax, xmax (float32, as served)
    det_classes: np.ndarray  # [D] int
    det_scores: np.ndarray  # [D] float32
    det_masks: np.ndarray  # [D, M, M] box-relative probabilities


def _shape_mask(kind: str, height: int, width: int, top: int, left: int, size: int) -> np.ndarray:
    import cv2

    mask = np.zeros((height, width), np.uint8)
    if kind == "square":
        mask[top:top + size, left:left + size] = 1
    elif kind == "circle":
        cv2.circle(mask, (left + size // 2, top + size // 2), size // 2, 1, thickness=-1)
    else:
        points = np.array([[left + size // 2, top], [left, top + size - 1], [left + size - 1, top + size - 1]])
        cv2.fillPoly(mask, [points.astype(np.int32)], 1)
    return mask


def _tight_box(mask: np.ndarray) -> np.ndarray:
    """Pixel (xmin, ymin, xmax, ymax) around the mask, COCO style (pixel edges)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def _box_area(box: np.ndarray) -> float:
    return float(np.prod(np.clip(box[2:] - box[:2], 0, None)))


def _area_bucket(area: float) -> int:
    return 0 if area < SMALL else (1 if area < MEDIUM else 2)


def _safely_inside_bucket(area: float) -> bool:
    # Away from 32^2 and 96^2: TFMA drops out-of-range ground truth where COCO ignores it, so a detection
    # straddling a boundary would count differently (a documented deviation, kept out of the comparison).
    return all(abs(area - edge) > 0.25 * edge for edge in (SMALL, MEDIUM))


def _box_relative_mask(full_mask: np.ndarray, box_px: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a Mask R-CNN head would output: the mask inside the box, resized to MxM, noisy probabilities."""
    import cv2

    x0, y0, x1, y1 = (int(round(v)) for v in box_px)
    crop = full_mask[max(y0, 0):max(y1, 1), max(x0, 0):max(x1, 1)].astype(np.float32)
    if crop.size == 0:
        crop = np.zeros((1, 1), np.float32)
    resized = cv2.resize(crop, (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_LINEAR)
    noisy = 0.1 + 0.8 * resized + rng.normal(0.0, 0.15, resized.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def _make_fixture(seed: int = 7) -> List[FixtureImage]:
    import cv2

    rng = np.random.default_rng(seed)
    names = {n: i for i, n in LABEL_MAP.entries}
    kinds = list(names)
    # Every class at every size across the set, so no COCO number is undefined (TFMA would report 0 for it).
    sizes = {"small": (16, 24), "medium": (42, 70), "large": (112, 124)}
    plan = [
        [("square", "large"), ("circle", "small"), ("triangle", "medium")],
        [("circle", "large"), ("circle", "medium"), ("square", "small")],  # same-class overlap likely
        [("triangle", "large"), ("square", "medium"), ("triangle", "small"), ("circle", "small")],
        [("square", "medium"), ("square", "medium"), ("circle", "medium"), ("triangle", "small")],
        [("circle", "medium"), ("triangle", "medium"), ("square", "large")],
        [],  # no objects: only false positives
        [("triangle", "large"), ("circle", "small"), ("square", "small")],
        [("circle", "large"), ("triangle", "small"), ("square", "medium")],  # no detections at all
        [("square", "small"), ("circle", "small"), ("triangle", "medium"), ("circle", "medium")],
        [("triangle", "medium"), ("square", "large"), ("circle", "small")],
    ]
    crowd_images = {1, 4, 8}
    no_detection_images = {7}
    score_bins = rng.permutation(np.arange(30, NUM_THRESHOLDS - 10))
    next_bin = iter(score_bins)

    def score() -> float:
        return (next(next_bin) + 0.5) / (NUM_THRESHOLDS - 1)

    images = []
    for index, objects in enumerate(plan):
        height, width = int(rng.choice([180, 200, 220])), int(rng.choice([200, 240, 260]))
        visible = np.zeros((height, width), np.int32)  # instance index + 1 per pixel; later shapes occlude
        kinds_of: List[str] = []
        crowd_of: List[bool] = []
        placements = list(objects) + ([("crowd", "")] if index in crowd_images else [])
        for kind, size_name in placements:
            for _ in range(200):
                if kind == "crowd":  # a crowd region: a blob of small circles, of class "circle"
                    candidate = np.zeros((height, width), np.uint8)
                    cy, cx = int(rng.integers(40, height - 40)), int(rng.integers(40, width - 40))
                    for _ in range(6):
                        cv2.circle(candidate, (cx + int(rng.integers(-25, 25)), cy + int(rng.integers(-25, 25))),
                                   9, 1, -1)
                else:
                    low, high = sizes[size_name]
                    size = int(rng.integers(low, high + 1))
                    top, left = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
                    candidate = _shape_mask(kind, height, width, top, left, size)
                trial = visible.copy()
                trial[candidate > 0] = len(kinds_of) + 1
                # Every object's visible box stays well inside its area bucket (occlusion shrinks boxes).
                checked = len(kinds_of) + (0 if kind == "crowd" else 1)
                if all(np.any(trial == j + 1) and _safely_inside_bucket(_box_area(_tight_box(trial == j + 1)))
                       for j in range(checked)):
                    visible = trial
                    kinds_of.append("circle" if kind == "crowd" else kind)
                    crowd_of.append(kind == "crowd")
                    break
            else:
                raise RuntimeError("could not place an object; change the seed")
        gt_masks = np.stack([(visible == j + 1).astype(np.uint8) for j in range(len(kinds_of))]) \
            if kinds_of else np.zeros((0, height, width), np.uint8)
        assert all(m.sum() > 0 for m in gt_masks)
        gt_boxes_px = np.stack([_tight_box(m) for m in gt_masks]) if len(gt_masks) else np.zeros((0, 4))
        normalized = (gt_boxes_px[:, [1, 0, 3, 2]] / [height, width, height, width]).astype(np.float32)
        example = ef.InstanceExample(
            source_id=100 + 7 * index, encoded=b"\x89PNG fake " + bytes([index]), format="png", height=height,
            width=width, boxes=normalized.reshape(-1, 4), classes=np.array([names[k] for k in kinds_of], np.int64),
            class_texts=list(kinds_of), is_crowd=np.array(crowd_of, np.int64),
            areas=gt_masks.reshape(len(gt_masks), height * width).sum(axis=1).astype(np.float32),
            masks_png=[ef.encode_png_mask(m) for m in gt_masks])

        boxes, classes, scores, det_masks = [], [], [], []

        def add(box_px: np.ndarray, class_id: int, full_mask: np.ndarray) -> None:
            box = np.clip(box_px, 0, [width, height, width, height])
            boxes.append(box[[1, 0, 3, 2]] / [height, width, height, width])
            classes.append(class_id)
            scores.append(score())
            det_masks.append(_box_relative_mask(full_mask, box, rng))

        if index not in no_detection_images:
            for j, kind in enumerate(kinds_of):
                mask, box_px = gt_masks[j], gt_boxes_px[j]
                if crowd_of[j]:
                    for _ in range(2):  # detections on the crowd region: ignored by COCO
                        x, y = _tight_box(mask)[:2] + rng.integers(0, 20, 2)
                        add(np.array([x, y, x + 14, y + 14], np.float64), names["circle"], mask)
                    continue
                if rng.random() < 0.15:
                    continue  # missed
                extent = box_px[2:] - box_px[:2]
                bucket = _area_bucket(_box_area(box_px))
                for _ in range(100):  # a localization error that keeps the box in its object's area bucket
                    jitter = rng.normal(0.0, 0.06, 4) * np.concatenate([extent, extent])
                    det_px = np.clip(box_px + jitter, 0, [width, height, width, height])
                    if det_px[2] > det_px[0] and det_px[3] > det_px[1] and _area_bucket(_box_area(det_px)) == bucket:
                        break
                class_id = names[kind] if rng.random() > 0.1 else names[kinds[int(rng.integers(0, 3))]]
                add(det_px, class_id, mask)
                if rng.random() < 0.25:  # a duplicate: whichever scores lower is a false positive
                    shift = np.tile(rng.normal(0.0, 2.0, 2), 2)
                    duplicate = np.clip(det_px + shift, 0, [width, height, width, height])
                    if _area_bucket(_box_area(duplicate)) == bucket:
                        add(duplicate, class_id, mask)
            for _ in range(int(rng.integers(1, 3))):  # false positives, too small to match anything bigger
                size = float(rng.integers(10, 20))
                x, y = float(rng.integers(0, width - size)), float(rng.integers(0, height - size))
                blob = _shape_mask("circle", height, width, int(y), int(x), int(size))
                add(np.array([x, y, x + size, y + size]), int(rng.choice(LABEL_MAP.ids)), blob)
            if index == 2:  # a class id outside the label map: every evaluation leaves it out
                add(np.array([5.0, 5.0, 40.0, 40.0]), 3, gt_masks[0])
        images.append(FixtureImage(
            example=example, gt_masks=gt_masks,
            det_boxes=np.array(boxes, np.float32).reshape(-1, 4), det_classes=np.array(classes, np.int64),
            det_scores=np.array(scores, np.float32), det_masks=np.array(det_masks, np.float32).reshape(
                -1, MASK_SIZE, MASK_SIZE)))
    return images


def _without_detections(images: Sequence[FixtureImage], keep_fraction: float, seed: int) -> List[FixtureImage]:
    """The same images with only some detections kept: a worse model."""
    rng = np.random.default_rng(seed)
    worse = []
    for image in images:
        keep = rng.random(len(image.det_scores)) < keep_fraction
        worse.append(dataclasses.replace(image, det_boxes=image.det_boxes[keep], det_classes=image.det_classes[keep],
                                         det_scores=image.det_scores[keep], det_masks=image.det_masks[keep]))
    return worse


# --------------------------------------------------------------------------------------------------------------
# The reference: pycocotools' COCOeval on the whole set
# --------------------------------------------------------------------------------------------------------------

def _pixel_box(normalized: np.ndarray, height: int, width: int) -> List[float]:
    """Pixel COCO xywh of a normalized (ymin, xmin, ymax, xmax) box, computed as the metrics do (float64)."""
    ymin, xmin, ymax, xmax = (float(v) for v in np.asarray(normalized, np.float64))
    return [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height]


def _coco_reference(images: Sequence[FixtureImage], iou_type: str, *, tfma_box_semantics: bool = False,
                    image_ids: Optional[Sequence[int]] = None) -> Dict[str, object]:
    """COCOeval's summary numbers and per-class AP (COCOeval with catIds=[c]) for the fixture.

    ``tfma_box_semantics``: the ground truth that TFMA's box metric sees: no crowd regions, box areas.
    """
    from pycocotools import mask as mask_api
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    selected = [im for im in images if image_ids is None or im.example.source_id in image_ids]
    gt = {"images": [], "categories": [{"id": c} for c in LABEL_MAP.ids], "annotations": []}
    results = []
    for image in selected:
        ex = image.example
        gt["images"].append({"id": ex.source_id, "height": ex.height, "width": ex.width})
        for j in range(ex.num_instances):
            if tfma_box_semantics and ex.is_crowd[j]:
                continue
            bbox = _pixel_box(ex.boxes[j], ex.height, ex.width)
            area = bbox[2] * bbox[3] if tfma_box_semantics else float(ex.areas[j])
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": ex.source_id, "category_id": int(ex.classes[j]),
                "iscrowd": int(ex.is_crowd[j]), "area": area, "bbox": bbox,
                "segmentation": mask_api.encode(np.asfortranarray(image.gt_masks[j]))})
        if iou_type == "segm":
            full = mask_utils.paste_masks(image.det_masks, image.det_boxes, ex.height, ex.width)
            for i, rle in enumerate(mask_utils.encode_rle(full)):
                results.append({"image_id": ex.source_id, "category_id": int(image.det_classes[i]),
                                "score": float(image.det_scores[i]), "segmentation": rle})
        else:
            for i in range(len(image.det_scores)):
                results.append({"image_id": ex.source_id, "category_id": int(image.det_classes[i]),
                                "score": float(image.det_scores[i]),
                                "bbox": _pixel_box(image.det_boxes[i], ex.height, ex.width)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)

        def stats(cat_ids: Sequence[int]) -> np.ndarray:
            evaluation = COCOeval(coco_gt, coco_dt, iou_type)
            evaluation.params.catIds = list(cat_ids)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            return np.where(evaluation.stats[:6] == -1, np.nan, evaluation.stats[:6])

        overall = stats(LABEL_MAP.ids)
        reference: Dict[str, object] = dict(zip(SUMMARY_KEYS, overall.tolist()))
        reference["per_class"] = {c: float(stats([c])[0]) for c in LABEL_MAP.ids}
    return reference


def _assert_close(actual: Dict[str, float], expected: Dict[str, object], what: str) -> None:
    for key in SUMMARY_KEYS:
        assert _close(actual[key], expected[key]), f"{what} {key}: {actual[key]} != COCOeval {expected[key]}"
    for class_id, value in expected["per_class"].items():
        got = actual["per_class"][class_id]
        assert _close(got, value), f"{what} class {class_id}: {got} != COCOeval {value}"


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-4


# --------------------------------------------------------------------------------------------------------------
# The model and TFMA
# --------------------------------------------------------------------------------------------------------------

def _save_fixed_model(images: Sequence[FixtureImage], path: str) -> None:
    """A SavedModel whose tf.Example signature returns each image's fixed detections (found by source_id)."""
    import tensorflow as tf

    ids = np.array([im.example.source_id for im in images], np.int64)
    n = max(1, max(len(im.det_scores) for im in images))

    def padded(arrays, shape, dtype):
        out = np.zeros((len(arrays),) + shape, dtype)
        for i, a in enumerate(arrays):
            out[i, :len(a)] = a
        return out

    tables = {
        metrics.DETECTION_BOXES: padded([im.det_boxes for im in images], (n, 4), np.float32),
        metrics.DETECTION_CLASSES: padded([im.det_classes for im in images], (n,), np.int32),
        metrics.DETECTION_SCORES: padded([im.det_scores for im in images], (n,), np.float32),
        metrics.DETECTION_MASKS: padded([im.det_masks for im in images], (n, MASK_SIZE, MASK_SIZE), np.float32),
        metrics.NUM_DETECTIONS: np.array([len(im.det_scores) for im in images], np.int32),
        metrics.IMAGE_SIZE: np.array([[im.example.height, im.example.width] for im in images], np.int32),
    }

    class FixedDetections(tf.Module):
        def __init__(self):
            super().__init__()
            self._ids = tf.constant(ids)
            self._tables = {k: tf.constant(v) for k, v in tables.items()}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            parsed = tf.io.parse_example(examples, {ef.SOURCE_ID: tf.io.FixedLenFeature([], tf.string)})
            source_ids = tf.strings.to_number(parsed[ef.SOURCE_ID], tf.int64)
            rows = tf.argmax(tf.cast(tf.equal(source_ids[:, None], self._ids[None, :]), tf.int32), axis=1)
            return {k: tf.gather(v, rows) for k, v in self._tables.items()}

    module = FixedDetections()
    tf.saved_model.save(module, path, signatures={eval_config_lib.DEFAULT_SIGNATURE: module.serve})


def _write_examples(images: Sequence[FixtureImage], path: str) -> str:
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for image in images:
            writer.write(ef.to_tf_example(image.example).SerializeToString())
    return path


def _run_tfma(eval_config, model_dirs: Dict[str, str], data_path: str, output_path: str, schema=None):
    """Runs TFMA as the TFX Evaluator does: with maskrcnn_tfx.pipelines.metrics.custom_extractors and, given a schema,
    the features decoded by it."""
    import tensorflow_model_analysis as tfma
    from tfx_bsl.tfxio import tensor_adapter, tf_example_record

    shared = [tfma.default_eval_shared_model(eval_saved_model_path=path, model_name=name, eval_config=eval_config)
              for name, path in model_dirs.items()]
    shared_model = shared[0] if len(shared) == 1 else shared
    adapter_config = None
    if schema is not None:
        tfxio = tf_example_record.TFExampleRecord(file_pattern=data_path, schema=schema,
                                                  raw_record_column_name=tfma.ARROW_INPUT_COLUMN)
        adapter_config = tensor_adapter.TensorAdapterConfig(arrow_schema=tfxio.ArrowSchema(),
                                                            tensor_representations=tfxio.TensorRepresentations())
    return tfma.run_model_analysis(
        eval_shared_model=shared_model, eval_config=eval_config, data_location=data_path, output_path=output_path,
        schema=schema, extractors=metrics.custom_extractors(shared_model, eval_config, adapter_config))


def _inferred_schema(data_path: str):
    """The schema TFX's SchemaGen would infer for the examples (feature shapes included)."""
    import tensorflow_data_validation as tfdv

    return tfdv.infer_schema(tfdv.generate_statistics_from_tfrecord(data_path), infer_feature_shape=True)


def _slice_metrics(result, slice_key=(), model_name: str = "") -> Dict[str, float]:
    for key, values in result.slicing_metrics:
        if key == slice_key:
            # {output name: {sub key: {metric name: value}}}; model names prefix nothing with one model.
            flat = values[""][""]
            # float(): TFMA writes an undefined value (NaN) as the string "NaN".
            return {name: float(value["doubleValue"]) for name, value in flat.items() if "doubleValue" in value}
    raise AssertionError(f"no slice {slice_key} in {[k for k, _ in result.slicing_metrics]}")


def _as_summary(values: Dict[str, float], name: str) -> Dict[str, object]:
    names = metrics.metric_names(name, LABEL_MAP.names)
    summary: Dict[str, object] = {key: values[n] for key, n in zip(SUMMARY_KEYS, names)}
    summary["per_class"] = {c: values[f"{name}/{LABEL_MAP.name_of(c)}"] for c in LABEL_MAP.ids}
    return summary


@pytest.fixture(scope="module")
def fixture_images() -> List[FixtureImage]:
    return _make_fixture()


@pytest.fixture(scope="module")
def tfma_run(fixture_images, tmp_path_factory):
    """One TFMA run with all three metrics: mask AP, TFMA's box AP and the exact box AP ("coco_box_ap")."""
    work = tmp_path_factory.mktemp("tfma")
    model_dir = str(work / "model")
    _save_fixed_model(fixture_images, model_dir)
    data = _write_examples(fixture_images, str(work / "eval.tfrecord"))
    config = eval_config_lib.build_eval_config(LABEL_MAP, box_metric="tfma", box_num_thresholds=NUM_THRESHOLDS)
    config.metrics_specs[0].metrics.append(
        eval_config_lib.coco_metric_config(LABEL_MAP, "bbox", name="coco_box_ap"))
    return _run_tfma(config, {"": model_dir}, data, str(work / "out"))


# --------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------

def test_fixture_defines_every_coco_number(fixture_images):
    # The comparisons below are only meaningful if no number is undefined (COCO -1, TFMA 0).
    for iou_type, tfma_semantics in (("segm", False), ("bbox", False), ("bbox", True)):
        reference = _coco_reference(fixture_images, iou_type, tfma_box_semantics=tfma_semantics)
        assert not any(math.isnan(reference[k]) for k in SUMMARY_KEYS), reference
        assert not any(math.isnan(v) for v in reference["per_class"].values()), reference
        assert all(0.05 < reference[k] < 0.95 for k in SUMMARY_KEYS), reference  # neither trivial nor empty
    assert sum(int(im.example.is_crowd.sum()) for im in fixture_images) == 3


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_per_image_matching_and_accumulation_match_cocoeval(fixture_images, iou_type):
    # The metric's two halves without Beam: evaluate_image per image, summarize over them, in shuffled order.
    evaluations = []
    for image in fixture_images:
        serialized = ef.to_tf_example(image.example).SerializeToString()
        parsed = ef.from_tf_example(serialized)
        features = {ef.HEIGHT: [parsed.height], ef.WIDTH: [parsed.width], ef.SOURCE_ID: [str(parsed.source_id)],
                    ef.BBOX_YMIN: parsed.boxes[:, 0], ef.BBOX_XMIN: parsed.boxes[:, 1],
                    ef.BBOX_YMAX: parsed.boxes[:, 2], ef.BBOX_XMAX: parsed.boxes[:, 3],
                    ef.CLASS_LABEL: parsed.classes, ef.IS_CROWD: parsed.is_crowd, ef.AREA: parsed.areas,
                    ef.MASK: np.array(parsed.masks_png, dtype=object)}
        outputs = {metrics.DETECTION_BOXES: image.det_boxes, metrics.DETECTION_CLASSES: image.det_classes,
                   metrics.DETECTION_SCORES: image.det_scores, metrics.NUM_DETECTIONS: [len(image.det_scores)],
                   metrics.DETECTION_MASKS: image.det_masks}
        ground_truth = metrics.ground_truth_from_features(features, need_masks=iou_type == "segm")
        detections = metrics.detections_from_outputs(outputs, parsed.height, parsed.width,
                                                     need_masks=iou_type == "segm")
        evaluations.append(metrics.evaluate_image(ground_truth, detections, iou_type, LABEL_MAP.ids))
    np.random.default_rng(0).shuffle(evaluations)
    summary = metrics.summarize(evaluations, iou_type, LABEL_MAP.ids)
    _assert_close(summary, _coco_reference(fixture_images, iou_type), f"{iou_type} summarize")

    # What crosses Beam: each image's matching as bytes, decoded to the same arrays and the same summary.
    decoded = [metrics.ImageEval.from_bytes(e.to_bytes()) for e in evaluations]
    for before, after in zip(evaluations, decoded):
        assert after.sort_key == before.sort_key
        for name in ("keys", "num_dt", "num_gt", "dt_scores", "dt_matched", "dt_ignore", "gt_ignore"):
            np.testing.assert_array_equal(getattr(after, name), getattr(before, name), err_msg=name)
            assert getattr(after, name).dtype.kind == getattr(before, name).dtype.kind, name
    again = metrics.summarize(decoded, iou_type, LABEL_MAP.ids)
    np.testing.assert_array_equal(again["pr_curves"], summary["pr_curves"])
    assert again["per_class"] == pytest.approx(summary["per_class"], nan_ok=True)
    with pytest.raises(ValueError, match="header"):
        metrics.ImageEval.from_bytes(evaluations[0].to_bytes() + b"\0")


def _boxes_only_image(source_id: int, gt_box_px: Sequence[float], det_boxes_px: Sequence[Sequence[float]],
                      det_scores: Sequence[float], size: int = 100) -> FixtureImage:
    """A one-object image of class 1 with box detections of class 1."""
    mask = np.zeros((size, size), np.uint8)
    x0, y0, x1, y1 = (int(v) for v in gt_box_px)
    mask[y0:y1, x0:x1] = 1
    normalized = lambda b: np.array([b[1], b[0], b[3], b[2]], np.float32) / size  # noqa: E731
    example = ef.InstanceExample(
        source_id=source_id, encoded=b"img", format="png", height=size, width=size,
        boxes=normalized(gt_box_px)[np.newaxis], classes=np.array([1]), class_texts=["square"],
        is_crowd=np.array([0]), areas=np.array([mask.sum()], np.float32), masks_png=[ef.encode_png_mask(mask)])
    return FixtureImage(example=example, gt_masks=mask[np.newaxis],
                        det_boxes=np.stack([normalized(b) for b in det_boxes_px]),
                        det_classes=np.ones(len(det_boxes_px), np.int64),
                        det_scores=np.array(det_scores, np.float32),
                        det_masks=np.ones((len(det_boxes_px), MASK_SIZE, MASK_SIZE), np.float32))


def test_equal_scores_across_images_are_ordered_as_cocoeval_orders_images():
    # COCO breaks score ties by image id order; Beam delivers images in any order, so the metric must sort.
    images = [
        _boxes_only_image(20, [10, 10, 50, 50], [[60, 60, 90, 90]], [0.5]),  # a false positive at 0.5
        _boxes_only_image(10, [10, 10, 50, 50], [[10, 10, 50, 50]], [0.5]),  # a true positive at 0.5
        _boxes_only_image(30, [10, 10, 50, 50], [[11, 11, 50, 50]], [0.9]),
    ]
    reference = _coco_reference(images, "bbox")
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        evaluations = []
        for i in order:
            ex = images[i].example
            features = {ef.HEIGHT: [ex.height], ef.WIDTH: [ex.width], ef.SOURCE_ID: [str(ex.source_id)],
                        ef.BBOX_YMIN: ex.boxes[:, 0], ef.BBOX_XMIN: ex.boxes[:, 1], ef.BBOX_YMAX: ex.boxes[:, 2],
                        ef.BBOX_XMAX: ex.boxes[:, 3], ef.CLASS_LABEL: ex.classes, ef.AREA: ex.areas}
            outputs = {metrics.DETECTION_BOXES: images[i].det_boxes, metrics.DETECTION_CLASSES: [1],
                       metrics.DETECTION_SCORES: images[i].det_scores, metrics.NUM_DETECTIONS: [1]}
            evaluations.append(metrics.evaluate_image(
                metrics.ground_truth_from_features(features, need_masks=False),
                metrics.detections_from_outputs(outputs, ex.height, ex.width, need_masks=False), "bbox", [1]))
        summary = metrics.summarize(evaluations, "bbox", [1])
        assert _close(summary["ap50"], reference["ap50"]), (order, summary["ap50"], reference["ap50"])
    # Image 10's true positive ranks before image 20's false positive: full precision up to recall 2/3.
    assert reference["ap50"] > 0.99 * (2 / 3)


def test_summarize_of_nothing_is_undefined():
    summary = metrics.summarize([], "segm", LABEL_MAP.ids)
    assert all(math.isnan(summary[k]) for k in SUMMARY_KEYS)
    assert all(math.isnan(v) for v in summary["per_class"].values())


@pytest.mark.slow
def test_tfma_mask_ap_matches_cocoeval_segm(fixture_images, tfma_run):
    overall = _as_summary(_slice_metrics(tfma_run), "mask_ap")
    _assert_close(overall, _coco_reference(fixture_images, "segm"), "TFMA mask_ap")


@pytest.mark.slow
def test_tfma_exact_box_ap_matches_cocoeval_bbox_with_crowd(fixture_images, tfma_run):
    overall = _as_summary(_slice_metrics(tfma_run), "coco_box_ap")
    _assert_close(overall, _coco_reference(fixture_images, "bbox"), "COCOBoxAP")


@pytest.mark.slow
def test_tfma_own_box_ap_matches_cocoeval_bbox_without_crowd(fixture_images, tfma_run):
    overall = _as_summary(_slice_metrics(tfma_run), "box_ap")
    _assert_close(overall, _coco_reference(fixture_images, "bbox", tfma_box_semantics=True), "TFMA box_ap")
    # ...and it does differ from COCO where crowd regions matter (detections on them are false positives).
    official = _coco_reference(fixture_images, "bbox")
    assert overall["ap"] < official["ap"] - 1e-3


@pytest.mark.slow
def test_tfma_own_box_ap_counts_classes_without_ground_truth_as_zero(tfma_run):
    # The documented deviation: on the slice of images without objects COCO's AP is undefined (-1), TFMA's is 0.
    values = _slice_metrics(tfma_run, ((metrics.OBJECT_COUNT, "0"),))
    assert values["box_ap"] == 0.0 and values["box_ap/circle"] == 0.0
    assert math.isnan(values["coco_box_ap"]) and math.isnan(values["mask_ap"])
    assert math.isnan(values["mask_ap/circle"])


@pytest.mark.slow
def test_tfma_mask_ap_per_object_count_slice_matches_cocoeval(fixture_images, tfma_run):
    buckets: Dict[str, List[int]] = {}
    for image in fixture_images:
        count = int((image.example.is_crowd == 0).sum())
        buckets.setdefault(metrics.object_count_bucket(count), []).append(image.example.source_id)
    assert len(buckets) >= 3
    for bucket, ids in buckets.items():
        values = _slice_metrics(tfma_run, ((metrics.OBJECT_COUNT, bucket),))
        expected = _coco_reference(fixture_images, "segm", image_ids=ids)
        _assert_close(_as_summary(values, "mask_ap"), expected, f"mask_ap on object count {bucket}")


def test_eval_inputs_extractor_adds_pixel_boxes_and_object_count():
    from tensorflow_model_analysis import constants

    features = {ef.HEIGHT: np.array([100]), ef.WIDTH: np.array([200]), ef.SOURCE_ID: np.array([b"5"], object),
                ef.BBOX_YMIN: np.array([0.1, 0.5, 0.0]), ef.BBOX_XMIN: np.array([0.2, 0.5, 0.0]),
                ef.BBOX_YMAX: np.array([0.3, 1.0, 1.0]), ef.BBOX_XMAX: np.array([0.4, 1.0, 1.0]),
                ef.CLASS_LABEL: np.array([1, 2, 2]), ef.IS_CROWD: np.array([0, 0, 1])}

    def outputs(num: int, size=(100, 200)):
        return {metrics.DETECTION_BOXES: np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.5, 0.5], [0, 0, 0, 0]]),
                metrics.DETECTION_CLASSES: np.array([1, 4, 0], np.int32),
                metrics.DETECTION_SCORES: np.array([0.9, 0.4, 0.0]), metrics.NUM_DETECTIONS: np.array(num),
                metrics.IMAGE_SIZE: np.array(size)}

    single = metrics._add_eval_inputs({constants.FEATURES_KEY: features, constants.PREDICTIONS_KEY: outputs(2)},
                                      model_names=[""])
    # Crowd regions are not in TFMA's ground truth; boxes are (left, top, right, bottom) pixels, then class.
    np.testing.assert_allclose(single[constants.FEATURES_KEY][metrics.GROUNDTRUTH_PIXEL_BOXES],
                               [[40, 10, 80, 30, 1], [100, 50, 200, 100, 2]])
    np.testing.assert_allclose(single[constants.PREDICTIONS_KEY][metrics.DETECTION_PIXEL_BOXES],
                               [[40, 10, 80, 30, 1, 0.9], [0, 0, 100, 50, 4, 0.4]])  # padding row dropped
    assert list(single[constants.FEATURES_KEY][metrics.OBJECT_COUNT]) == ["2-3"]
    assert metrics.DETECTION_PIXEL_BOXES not in outputs(2)  # the input extracts are left unchanged

    both = metrics._add_eval_inputs(
        {constants.FEATURES_KEY: features,
         constants.PREDICTIONS_KEY: {"candidate": outputs(1), "baseline": outputs(2)}},
        model_names=["candidate", "baseline"])
    assert len(both[constants.PREDICTIONS_KEY]["candidate"][metrics.DETECTION_PIXEL_BOXES]) == 1
    assert len(both[constants.PREDICTIONS_KEY]["baseline"][metrics.DETECTION_PIXEL_BOXES]) == 2

    with pytest.raises(ValueError, match="the model saw a 50x200 image"):
        metrics._add_eval_inputs({constants.FEATURES_KEY: features, constants.PREDICTIONS_KEY: outputs(2, (50, 200))},
                                 model_names=[""])

    # Without TFMA's box metric nothing reads the pixel boxes: only the object count is added.
    bare = metrics._add_eval_inputs({constants.FEATURES_KEY: features, constants.PREDICTIONS_KEY: outputs(2)},
                                    model_names=[""], pixel_boxes=False)
    assert list(bare[constants.FEATURES_KEY][metrics.OBJECT_COUNT]) == ["2-3"]
    assert metrics.GROUNDTRUTH_PIXEL_BOXES not in bare[constants.FEATURES_KEY]
    assert metrics.DETECTION_PIXEL_BOXES not in bare[constants.PREDICTIONS_KEY]
    assert metrics._uses_pixel_boxes(eval_config_lib.build_eval_config(LABEL_MAP, box_metric="tfma"))
    assert not metrics._uses_pixel_boxes(eval_config_lib.build_eval_config(LABEL_MAP))


def test_object_count_buckets():
    assert [metrics.object_count_bucket(n) for n in (0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 500)] == \
        ["0", "1", "2-3", "2-3", "4-7", "4-7", "8-15", "8-15", "16-31", "16-31", "32+", "32+"]


def test_eval_config_reports_every_coco_number():
    import tensorflow_model_analysis as tfma

    config = eval_config_lib.build_eval_config(LABEL_MAP, box_metric="tfma")
    expected_names = set(metrics.metric_names("box_ap", LABEL_MAP.names))
    # TFMA's COCOMeanAveragePrecision, through its subclass that also evaluates with a baseline.
    assert issubclass(metrics.BoxMeanAveragePrecision, tfma.metrics.COCOMeanAveragePrecision)
    box_configs = [m for m in config.metrics_specs[0].metrics if m.class_name == "BoxMeanAveragePrecision"]
    assert {m.module for m in box_configs} == {"maskrcnn_tfx.pipelines.metrics"}
    assert {json.loads(m.config)["name"] for m in box_configs} == expected_names
    by_name = {json.loads(m.config)["name"]: json.loads(m.config) for m in box_configs}
    assert by_name["box_ap_small"]["area_range"] == [0.0, 1024.0]
    assert by_name["box_ap50"]["iou_thresholds"] == [0.5]
    assert by_name["box_ap/triangle"]["class_ids"] == [4]
    assert by_name["box_ap"]["labels_to_stack"] == [metrics.GROUNDTRUTH_PIXEL_BOXES]
    mask = [m for m in config.metrics_specs[0].metrics if m.class_name == "COCOMaskAP"]
    assert len(mask) == 1 and mask[0].module == "maskrcnn_tfx.pipelines.metrics"
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], [metrics.OBJECT_COUNT]]
    assert config.model_specs[0].signature_name == eval_config_lib.DEFAULT_SIGNATURE
    assert len(config.model_specs) == 1

    # The default: the exact box AP, computed like the mask AP.
    exact = eval_config_lib.build_eval_config(LABEL_MAP)
    assert [m.class_name for m in exact.metrics_specs[0].metrics] == ["COCOMaskAP", "COCOBoxAP"]
    assert exact == eval_config_lib.build_eval_config(LABEL_MAP, box_metric="pycocotools")
    with pytest.raises(ValueError):
        eval_config_lib.build_eval_config(LABEL_MAP, box_metric="other")
    with pytest.raises(ValueError):
        eval_config_lib.build_eval_config(LABEL_MAP, min_mask_ap=1.5)
    with pytest.raises(ValueError):
        eval_config_lib.build_eval_config(LABEL_MAP, max_ap_drop=-0.1)


def _box_match_inputs(metric, eval_config, model_names):
    """Each model's box-matching computation fed one example, as the Evaluator does before combining."""
    from tensorflow_model_analysis import constants
    from tensorflow_model_analysis.metrics import metric_util

    extracts = {
        constants.FEATURES_KEY: {metrics.GROUNDTRUTH_PIXEL_BOXES: np.array([[10.0, 10.0, 50.0, 50.0, 1.0]])},
        constants.PREDICTIONS_KEY: {name: {metrics.DETECTION_PIXEL_BOXES: np.array([[12.0, 12.0, 50.0, 50.0, 1.0,
                                                                                     score]])}
                                    for name, score in zip(model_names, (0.9, 0.4))},
    }
    by_model = {}
    for computation in metric.computations(eval_config=eval_config, model_names=model_names):
        if not getattr(computation, "preprocessors", None):
            continue
        (model_name,) = {key.model_name for key in computation.keys}
        inputs = [i for p in computation.preprocessors for i in p.process(dict(extracts))]
        # What the confusion-matrix combiner does with each input.
        by_model[model_name] = [pair for i in inputs for pair in metric_util.to_label_prediction_example_weight(
            i, eval_config=eval_config, model_name=model_name)]
    return by_model


def test_tfma_box_metric_with_a_baseline_keys_box_matches_by_model():
    import tensorflow_model_analysis as tfma

    eval_config = eval_config_lib.build_eval_config(LABEL_MAP, with_baseline=True)
    names = [tfma.CANDIDATE_KEY, tfma.BASELINE_KEY]
    arguments = {"class_ids": [1], "iou_thresholds": [0.5], "num_thresholds": 10,
                 "labels_to_stack": [metrics.GROUNDTRUTH_PIXEL_BOXES],
                 "predictions_to_stack": [metrics.DETECTION_PIXEL_BOXES]}
    # TFMA 0.47's own class: its box matches are not keyed by model, which its combiner needs with two models.
    with pytest.raises(ValueError, match='expected dict for "candidate"'):
        _box_match_inputs(tfma.metrics.COCOMeanAveragePrecision(**arguments), eval_config, names)
    # The subclass: each model's computation gets its own model's match (one true positive at its own score).
    by_model = _box_match_inputs(metrics.BoxMeanAveragePrecision(**arguments), eval_config, names)
    assert set(by_model) == set(names)
    for name, score in zip(names, (0.9, 0.4)):
        [(label, prediction, _)] = by_model[name]
        assert float(label) == 1.0 and float(prediction) == pytest.approx(score)


def test_default_signature_is_the_exported_tf_example_signature():
    export = pytest.importorskip("maskrcnn_tfx.trainer.export")
    assert eval_config_lib.DEFAULT_SIGNATURE == export.TF_EXAMPLE_SIGNATURE
    assert set(metrics.REQUIRED_OUTPUTS["mask"]) <= set(export.OUTPUT_KEYS)


def _validate(config, values: Dict[str, float], baseline: Optional[Dict[str, float]] = None,
              slice_key=()) -> bool:
    """TFMA's validator on given metric values (what the Evaluator does after computing them)."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.evaluators import metrics_validator
    from tensorflow_model_analysis.metrics import metric_types

    config = tfma.utils.update_eval_config_with_defaults(config, has_baseline=baseline is not None,
                                                          rubber_stamp=True)
    candidate = tfma.CANDIDATE_KEY if baseline is not None else ""
    sliced = {}
    for name, value in values.items():
        sliced[metric_types.MetricKey(name=name, model_name=candidate)] = value
        if baseline is not None:
            sliced[metric_types.MetricKey(name=name, model_name=tfma.BASELINE_KEY)] = baseline[name]
            sliced[metric_types.MetricKey(name=name, model_name=candidate, is_diff=True)] = value - baseline[name]
    return metrics_validator.validate_metrics((slice_key, sliced), config).validation_ok


@pytest.mark.parametrize("box_metric", ["tfma", "pycocotools"])
def test_blessing_thresholds_pass_and_fail_as_configured(box_metric):
    def config(with_baseline: bool):
        return eval_config_lib.build_eval_config(LABEL_MAP, min_mask_ap=0.3, min_box_ap=0.4, max_ap_drop=0.01,
                                                 with_baseline=with_baseline, box_metric=box_metric)

    good = {"mask_ap": 0.35, "box_ap": 0.45}
    assert _validate(config(False), good)
    assert not _validate(config(False), {"mask_ap": 0.29, "box_ap": 0.45})  # mask AP under its bound
    assert not _validate(config(False), {"mask_ap": 0.35, "box_ap": 0.39})  # box AP under its bound
    assert not _validate(config(False), {"mask_ap": float("nan"), "box_ap": 0.45})  # undefined never blesses
    # Against a baseline: at most 0.01 worse, and still above the bounds.
    assert _validate(config(True), good, baseline={"mask_ap": 0.355, "box_ap": 0.45})
    assert _validate(config(True), good, baseline=dict(good))  # the same model passes
    assert not _validate(config(True), good, baseline={"mask_ap": 0.37, "box_ap": 0.45})  # mask AP fell 0.02
    assert not _validate(config(True), good, baseline={"mask_ap": 0.35, "box_ap": 0.47})  # box AP fell 0.02
    # TFX's first run, without a blessed baseline yet: the change thresholds drop out, the bounds stay.
    assert _validate(config(True), good)
    assert not _validate(config(True), {"mask_ap": 0.29, "box_ap": 0.45})
    # Thresholds gate the overall slice only, not the object-count slices.
    assert _validate(config(False), {"mask_ap": 0.1, "box_ap": 0.1}, slice_key=((metrics.OBJECT_COUNT, "1"),))
    # Without bounds and baseline nothing gates.
    assert _validate(eval_config_lib.build_eval_config(LABEL_MAP, box_metric=box_metric), {"mask_ap": 0.0,
                                                                                           "box_ap": 0.0})


@pytest.mark.slow
def test_blessing_end_to_end_against_a_baseline(fixture_images, tmp_path):
    import tensorflow_model_analysis as tfma

    better, worse = str(tmp_path / "better"), str(tmp_path / "worse")
    _save_fixed_model(fixture_images, better)
    _save_fixed_model(_without_detections(fixture_images, 0.6, seed=1), worse)
    data = _write_examples(fixture_images, str(tmp_path / "eval.tfrecord"))
    schema = _inferred_schema(data)  # decoded as in TFX, by the schema, unlike the other TFMA run
    mask_ap = _coco_reference(fixture_images, "segm")["ap"]
    # TFMA's COCOMeanAveragePrecision (box_metric "tfma") on the candidate and the baseline together; without its
    # area-range configs (90 of its ~126 Beam computations for 3 classes, compared in the single-model run).
    config = eval_config_lib.build_eval_config(LABEL_MAP, min_mask_ap=mask_ap - 0.05, min_box_ap=0.0,
                                               max_ap_drop=0.0, with_baseline=True, box_metric="tfma",
                                               box_num_thresholds=NUM_THRESHOLDS)
    area_names = {f"box_ap{suffix}" for suffix in metrics.AREA_RANGE_SUFFIXES[1:]}
    kept = [m for m in config.metrics_specs[0].metrics
            if not m.config or json.loads(m.config).get("name") not in area_names]
    del config.metrics_specs[0].metrics[:]
    config.metrics_specs[0].metrics.extend(kept)

    _run_tfma(config, {tfma.CANDIDATE_KEY: better, tfma.BASELINE_KEY: worse}, data, str(tmp_path / "pass"),
              schema)
    assert tfma.load_validation_result(str(tmp_path / "pass")).validation_ok
    candidate = _slice_metrics(tfma.load_eval_result(str(tmp_path / "pass"), model_name=tfma.CANDIDATE_KEY))
    _assert_close(_as_summary(candidate, "mask_ap"), _coco_reference(fixture_images, "segm"), "schema-decoded")
    def box_numbers(values: Dict[str, float], images: Sequence[FixtureImage]):
        expected = _coco_reference(images, "bbox", tfma_box_semantics=True)
        got = _as_summary(dict(values, **{f"box_ap{s}": math.nan for s in metrics.AREA_RANGE_SUFFIXES[1:]}),
                          "box_ap")
        for key in ("ap_small", "ap_medium", "ap_large"):  # not configured here (both undefined: equal)
            got[key] = expected[key] = math.nan
        return got, expected

    _assert_close(*box_numbers(candidate, fixture_images), "schema-decoded TFMA box_ap of the candidate")
    # Each model's box AP is its own: the baseline's is COCOeval's on the baseline's detections.
    baseline = _slice_metrics(tfma.load_eval_result(str(tmp_path / "pass"), model_name=tfma.BASELINE_KEY))
    _assert_close(*box_numbers(baseline, _without_detections(fixture_images, 0.6, seed=1)),
                  "TFMA box_ap of the baseline")

    # The gate, the other way round; the exact box metric is much cheaper and carries the same thresholds.
    config = eval_config_lib.build_eval_config(LABEL_MAP, min_mask_ap=mask_ap - 0.05, min_box_ap=0.0,
                                               max_ap_drop=0.0, with_baseline=True, box_metric="pycocotools")
    failed_dir = str(tmp_path / "fail")
    _run_tfma(config, {tfma.CANDIDATE_KEY: worse, tfma.BASELINE_KEY: better}, data, failed_dir, schema)
    validation = tfma.load_validation_result(failed_dir)
    assert not validation.validation_ok
    failed = {(f.metric_key.name, f.metric_key.is_diff) for s in validation.metric_validations_per_slice
              for f in s.failures}
    assert ("mask_ap", True) in failed and ("box_ap", True) in failed  # both fell against the baseline
    assert ("mask_ap", False) in failed  # and the worse model is under the mask AP bound


# --------------------------------------------------------------------------------------------------------------
# A blessing that means something; the cost of TFMA's box metric
# --------------------------------------------------------------------------------------------------------------

def test_lower_bounds_are_strict_and_the_default_blesses_no_model_without_ap():
    import tensorflow_model_analysis as tfma
    from tfx.utils import proto_utils

    from maskrcnn_tfx.config.schema import EvaluationConfig

    default = EvaluationConfig()
    assert default.box_metric == eval_config_lib.DEFAULT_BOX_METRIC == "pycocotools"
    bound = default.min_mask_ap
    assert bound == default.min_box_ap == eval_config_lib.DEFAULT_MIN_AP > 0.0
    config = eval_config_lib.build_eval_config(LABEL_MAP, min_mask_ap=default.min_mask_ap,
                                               min_box_ap=default.min_box_ap)
    assert not _validate(config, {"mask_ap": 0.0, "box_ap": 0.0})  # detects nothing: never blessed
    assert not _validate(config, {"mask_ap": bound, "box_ap": 0.5})  # at the bound is not above it
    assert not _validate(config, {"mask_ap": 0.5, "box_ap": bound})
    assert _validate(config, {"mask_ap": float(np.nextafter(bound, 1.0)), "box_ap": 0.5})
    # The bound the TFX Evaluator reads back from its JSON exec property is the same double.
    read_back = proto_utils.json_to_proto(proto_utils.proto_to_json(config), tfma.EvalConfig())
    lower = read_back.metrics_specs[0].metrics[0].per_slice_thresholds[0].threshold.value_threshold.lower_bound
    assert lower.value == eval_config_lib.strict_lower_bound(bound) > bound
    assert eval_config_lib.describe_lower_bound(lower.value) == f"above {bound:g}"
    assert eval_config_lib.describe_lower_bound(0.5) == "at least 0.5"  # someone else's inclusive bound

    def bounded(value):
        return eval_config_lib.build_eval_config(LABEL_MAP, min_mask_ap=value, min_box_ap=value)

    assert not _validate(bounded(0.0), {"mask_ap": 0.0, "box_ap": 0.0})
    assert _validate(bounded(0.0), {"mask_ap": 1e-9, "box_ap": 1e-9})
    # A negative bound passes every defined AP (smoke runs); undefined never passes; 1 passes nothing.
    assert _validate(bounded(-1.0), {"mask_ap": 0.0, "box_ap": 0.0})
    assert not _validate(bounded(-1.0), {"mask_ap": float("nan"), "box_ap": 0.0})
    assert not _validate(bounded(1.0), {"mask_ap": 1.0, "box_ap": 1.0})
    with pytest.raises(ValueError, match="min_box_ap"):
        eval_config_lib.build_eval_config(LABEL_MAP, min_mask_ap=0.1, min_box_ap=-1.5)


def _label_map_file(tmp_path, num_classes: int) -> str:
    LabelMap.from_dict({c: f"class{c}" for c in range(1, num_classes + 1)}).save(str(tmp_path / "label_map.json"))
    return str(tmp_path)


def test_a_slow_tfma_box_metric_configuration_is_warned_about_before_the_run(tmp_path, caplog):
    import logging

    from tensorflow_model_analysis.metrics import metric_specs

    from maskrcnn_tfx import config as config_lib
    from maskrcnn_tfx.pipelines.pipeline import create_pipeline

    # The estimate's count is TFMA's: one box matching per (class, IoU threshold, area range), plus the mask AP.
    computations = metric_specs.to_computations(eval_config_lib.build_eval_config(LABEL_MAP, box_metric="tfma")
                                                .metrics_specs, eval_config=eval_config_lib.build_eval_config(
                                                    LABEL_MAP, box_metric="tfma"))
    matchers = {p.name for c in computations for p in getattr(c, "preprocessors", None) or []
                if "BoundingBoxMatch" in type(getattr(p, "_inner", p)).__name__}
    cost = eval_config_lib.tfma_box_metric_cost(len(LABEL_MAP), 100)
    assert len(matchers) == cost.computations - 1 == 40 * len(LABEL_MAP)
    coco = eval_config_lib.tfma_box_metric_cost(80, 100)
    assert coco.computations == 3201 and coco.slow
    assert eval_config_lib.tfma_box_metric_cost(80, 1000).seconds_per_image > coco.seconds_per_image

    data = _label_map_file(tmp_path, 80)

    def warnings_of(evaluation):
        caplog.clear()
        # Said when the pipeline is built, before any component runs.
        with caplog.at_level(logging.WARNING, logger=eval_config_lib.__name__):
            create_pipeline(config_lib.from_dict({"pipeline_root": str(tmp_path / "root"), "data": {"root": data},
                                                  "evaluation": evaluation}))
        return [r.getMessage() for r in caplog.records if r.name == eval_config_lib.__name__]

    [message] = warnings_of({"box_metric": "tfma", "box_num_thresholds": 100})
    assert "3,201 Beam computations" in message and "80 classes" in message
    assert f"about {coco.seconds_per_image:,.0f} s of Evaluator time per eval image" in message
    assert "'pycocotools'" in message
    assert warnings_of({}) == []  # the default exact box AP has nothing to warn about
    assert warnings_of({"box_metric": "pycocotools"}) == []


def _write_examples_with_predictions(images: Sequence[FixtureImage], path: str) -> str:
    """The examples with each image's detections stored as features named like the model's outputs (flat)."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for image in images:
            proto = ef.to_tf_example(image.example)
            feature = proto.features.feature
            feature[metrics.DETECTION_BOXES].float_list.value.extend(np.asarray(image.det_boxes).reshape(-1))
            feature[metrics.DETECTION_CLASSES].float_list.value.extend(np.asarray(image.det_classes, np.float32))
            feature[metrics.DETECTION_SCORES].float_list.value.extend(image.det_scores)
            feature[metrics.NUM_DETECTIONS].float_list.value.append(float(len(image.det_scores)))
            feature[metrics.DETECTION_MASKS].float_list.value.extend(np.asarray(image.det_masks).reshape(-1))
            writer.write(proto.SerializeToString())
    return path


def _run_stored(images: Sequence[FixtureImage], work, **config_kwargs) -> str:
    import tensorflow_model_analysis as tfma

    data = _write_examples_with_predictions(images, str(work / "eval.tfrecord"))
    config = eval_config_lib.build_eval_config(LABEL_MAP, stored_predictions=True, **config_kwargs)
    output = str(work / "out")
    tfma.run_model_analysis(eval_config=config, data_location=data, output_path=output,
                            extractors=metrics.custom_extractors(None, config))
    return output


def test_stored_predictions_match_cocoeval_and_the_summary_says_why_a_model_is_not_blessed(fixture_images,
                                                                                           tmp_path):
    import tensorflow_model_analysis as tfma

    from maskrcnn_tfx.pipelines import outputs
    from maskrcnn_tfx.config.schema import EvaluationConfig

    default = EvaluationConfig()
    bounds = {"min_mask_ap": default.min_mask_ap, "min_box_ap": default.min_box_ap}
    (tmp_path / "good").mkdir()
    good = _run_stored(fixture_images, tmp_path / "good", **bounds)
    values = _slice_metrics(tfma.load_eval_result(good))
    _assert_close(_as_summary(values, "mask_ap"), _coco_reference(fixture_images, "segm"), "stored mask_ap")
    _assert_close(_as_summary(values, "box_ap"), _coco_reference(fixture_images, "bbox"), "stored box_ap")
    assert tfma.load_validation_result(good).validation_ok
    reasons = outputs.blessing_reasons(good, blessed=True)
    assert f"mask_ap {values['mask_ap']:.4f}: must be above {default.min_mask_ap:g}: passed" in reasons
    assert f"box_ap {values['box_ap']:.4f}: must be above {default.min_box_ap:g}: passed" in reasons

    # A model that detects nothing: AP 0, the default bounds fail, and the summary says so for each.
    (tmp_path / "nothing").mkdir()
    nothing = _run_stored(_without_detections(fixture_images, 0.0, seed=0), tmp_path / "nothing", **bounds)
    assert not tfma.load_validation_result(nothing).validation_ok
    reasons = outputs.blessing_reasons(nothing, blessed=False)
    assert f"mask_ap 0.0000: must be above {default.min_mask_ap:g}: failed" in reasons
    assert f"box_ap 0.0000: must be above {default.min_box_ap:g}: failed" in reasons
