"""The precision-recall curves the COCO metrics report (``maskrcnn_tfx.pipelines.metrics.pr_curves_name``), which the
report draws: they are COCOeval's own ``eval["precision"]`` and the AP numbers are their means.
"""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

import maskrcnn_tfx  # noqa: F401  (before TensorFlow/TFMA)
from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx.pipelines import metrics

CLASS_IDS = [1, 2, 5]  # 5 has no ground truth: its curves are undefined, and it is left out of the mean
SIZE = 100


def _images():
    """(ground truth boxes [x0, y0, x1, y1, class], detections [x0, y0, x1, y1, class, score]) per image."""
    return [
        ([[10, 10, 50, 50, 1], [60, 60, 90, 95, 2]],
         [[11, 10, 50, 52, 1, 0.9], [60, 58, 88, 95, 2, 0.8], [0, 0, 20, 20, 1, 0.3]]),
        ([[5, 5, 40, 40, 1], [50, 10, 95, 45, 1]],
         [[50, 12, 94, 45, 1, 0.7], [30, 30, 60, 60, 2, 0.6], [5, 8, 38, 40, 1, 0.2]]),
        ([[20, 20, 70, 70, 2]], [[22, 25, 70, 72, 2, 0.95], [70, 70, 99, 99, 5, 0.4]]),
    ]


def _per_image_evaluations():
    evaluations = []
    for source_id, (gt, dt) in enumerate(_images(), start=1):
        gt, dt = np.asarray(gt, np.float64), np.asarray(dt, np.float64)
        features = {ef.HEIGHT: [SIZE], ef.WIDTH: [SIZE], ef.SOURCE_ID: [str(source_id)],
                    ef.BBOX_XMIN: gt[:, 0] / SIZE, ef.BBOX_YMIN: gt[:, 1] / SIZE, ef.BBOX_XMAX: gt[:, 2] / SIZE,
                    ef.BBOX_YMAX: gt[:, 3] / SIZE, ef.CLASS_LABEL: gt[:, 4].astype(np.int64),
                    ef.AREA: (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])}
        outputs = {metrics.DETECTION_BOXES: dt[:, [1, 0, 3, 2]] / SIZE, metrics.DETECTION_CLASSES: dt[:, 4],
                   metrics.DETECTION_SCORES: dt[:, 5], metrics.NUM_DETECTIONS: [len(dt)]}
        evaluations.append(metrics.evaluate_image(
            metrics.ground_truth_from_features(features, need_masks=False),
            metrics.detections_from_outputs(outputs, SIZE, SIZE, need_masks=False), "bbox", CLASS_IDS))
    return evaluations


def _cocoeval_precision() -> np.ndarray:
    """COCOeval's precision [IoU, recall, class, area, maxDets] on the same images, -1 where undefined."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = {"images": [], "annotations": [], "categories": [{"id": c} for c in CLASS_IDS]}
    results = []
    for source_id, (gt, dt) in enumerate(_images(), start=1):
        dataset["images"].append({"id": source_id, "height": SIZE, "width": SIZE})
        for x0, y0, x1, y1, c in gt:
            dataset["annotations"].append({"id": len(dataset["annotations"]) + 1, "image_id": source_id,
                                           "category_id": c, "iscrowd": 0, "area": (x1 - x0) * (y1 - y0),
                                           "bbox": [x0, y0, x1 - x0, y1 - y0]})
        for x0, y0, x1, y1, c, score in dt:
            results.append({"image_id": source_id, "category_id": int(c), "score": score,
                            "bbox": [x0, y0, x1 - x0, y1 - y0]})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluation.params.catIds = CLASS_IDS
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation.eval["precision"]


def test_pr_curves_are_cocoeval_precision_and_average_to_ap():
    summary = metrics.summarize(_per_image_evaluations(), "bbox", CLASS_IDS)
    curves = summary["pr_curves"]
    assert curves.shape == (3, 1 + len(CLASS_IDS), 101) and curves.dtype == np.float64
    reference = _cocoeval_precision()[:, :, :, 0, -1]  # all areas, 100 detections: [10 IoU, 101, classes]
    defined = np.where(reference > -1, reference, np.nan)
    for k, _ in enumerate(CLASS_IDS):
        np.testing.assert_allclose(curves[1, 1 + k], defined[0, :, k], equal_nan=True)  # IoU .50
        np.testing.assert_allclose(curves[2, 1 + k], defined[5, :, k], equal_nan=True)  # IoU .75
        np.testing.assert_allclose(curves[0, 1 + k], defined[:, :, k].mean(axis=0), equal_nan=True)
    # The class without ground truth: undefined everywhere, and not in the mean over classes.
    assert np.isnan(curves[:, 3]).all()
    np.testing.assert_allclose(curves[1, 0], defined[0, :, :2].mean(axis=1))
    # The AP numbers are the curves' means.
    assert math.isclose(float(np.mean(curves[0, 0])), summary["ap"], rel_tol=1e-12)
    assert math.isclose(float(np.mean(curves[1, 0])), summary["ap50"], rel_tol=1e-12)
    assert math.isclose(float(np.mean(curves[2, 0])), summary["ap75"], rel_tol=1e-12)
    for k, class_id in enumerate(CLASS_IDS[:2]):
        assert math.isclose(float(np.mean(curves[0, 1 + k])), summary["per_class"][class_id], rel_tol=1e-12)
    # A real curve: precision falls as recall grows, and the model is neither perfect nor useless here.
    assert 0.1 < summary["ap50"] < 0.99
    assert np.all(np.diff(curves[1, 0]) <= 1e-12)


def test_pr_curves_of_nothing_are_undefined():
    curves = metrics.summarize([], "segm", CLASS_IDS)["pr_curves"]
    assert curves.shape == (3, 1 + len(CLASS_IDS), 101) and np.isnan(curves).all()


def test_the_combiner_reports_the_curves_under_their_own_key():
    metric = metrics.COCOBoxAP(class_ids=CLASS_IDS, class_names=["a", "b", "c"])
    (computation,) = metric.computations()
    names = [key.name for key in computation.keys]
    assert names == metrics.metric_names("box_ap", ["a", "b", "c"]) + ["box_ap_pr_curves"]
    combiner = computation.combiner
    accumulator = combiner.create_accumulator()
    for evaluation in _per_image_evaluations():
        # As the preprocessor hands them over: one bytes value per image.
        accumulator = combiner.add_input(accumulator, evaluation.to_bytes())
    values = {key.name: value for key, value in combiner.extract_output(accumulator).items()}
    assert values["box_ap_pr_curves"].shape == (3, 4, 101)
    assert math.isclose(float(np.mean(values["box_ap_pr_curves"][0, 0])), values["box_ap"], rel_tol=1e-12)


@pytest.mark.parametrize("name", ["mask_ap", "box_ap"])
def test_pr_curves_name_is_not_a_thresholdable_metric_name(name):
    assert metrics.pr_curves_name(name) not in metrics.metric_names(name, ["pr_curves"])
