"""COCO box and mask mAP for TensorFlow Model Analysis (TFMA).

TFMA 0.47 has COCO box AP (``COCOMeanAveragePrecision``) but nothing for masks. This module adds:

- :class:`COCOMaskAP`: COCO mask AP as a TFMA metric, computed exactly as ``pycocotools`` does (crowd regions,
  area ranges, 101-point interpolation, maximum detections), reported as AP, AP50, AP75, APs/m/l and per-class
  AP (see :func:`metric_names`), and the precision-recall curves behind them as one array
  (:func:`pr_curves_name`).
- :class:`COCOBoxAP`: the same for boxes. TFMA's own box AP differs from COCO's on crowd regions, classes that
  have no ground truth, and object areas (see ``pipelines/eval_config.py``); this one does not.
- :func:`custom_extractors` (the TFX Evaluator's ``custom_extractors`` hook; run it with
  ``Evaluator(module_path="maskrcnn_tfx.pipelines.metrics")``): TFMA's default extractors plus
  :func:`CocoEvalInputsExtractor`, which adds what TFMA's own box metric and the slicing need but the model and the
  examples do not carry: boxes in pixels (COCO's area ranges are in pixels) and an object-count bucket to slice on.

How the COCO metrics work in Beam: a TFMA ``Preprocessor`` runs once per example, before slicing. It decodes the
example's ground truth (PNG masks, classes, crowd flags, areas), pastes the model's box-relative masks into
full-image masks with :mod:`maskrcnn_tfx.masks` (the product's one paste), and runs COCO's per-image matching
(``COCOeval.computeIoU`` and ``COCOeval.evaluateImg`` on that image alone, given the inputs ``COCOeval.evaluate``
would prepare, without building COCO indexes per image). Only the matching's outcome goes to the combiner: per
class and area range, the detections' scores, matched and ignored flags, and the ground truth's ignored flags;
no masks, packed into seven flat arrays (:class:`ImageEval`) and handed to Beam as one bytes value
(:meth:`ImageEval.to_bytes`), which Beam's coder copies as it is at every stage boundary and accumulator merge
(an object of arrays it would pickle array by array). The ``CombineFn`` keeps these bytes over the images of a
slice and ``extract_output`` decodes them and runs
COCO's accumulation over them (:func:`accumulate_precision`: ``COCOeval.accumulate``'s arithmetic, vectorized,
at the reported maxDets), with the images in ascending ``image/source_id`` order as COCO orders them (which
decides ties between equal scores). COCO's per-image matching depends on nothing but the image, so the result
is the number ``COCOeval`` gives on the whole set, at any slicing and any parallelism; the cost grows with the
images and their objects, not with the number of classes (``benchmarks/evaluator.py``).

The predictions may also be stored in the examples as features named like the model's outputs (flat lists):
``maskrcnn_tfx.pipelines.eval_config.build_eval_config(..., stored_predictions=True)`` evaluates them without a model.

Inputs (see :data:`REQUIRED_FEATURES` and :data:`REQUIRED_OUTPUTS`): the raw example's features (the product's
example format, ``maskrcnn_tfx.example_format``) and the outputs of the exported model's tf.Example signature
(``trainer/export.py``).
"""
from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import io
import logging
import struct
import threading
import warnings
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow and TFMA load)
import apache_beam as beam
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis import constants as tfma_constants
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.utils import util as tfma_util

from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx import masks as masks_lib
from maskrcnn_tfx import signature

# The headline metrics' names (mask and box AP, and at IoU .50), spelled here only: the EvalConfig's thresholds,
# the run's summary and the report name them through these.
MASK_AP = "mask_ap"
BOX_AP = "box_ap"
MASK_AP50, BOX_AP50 = MASK_AP + "50", BOX_AP + "50"
HEADLINE_METRICS = (MASK_AP, BOX_AP, MASK_AP50, BOX_AP50)

# Outputs of the exported model's tf.Example signature, named by the one signature module. IMAGE_SIZE is
# optional here: when present it is checked against the example's.
DETECTION_BOXES = signature.DETECTION_BOXES
DETECTION_CLASSES = signature.DETECTION_CLASSES
DETECTION_SCORES = signature.DETECTION_SCORES
NUM_DETECTIONS = signature.NUM_DETECTIONS
DETECTION_MASKS = signature.DETECTION_MASKS
IMAGE_SIZE = signature.IMAGE_SIZE
REQUIRED_OUTPUTS = {
    "box": (DETECTION_BOXES, DETECTION_CLASSES, DETECTION_SCORES, NUM_DETECTIONS),
    "mask": (DETECTION_BOXES, DETECTION_CLASSES, DETECTION_SCORES, NUM_DETECTIONS, DETECTION_MASKS),
}
REQUIRED_FEATURES = {
    "box": (ef.HEIGHT, ef.WIDTH, ef.SOURCE_ID, ef.BBOX_YMIN, ef.BBOX_XMIN, ef.BBOX_YMAX, ef.BBOX_XMAX,
            ef.CLASS_LABEL),
    "mask": (ef.HEIGHT, ef.WIDTH, ef.SOURCE_ID, ef.CLASS_LABEL, ef.MASK),
}
# Optional features: missing crowd flags mean "not crowd"; missing areas are computed from masks or boxes.

# Extract keys added by CocoEvalInputsExtractor. They are evaluation-only values (never in a tf.Example), so they
# live here rather than in maskrcnn_tfx.example_format.
GROUNDTRUTH_PIXEL_BOXES = "coco_eval/groundtruth_pixel_boxes"  # features: [G, 5] left, top, right, bottom, class
DETECTION_PIXEL_BOXES = "coco_eval/detection_pixel_boxes"  # predictions: [D, 6] left, top, right, bottom, class, score
OBJECT_COUNT = "coco_eval/object_count"  # features: [1] bucket of the number of non-crowd objects, e.g. "2-3"

# Lower edges of the object-count buckets: 0, 1, 2-3, 4-7, 8-15, 16-31, 32+.
OBJECT_COUNT_BUCKET_EDGES = (0, 1, 2, 4, 8, 16, 32)

# COCO's area ranges (pycocotools Params.areaRng), in pixels, in the order of COCOeval's area index.
AREA_RANGE_SUFFIXES = ("", "_small", "_medium", "_large")
AREA_RANGES = ((0.0, 1e5 ** 2), (0.0, 32.0 ** 2), (32.0 ** 2, 96.0 ** 2), (96.0 ** 2, 1e5 ** 2))

_UNBATCH_STAGE = "ExtractUnbatchedInputs"
_EXTRACTOR_STAGE = "ExtractCocoEvalInputs"


# --------------------------------------------------------------------------------------------------------------
# Reading one example's features and one model's outputs
# --------------------------------------------------------------------------------------------------------------

def _values(mapping: Mapping[str, Any], key: str, dtype=None) -> np.ndarray:
    """A feature or output as a flat array (missing or None: empty).

    TFMA gives one example's values as a numpy array, or, for features a schema declares sparse or ragged, as a
    tensor value whose ``values`` are the flat array.
    """
    value = mapping.get(key) if mapping is not None else None
    if value is None:
        return np.zeros((0,), dtype or np.float64)
    if hasattr(value, "values") and not isinstance(value, (np.ndarray, Mapping)):
        value = value.values  # tfma.types.SparseTensorValue / RaggedTensorValue / VarLenTensorValue
    array = np.asarray(value)
    if array.dtype == object and array.size == 1 and isinstance(array.reshape(-1)[0], np.ndarray):
        array = array.reshape(-1)[0]  # a ragged value wrapped in an object array
    array = array.reshape(-1) if array.ndim != 1 else array
    return array.astype(dtype) if dtype is not None else array


def _scalar(mapping: Mapping[str, Any], key: str) -> Any:
    values = _values(mapping, key)
    if not len(values):
        raise KeyError(f"the evaluation needs {key!r}, which this example (or the model's outputs) lacks; "
                       f"present: {sorted(mapping) if mapping is not None else []}")
    return values[0]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class GroundTruth:
    """One image's ground truth, in pixels."""

    source_id: int
    sort_key: Tuple[int, str]  # COCO's image order: by id (then by image hash, only to be deterministic)
    height: int
    width: int
    classes: np.ndarray  # [G] int64
    is_crowd: np.ndarray  # [G] bool
    areas: np.ndarray  # [G] float64 (COCO's annotation area: a crowd/object's mask area)
    boxes: np.ndarray  # [G, 4] float64 pixel (xmin, ymin, xmax, ymax)
    masks_png: List[bytes]


def ground_truth_from_features(features: Mapping[str, Any], need_masks: bool) -> GroundTruth:
    """Reads one example's ground truth from its TFMA features (the product's example format)."""
    height, width = int(_scalar(features, ef.HEIGHT)), int(_scalar(features, ef.WIDTH))
    source_id = int(_text(_scalar(features, ef.SOURCE_ID)))
    key_values = _values(features, ef.KEY_SHA256)
    sort_key = (source_id, _text(key_values[0]) if len(key_values) else "")
    classes = _values(features, ef.CLASS_LABEL, np.int64)
    num = len(classes)
    crowd = _values(features, ef.IS_CROWD, np.int64)
    is_crowd = crowd.astype(bool) if len(crowd) == num else np.zeros((num,), bool)
    coordinates = [_values(features, k, np.float64) for k in (ef.BBOX_XMIN, ef.BBOX_YMIN, ef.BBOX_XMAX, ef.BBOX_YMAX)]
    if all(len(c) == num for c in coordinates):
        boxes = np.stack(coordinates, axis=-1).reshape(-1, 4) * [width, height, width, height]
    elif need_masks:
        boxes = np.zeros((num, 4))  # not needed for masks
    else:
        raise KeyError(f"image {source_id}: {num} classes but box coordinates of other lengths")
    masks_png = [bytes(m) for m in _values(features, ef.MASK)] if need_masks else []
    if need_masks and len(masks_png) != num:
        raise KeyError(f"image {source_id}: {num} objects but {len(masks_png)} masks in {ef.MASK!r}")
    areas = _values(features, ef.AREA, np.float64)
    if len(areas) != num:
        areas = np.full((num,), np.nan)  # unknown: evaluate_image takes the mask's (or the box's) area
    return GroundTruth(source_id, sort_key, height, width, classes, is_crowd, areas, boxes, masks_png)


@dataclasses.dataclass
class Detections:
    """One image's detections, in pixels, in the model's order (score-sorted)."""

    classes: np.ndarray  # [D] int64
    scores: np.ndarray  # [D] float64
    boxes: np.ndarray  # [D, 4] float64 pixel (xmin, ymin, xmax, ymax)
    normalized_boxes: np.ndarray  # [D, 4] the served (ymin, xmin, ymax, xmax)
    masks: Optional[np.ndarray]  # [D, M, M] box-relative probabilities, or None


def detections_from_outputs(outputs: Mapping[str, Any], height: int, width: int, need_masks: bool,
                            source_id: int = 0) -> Detections:
    """Reads one image's detections from the model's outputs, truncated to ``num_detections``."""
    if outputs is None or DETECTION_BOXES not in outputs:
        raise KeyError(f"the model's outputs lack {DETECTION_BOXES!r}; present: "
                       f"{sorted(outputs) if outputs is not None else []} (is the tf.Example signature evaluated?)")
    num = int(_scalar(outputs, NUM_DETECTIONS))
    # [D, 4] from a model, or flat when the predictions are stored as tf.Example features.
    all_boxes = _values(outputs, DETECTION_BOXES, np.float64).reshape(-1, 4)
    boxes = all_boxes[:num]
    classes = _values(outputs, DETECTION_CLASSES, np.float64)[:num].round().astype(np.int64)
    scores = _values(outputs, DETECTION_SCORES, np.float64)[:num]
    if IMAGE_SIZE in outputs and outputs[IMAGE_SIZE] is not None:
        size = tuple(int(v) for v in _values(outputs, IMAGE_SIZE))
        if size != (height, width):
            # Boxes are normalized to the model's idea of the image; a different size means another image.
            raise ValueError(f"image {source_id}: the model saw a {size[0]}x{size[1]} image, the example says "
                             f"{height}x{width}")
    masks = None
    if need_masks:
        if outputs.get(DETECTION_MASKS) is None:
            raise KeyError(f"mask AP needs the model output {DETECTION_MASKS!r}; present: {sorted(outputs)}")
        masks = outputs[DETECTION_MASKS]
        masks = np.asarray(masks, np.float32) if isinstance(masks, np.ndarray) and masks.ndim >= 3 else \
            _values(outputs, DETECTION_MASKS, np.float32)
        if masks.ndim < 3 and not masks.size:
            masks = np.zeros((0, 1, 1), np.float32)
        elif masks.ndim < 3:
            # Flat (predictions stored as tf.Example features): square masks, one per box row.
            rows = len(all_boxes)
            side = int(round(np.sqrt(masks.size / rows))) if rows else 0
            if not rows or side * side * rows != masks.size:
                raise ValueError(f"image {source_id}: {masks.size} mask values for {rows} detections are not "
                                 f"square masks")
            masks = masks.reshape(rows, side, side)
        masks = masks.reshape((-1,) + masks.shape[-2:])[:num]
    pixel = boxes[:, [1, 0, 3, 2]] * [width, height, width, height]
    return Detections(classes, scores, pixel, boxes, masks)


def object_count_bucket(num_objects: int) -> str:
    """The slice name of an image with ``num_objects`` non-crowd objects: "0", "1", "2-3", ... "32+"."""
    edges = OBJECT_COUNT_BUCKET_EDGES
    for low, high in zip(edges, edges[1:]):
        if num_objects < high:
            return str(low) if high - low == 1 else f"{low}-{high - 1}"
    return f"{edges[-1]}+"


# --------------------------------------------------------------------------------------------------------------
# COCO evaluation, split into its per-image part (preprocessor) and its accumulation (combiner)
# --------------------------------------------------------------------------------------------------------------

_QUIET_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet():
    # pycocotools prints progress lines for every call; per image that would flood the Beam logs. The lock keeps
    # Beam's worker threads from interleaving their swaps of sys.stdout (which could leave it swapped for good).
    with _QUIET_LOCK, contextlib.redirect_stdout(io.StringIO()):
        yield


_PARAMS_CACHE: Dict[Tuple[str, int], Any] = {}


def _cached_params(iou_type: str, max_detections: int):
    """One shared Params per IoU type and maxDets for the per-image matching (computeIoU and evaluateImg only
    read it)."""
    key = (iou_type, int(max_detections))
    if key not in _PARAMS_CACHE:
        _PARAMS_CACHE[key] = _coco_params(iou_type, max_detections)
    return _PARAMS_CACHE[key]


def _coco_params(iou_type: str, max_detections: int):
    from pycocotools.cocoeval import Params  # pylint: disable=g-import-not-at-top

    params = Params(iouType=iou_type)
    # COCO's defaults (IoU .50:.05:.95, 101 recall points, areaRng) with the last maxDets configurable.
    params.maxDets = sorted({1, 10, int(max_detections)})
    return params


# The outcome of COCO's matching of one image, for one class and one area range: what COCOeval.accumulate reads.
ImageClassEval = Dict[str, np.ndarray]


@dataclasses.dataclass
class ImageEval:
    """COCO's per-image matching for one image, packed: entry ``e`` is the (class index, area index)
    ``keys[e]`` with ``num_dt[e]`` detections and ``num_gt[e]`` ground-truth objects, whose arrays are
    consecutive slices of the concatenated ones. Seven arrays whatever the number of classes: this is what
    crosses Beam (pickled at every stage boundary and accumulator merge), so it is kept small and flat.
    :attr:`results` gives the per-entry arrays COCOeval.accumulate reads, as views.
    """

    sort_key: Tuple[int, str]
    keys: np.ndarray  # [E, 2] int32
    num_dt: np.ndarray  # [E] int32
    num_gt: np.ndarray  # [E] int32
    dt_scores: np.ndarray  # [sum num_dt] float64
    dt_matched: np.ndarray  # [T, sum num_dt] bool (T: IoU thresholds)
    dt_ignore: np.ndarray  # [T, sum num_dt] bool
    gt_ignore: np.ndarray  # [sum num_gt] bool

    @classmethod
    def pack(cls, sort_key: Tuple[int, str], results: Mapping[Tuple[int, int], ImageClassEval],
             num_ious: int) -> "ImageEval":
        keys = sorted(results)
        entries = [results[k] for k in keys]

        def cat(name: str, dtype, rows: int = 0) -> np.ndarray:
            parts = [np.asarray(e[name], dtype).reshape((rows, -1) if rows else (-1,)) for e in entries]
            empty = np.zeros((rows, 0) if rows else (0,), dtype)
            return np.concatenate(parts, axis=-1) if parts else empty

        return cls(sort_key=sort_key, keys=np.asarray(keys, np.int32).reshape(-1, 2),
                   num_dt=np.asarray([len(e["dtScores"]) for e in entries], np.int32),
                   num_gt=np.asarray([len(e["gtIgnore"]) for e in entries], np.int32),
                   dt_scores=cat("dtScores", np.float64), dt_matched=cat("dtMatches", bool, num_ious),
                   dt_ignore=cat("dtIgnore", bool, num_ious), gt_ignore=cat("gtIgnore", bool))

    # to_bytes() header: entries, detections, ground-truth objects, IoU thresholds, then the byte lengths of
    # the sort key's id and hash texts.
    _HEADER = struct.Struct("<6q")

    def to_bytes(self) -> bytes:
        """One flat bytes value: what the preprocessor hands Beam. Beam's coder writes bytes as they are, where an
        object of numpy arrays is pickled array by array at every stage boundary it crosses."""
        source_id, key_hash = (str(part).encode() for part in self.sort_key)
        num_ious = self.dt_matched.shape[0]
        header = self._HEADER.pack(len(self.keys), len(self.dt_scores), len(self.gt_ignore), num_ious,
                                   len(source_id), len(key_hash))
        arrays = (self.keys.astype("<i4"), self.num_dt.astype("<i4"), self.num_gt.astype("<i4"),
                  self.dt_scores.astype("<f8"), self.dt_matched.astype(np.uint8), self.dt_ignore.astype(np.uint8),
                  self.gt_ignore.astype(np.uint8))
        return b"".join([header, source_id, key_hash] + [np.ascontiguousarray(a).tobytes() for a in arrays])

    @classmethod
    def from_bytes(cls, data: bytes) -> "ImageEval":
        """The inverse of :meth:`to_bytes` (arrays are read-only views of ``data``)."""
        entries, num_dt, num_gt, num_ious, id_len, hash_len = cls._HEADER.unpack_from(data, 0)
        offset = cls._HEADER.size
        source_id = int(data[offset:offset + id_len].decode())
        key_hash = data[offset + id_len:offset + id_len + hash_len].decode()
        offset += id_len + hash_len
        arrays = []
        for dtype, shape in (("<i4", (entries, 2)), ("<i4", (entries,)), ("<i4", (entries,)), ("<f8", (num_dt,)),
                             (np.uint8, (num_ious, num_dt)), (np.uint8, (num_ious, num_dt)), (np.uint8, (num_gt,))):
            count = int(np.prod(shape))
            arrays.append(np.frombuffer(data, dtype, count, offset).reshape(shape))
            offset += arrays[-1].nbytes
        if offset != len(data):
            raise ValueError(f"an ImageEval of {len(data)} bytes whose header describes {offset}")
        keys, n_dt, n_gt, scores, matched, ignore, gt_ignore = arrays
        return cls(sort_key=(source_id, key_hash), keys=keys, num_dt=n_dt, num_gt=n_gt, dt_scores=scores,
                   dt_matched=matched.view(bool), dt_ignore=ignore.view(bool), gt_ignore=gt_ignore.view(bool))

    @property
    def results(self) -> Dict[Tuple[int, int], ImageClassEval]:
        found: Dict[Tuple[int, int], ImageClassEval] = {}
        dt_end, gt_end = np.cumsum(self.num_dt), np.cumsum(self.num_gt)
        for (k, a), d1, g1, nd, ng in zip(self.keys.tolist(), dt_end.tolist(), gt_end.tolist(),
                                          self.num_dt.tolist(), self.num_gt.tolist()):
            d0, g0 = d1 - nd, g1 - ng
            found[(k, a)] = {"dtScores": self.dt_scores[d0:d1], "dtMatches": self.dt_matched[:, d0:d1],
                             "dtIgnore": self.dt_ignore[:, d0:d1], "gtIgnore": self.gt_ignore[g0:g1]}
        return found


def evaluate_image(ground_truth: GroundTruth, detections: Detections, iou_type: str, class_ids: Sequence[int],
                   max_detections: int = 100, mask_threshold: float = masks_lib.DEFAULT_THRESHOLD) -> ImageEval:
    """Runs COCO's per-image matching (``COCOeval.evaluateImg``) for one image.

    Ground truth and detections of classes outside ``class_ids`` are left out, as COCOeval does with ``catIds``.
    """
    from pycocotools import mask as mask_api  # pylint: disable=g-import-not-at-top
    from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
    class_index = {int(c): k for k, c in enumerate(class_ids)}
    gt_keep = np.array([int(c) in class_index for c in ground_truth.classes], bool)
    dt_keep = np.array([int(c) in class_index for c in detections.classes], bool)
    present = sorted({int(c) for c in ground_truth.classes[gt_keep]} | {int(c) for c in detections.classes[dt_keep]})
    if not present:
        return ImageEval.pack(ground_truth.sort_key, {}, len(_cached_params(iou_type, max_detections).iouThrs))
    height, width = ground_truth.height, ground_truth.width

    gt_masks: List[Dict[str, Any]] = []
    if iou_type == "segm":
        for index in np.flatnonzero(gt_keep):
            mask = ef.decode_png_mask(ground_truth.masks_png[index])
            if mask.shape != (height, width):
                raise ValueError(f"image {ground_truth.source_id}: mask {index} is {mask.shape[0]}x{mask.shape[1]}, "
                                 f"the image {height}x{width}")
            gt_masks.append(mask_api.encode(np.asfortranarray(mask)))
    annotations = []
    for n, index in enumerate(np.flatnonzero(gt_keep)):
        xmin, ymin, xmax, ymax = (float(v) for v in ground_truth.boxes[index])
        area = float(ground_truth.areas[index])
        if not np.isfinite(area):  # no image/object/area: COCO's area is the mask's (or the box's) area
            area = float(mask_api.area(gt_masks[n])) if iou_type == "segm" else (xmax - xmin) * (ymax - ymin)
        annotation = {"id": n + 1,  # COCO ids start at 1: a matched id of 0 would read as "unmatched"
                      "image_id": 1, "category_id": int(ground_truth.classes[index]),
                      "iscrowd": int(ground_truth.is_crowd[index]), "area": area,
                      "bbox": [xmin, ymin, xmax - xmin, ymax - ymin]}
        if iou_type == "segm":
            annotation["segmentation"] = gt_masks[n]
        annotations.append(annotation)
    kept = np.flatnonzero(dt_keep)
    results = []
    if iou_type == "segm" and len(kept):
        full = masks_lib.paste_masks(detections.masks[kept], detections.normalized_boxes[kept], height, width,
                                     threshold=mask_threshold)
        rles = mask_api.encode(np.asfortranarray(np.transpose(full, (1, 2, 0))))
        areas = mask_api.area(rles)
        # As COCO.loadRes gives them: ids 1..N in order, the mask's area (not a box's), never crowd.
        results = [{"id": n + 1, "image_id": 1, "category_id": int(detections.classes[i]),
                    "score": float(detections.scores[i]), "segmentation": rle, "area": float(area), "iscrowd": 0}
                   for n, (i, rle, area) in enumerate(zip(kept, rles, areas))]
    elif len(kept):
        for n, i in enumerate(kept):
            x, y = float(detections.boxes[i, 0]), float(detections.boxes[i, 1])
            w, h = float(detections.boxes[i, 2] - detections.boxes[i, 0]), float(detections.boxes[i, 3] - y)
            results.append({"id": n + 1, "image_id": 1, "category_id": int(detections.classes[i]),
                            "score": float(detections.scores[i]), "bbox": [x, y, w, h], "area": w * h,
                            "iscrowd": 0})

    # COCOeval.evaluate on this image alone, without its COCO indexes: _prepare's grouping (with its "ignore"
    # flags), then COCO's own computeIoU and evaluateImg.
    evaluation = COCOeval(iouType=iou_type)
    evaluation.params = _cached_params(iou_type, max_detections)
    evaluation._gts = collections.defaultdict(list)  # pylint: disable=protected-access
    evaluation._dts = collections.defaultdict(list)  # pylint: disable=protected-access
    for annotation in annotations:
        annotation["ignore"] = annotation["iscrowd"]
        evaluation._gts[1, annotation["category_id"]].append(annotation)  # pylint: disable=protected-access
    for result in results:
        evaluation._dts[1, result["category_id"]].append(result)  # pylint: disable=protected-access
    evaluation.ious = {(1, class_id): evaluation.computeIoU(1, class_id) for class_id in present}
    max_det = evaluation.params.maxDets[-1]
    compact: Dict[Tuple[int, int], ImageClassEval] = {}
    for class_id in present:
        for a, area_range in enumerate(evaluation.params.areaRng):
            result = evaluation.evaluateImg(1, class_id, area_range, max_det)
            if result is None:
                continue
            compact[(class_index[class_id], a)] = {
                "dtScores": result["dtScores"],
                # accumulate() only asks "matched or not"; the matched ground-truth ids need not travel.
                "dtMatches": np.asarray(result["dtMatches"]) > 0,
                "dtIgnore": result["dtIgnore"],
                "gtIgnore": result["gtIgnore"],
            }
    return ImageEval.pack(ground_truth.sort_key, compact, len(evaluation.params.iouThrs))


def metric_names(name: str, class_names: Sequence[str]) -> List[str]:
    """The metric names reported under ``name`` (e.g. "mask_ap"), in this order:

    ``name`` (AP at IoU .50:.95), ``name50``, ``name75``, ``name_small``, ``name_medium``, ``name_large`` (by
    object area: < 32², 32² to 96², > 96² pixels) and ``name/<class name>`` for each class (AP at IoU .50:.95
    of that class alone); all at ``max_detections`` detections per image and class (COCO's 100), like COCO's
    summary lines.
    """
    return ([name, f"{name}50", f"{name}75"] + [name + s for s in AREA_RANGE_SUFFIXES[1:]]
            + [f"{name}/{class_name}" for class_name in class_names])


# The precision-recall curves reported beside the AP numbers (see pr_curves_name): rows of IoU thresholds.
PR_CURVE_IOUS = ("0.50:0.95", "0.50", "0.75")
# COCO's recall points (pycocotools Params.recThrs): 0, 0.01, ... 1.
PR_CURVE_RECALLS = np.linspace(0.0, 1.0, 101)


def pr_curves_name(name: str) -> str:
    """The name of the precision-recall curves reported with ``name`` (e.g. "mask_ap_pr_curves").

    Its value is a float64 array ``[3, 1 + C, 101]``: precision at COCO's 101 recall points
    (:data:`PR_CURVE_RECALLS`); rows by IoU (:data:`PR_CURVE_IOUS`: the mean over IoU .50:.95, then .50 and
    .75); columns the mean over classes (those with ground truth), then each class in ``class_ids`` order;
    all objects, ``max_detections`` detections. NaN where COCO has no value (no ground truth). The AP numbers
    are means of these curves. Not in :func:`metric_names`: it is an array, not a number to threshold.
    """
    return f"{name}_pr_curves"


def summarize(images: Iterable[ImageEval], iou_type: str, class_ids: Sequence[int],
              max_detections: int = 100) -> Dict[str, Any]:
    """COCO's accumulation over images and its summary numbers.

    Returns ``{"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large": float, "per_class": {class id: float},
    "pr_curves": array}`` where a number COCO reports as -1 (no ground truth for it) is NaN; "pr_curves" is the
    ``[3, 1 + C, 101]`` array described by :func:`pr_curves_name`.
    """
    ordered = sorted(images, key=lambda image: image.sort_key)
    params = _coco_params(iou_type, max_detections)
    num_classes, num_areas, num_images = len(class_ids), len(params.areaRng), len(ordered)
    nan = float("nan")
    if not num_images or not num_classes:
        return {"ap": nan, "ap50": nan, "ap75": nan, "ap_small": nan, "ap_medium": nan, "ap_large": nan,
                "per_class": {int(c): nan for c in class_ids},
                "pr_curves": np.full((len(PR_CURVE_IOUS), 1 + num_classes, len(PR_CURVE_RECALLS)), nan)}
    # precision: [IoU thresholds, recall points, classes, area ranges], -1 where undefined.
    precision = accumulate_precision(ordered, num_classes, num_areas, params.iouThrs, params.recThrs,
                                     params.maxDets[-1])

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(np.mean(valid)) if valid.size else nan

    iou_50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    iou_75 = int(np.argmin(np.abs(params.iouThrs - 0.75)))
    return {
        "ap": mean(precision[:, :, :, 0]),
        "ap50": mean(precision[iou_50, :, :, 0]),
        "ap75": mean(precision[iou_75, :, :, 0]),
        "ap_small": mean(precision[:, :, :, 1]),
        "ap_medium": mean(precision[:, :, :, 2]),
        "ap_large": mean(precision[:, :, :, 3]),
        "per_class": {int(c): mean(precision[:, :, k, 0]) for k, c in enumerate(class_ids)},
        "pr_curves": _pr_curves(precision[:, :, :, 0], iou_50, iou_75),
    }


def accumulate_precision(ordered: Sequence[ImageEval], num_classes: int, num_areas: int, iou_thresholds: np.ndarray,
                         recall_thresholds: np.ndarray, max_detections: int) -> np.ndarray:
    """``COCOeval.accumulate``'s precision at ``max_detections`` (its last maxDets), ``[T, R, K, A]``, -1 where
    COCO leaves it undefined.

    The same operations on the same float64 values in the same order as pycocotools 2.0's ``accumulate`` (so
    the same numbers to the bit; ``tests/test_metrics.py`` and ``benchmarks/evaluator.py`` compare them with
    COCOeval itself), without its Python loops over every maxDets, IoU threshold, detection and recall point
    (seconds per slice at 80 classes): only the last maxDets is reported, the running maximum from the end is
    ``np.maximum.accumulate`` and the recall lookup is vectorized. Images are in COCO's order (``ordered``).
    """
    num_ious, num_recalls = len(iou_thresholds), len(recall_thresholds)
    precision = -np.ones((num_ious, num_recalls, num_classes, num_areas))
    # Each (class, area) entry's per-image results, in image order (COCO skips images without a result).
    grouped: Dict[Tuple[int, int], List[ImageClassEval]] = collections.defaultdict(list)
    for image in ordered:
        for key, result in image.results.items():
            grouped[key].append(result)
    for (k, a), entries in grouped.items():
        dt_scores = np.concatenate([e["dtScores"][0:max_detections] for e in entries])
        order = np.argsort(-dt_scores, kind="mergesort")
        dtm = np.concatenate([e["dtMatches"][:, 0:max_detections] for e in entries], axis=1)[:, order]
        dt_ignore = np.concatenate([e["dtIgnore"][:, 0:max_detections] for e in entries], axis=1)[:, order]
        gt_ignore = np.concatenate([e["gtIgnore"] for e in entries])
        npig = np.count_nonzero(gt_ignore == 0)
        if npig == 0:
            continue
        tps = np.logical_and(dtm, np.logical_not(dt_ignore))
        fps = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ignore))
        tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
        fp_sum = np.cumsum(fps, axis=1).astype(np.float64)
        num_dt = tp_sum.shape[1]
        recall = tp_sum / npig
        pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        # COCO: for i in range(nd-1, 0, -1): pr[i-1] = max(pr[i-1], pr[i]) -- a running maximum from the end.
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        for t in range(num_ious):
            q = np.zeros((num_recalls,))
            positions = np.searchsorted(recall[t], recall_thresholds, side="left")
            # COCO fills recall points until the first position past the last detection (IndexError).
            valid = positions < num_dt
            q[valid] = pr[t, positions[valid]]
            precision[t, :, k, a] = q
    return precision


def _pr_curves(precision: np.ndarray, iou_50: int, iou_75: int) -> np.ndarray:
    """[IoU, recall, class] precision (-1 undefined) to the [3, 1 + C, recall] array of :func:`pr_curves_name`."""
    defined = np.where(precision > -1, precision, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of nothing (no ground truth) is NaN
        by_iou = np.stack([np.nanmean(defined, axis=0), defined[iou_50], defined[iou_75]])  # [3, R, C]
        mean_over_classes = np.nanmean(by_iou, axis=2, keepdims=True)  # [3, R, 1]
    return np.transpose(np.concatenate([mean_over_classes, by_iou], axis=2), (0, 2, 1)).astype(np.float64)


# --------------------------------------------------------------------------------------------------------------
# TFMA metrics
# --------------------------------------------------------------------------------------------------------------

class _CocoImageEvalPreprocessor(metric_types.Preprocessor):
    """Per example, before slicing: COCO's matching of one image against one model's detections."""

    def __init__(self, iou_type: str, class_ids: Sequence[int], max_detections: int, mask_threshold: float,
                 model_name: str):
        # The name identifies the preprocessor to TFMA (equal names are computed once), so it spells every input.
        super().__init__(name=f"_coco_{iou_type}_image_eval:{model_name}:{list(class_ids)}:{max_detections}:"
                              f"{mask_threshold}")
        self._iou_type = iou_type
        self._class_ids = [int(c) for c in class_ids]
        self._max_detections = int(max_detections)
        self._mask_threshold = float(mask_threshold)
        self._model_name = model_name

    def process(self, extracts: tfma.types.Extracts) -> Iterator[ImageEval]:
        extracts = tfma_util.StandardExtracts(extracts)
        need_masks = self._iou_type == "segm"
        ground_truth = ground_truth_from_features(extracts.get_features(), need_masks=need_masks)
        detections = detections_from_outputs(extracts.get_predictions(self._model_name), ground_truth.height,
                                             ground_truth.width, need_masks=need_masks,
                                             source_id=ground_truth.source_id)
        # As bytes (ImageEval.to_bytes): this crosses Beam's stage boundaries, once per slice of the image.
        yield evaluate_image(ground_truth, detections, self._iou_type, self._class_ids, self._max_detections,
                             self._mask_threshold).to_bytes()


class _CocoAccumulateCombiner(beam.CombineFn):
    """Gathers the per-image matchings of a slice; COCO's accumulation and summary at the end.

    Its inputs and accumulator are :meth:`ImageEval.to_bytes` values (a list of bytes is what Beam encodes
    fastest); they become arrays again only in ``extract_output``.
    """

    def __init__(self, keys: List[metric_types.MetricKey], iou_type: str, class_ids: Sequence[int],
                 max_detections: int):
        self._keys = keys  # in metric_names() order, then pr_curves_name()
        self._iou_type = iou_type
        self._class_ids = [int(c) for c in class_ids]
        self._max_detections = max_detections

    def create_accumulator(self) -> List[bytes]:
        return []

    def add_input(self, accumulator: List[bytes], element: bytes) -> List[bytes]:
        accumulator.append(element)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[List[bytes]]) -> List[bytes]:
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for accumulator in accumulators:
            merged.extend(accumulator)
        return merged

    def extract_output(self, accumulator: List[bytes]) -> Dict[metric_types.MetricKey, Any]:
        summary = summarize([ImageEval.from_bytes(image) for image in accumulator], self._iou_type,
                            self._class_ids, self._max_detections)
        values = [summary[k] for k in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")]
        values += [summary["per_class"][c] for c in self._class_ids]
        values.append(summary["pr_curves"])
        return dict(zip(self._keys, values))


class _COCOAveragePrecisionBase(metric_types.Metric):
    """COCO AP (``pycocotools`` semantics) of one IoU type as a TFMA metric; see the module docstring."""

    IOU_TYPE = ""
    DEFAULT_NAME = ""

    def __init__(self, class_ids: Sequence[int], class_names: Optional[Sequence[str]] = None,
                 max_detections: int = 100, mask_threshold: float = masks_lib.DEFAULT_THRESHOLD,
                 name: Optional[str] = None):
        """Args:
          class_ids: the label map's ids; AP is the mean over those that have ground truth (as COCO's catIds).
          class_names: one per id, naming the per-class metrics ("<name>/<class name>"); default the ids.
          max_detections: per image and class, the highest-scoring ones count (COCO's maxDets, 100).
          mask_threshold: probability above which a pasted mask pixel belongs to the instance (masks only).
          name: the overall AP's metric name and prefix of the others (see :func:`metric_names`).
        """
        class_ids = [int(c) for c in class_ids]
        class_names = [str(c) for c in class_ids] if class_names is None else [str(n) for n in class_names]
        if not class_ids:
            raise ValueError("class_ids is empty")
        if len(class_names) != len(class_ids):
            raise ValueError(f"{len(class_ids)} class ids but {len(class_names)} class names")
        if len(set(class_ids)) != len(class_ids):
            raise ValueError(f"class ids repeat: {class_ids}")
        if int(max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, not {max_detections}")
        super().__init__(self._metric_computations, class_ids=class_ids, class_names=class_names,
                         max_detections=int(max_detections), mask_threshold=float(mask_threshold),
                         name=name or self.DEFAULT_NAME)

    def _default_name(self) -> str:
        return self.DEFAULT_NAME

    @property
    def compute_confidence_interval(self) -> bool:
        # Jackknife/bootstrap would rerun COCO's accumulation per resample; not worth it for a blessing gate.
        return False

    def _metric_computations(self, class_ids: List[int], class_names: List[str], max_detections: int,
                             mask_threshold: float, name: str, model_names: Optional[List[str]] = None,
                             output_names: Optional[List[str]] = None,
                             example_weighted: bool = False) -> metric_types.MetricComputations:
        if example_weighted:
            raise ValueError(f"{name}: COCO AP has no example weights; set MetricsSpec.example_weights "
                             f"unweighted for it")
        computations = []
        for model_name in model_names or [""]:
            for output_name in output_names or [""]:
                keys = [metric_types.MetricKey(name=n, model_name=model_name, output_name=output_name,
                                               example_weighted=False)
                        for n in metric_names(name, class_names) + [pr_curves_name(name)]]
                preprocessor = _CocoImageEvalPreprocessor(self.IOU_TYPE, class_ids, max_detections, mask_threshold,
                                                          model_name)
                computations.append(metric_types.MetricComputation(
                    keys=keys, preprocessors=[preprocessor],
                    combiner=_CocoAccumulateCombiner(keys, self.IOU_TYPE, class_ids, max_detections)))
        return computations


class COCOMaskAP(_COCOAveragePrecisionBase):
    """COCO mask AP (``COCOeval`` ``segm``): AP, AP50, AP75, APs/m/l and per-class AP, named by
    :func:`metric_names` (default prefix "mask_ap").

    Configure with ``tfma.MetricConfig(class_name="COCOMaskAP", module="maskrcnn_tfx.pipelines.metrics", config=...)``
    (``maskrcnn_tfx.pipelines.eval_config`` does). Reads the example's ``image/object/mask`` PNGs, classes, crowd flags
    and areas, and the model's ``detection_*`` outputs (see :data:`REQUIRED_OUTPUTS`).
    """

    IOU_TYPE = "segm"
    DEFAULT_NAME = MASK_AP


class COCOBoxAP(_COCOAveragePrecisionBase):
    """COCO box AP (``COCOeval`` ``bbox``) with COCO's crowd handling and area ranges (areas are the
    example's ``image/object/area``, as in COCO), reported like :class:`COCOMaskAP` (default prefix "box_ap")."""

    IOU_TYPE = "bbox"
    DEFAULT_NAME = BOX_AP


# --------------------------------------------------------------------------------------------------------------
# TFMA's own box AP, usable with a baseline model
# --------------------------------------------------------------------------------------------------------------

class _ModelKeyedPreprocessor(metric_types.Preprocessor):
    """Keys another preprocessor's predictions by model name, as TFMA's combiners expect with several models.

    TFMA 0.47's ``BoundingBoxMatchPreprocessor`` reads the right model's predictions but yields them bare, while
    the confusion-matrix combiner it feeds looks them up by model name whenever the evaluation has several models
    (``metric_util.to_label_prediction_example_weight``), and fails with ``expected dict for "candidate" but found
    <class 'list'>``. With one model (name "") nothing changes.
    """

    def __init__(self, inner: metric_types.Preprocessor, model_name: str):
        super().__init__(name=f"{inner.name}:model={model_name}")
        self._inner = inner
        self._model_name = model_name

    def setup(self):
        self._inner.setup()

    def process(self, extracts: tfma.types.Extracts) -> Iterator[metric_types.StandardMetricInputs]:
        for inputs in self._inner.process(extracts):
            if self._model_name and tfma_constants.PREDICTIONS_KEY in inputs:
                inputs[tfma_constants.PREDICTIONS_KEY] = {self._model_name: inputs[tfma_constants.PREDICTIONS_KEY]}
            yield inputs


def _model_keyed(computation):
    if not isinstance(computation, metric_types.MetricComputation) or not any(
            isinstance(p, tfma.metrics.preprocessors.BoundingBoxMatchPreprocessor) for p in computation.preprocessors):
        return computation
    model_names = {key.model_name for key in computation.keys}
    if len(model_names) != 1:
        raise ValueError(f"a box-matching computation should be of one model, these keys name {sorted(model_names)}")
    model_name = model_names.pop()
    preprocessors = [_ModelKeyedPreprocessor(p, model_name)
                     if isinstance(p, tfma.metrics.preprocessors.BoundingBoxMatchPreprocessor) else p
                     for p in computation.preprocessors]
    return metric_types.MetricComputation(keys=computation.keys, preprocessors=preprocessors,
                                          combiner=computation.combiner)


class BoxMeanAveragePrecision(tfma.metrics.COCOMeanAveragePrecision):
    """TFMA's ``COCOMeanAveragePrecision``, its computations unchanged, but evaluable with a baseline model.

    Its box-matching preprocessors are wrapped by :class:`_ModelKeyedPreprocessor` (TFMA 0.47 cannot evaluate its
    own metric on a candidate and a baseline together without it). Configure with
    ``tfma.MetricConfig(class_name="BoxMeanAveragePrecision", module="maskrcnn_tfx.pipelines.metrics", config=...)`` and
    the arguments of ``COCOMeanAveragePrecision``.
    """

    def computations(self, *args, **kwargs) -> metric_types.MetricComputations:
        return [_model_keyed(c) for c in super().computations(*args, **kwargs)]


# --------------------------------------------------------------------------------------------------------------
# The extractor for TFMA's own box metric and for slicing
# --------------------------------------------------------------------------------------------------------------

def _add_eval_inputs(extracts: tfma.types.Extracts, model_names: Sequence[str],
                     pixel_boxes: bool = True) -> tfma.types.Extracts:
    """Adds the object-count bucket and (``pixel_boxes``) the pixel boxes to one (unbatched) example's extracts."""
    result = copy.copy(extracts)  # Beam elements are immutable: copy what changes
    features = dict(extracts[tfma_constants.FEATURES_KEY])
    ground_truth = ground_truth_from_features(features, need_masks=False)
    # TFMA's box AP has no crowd handling: crowd regions are left out of its ground truth (so a detection on one
    # counts as a false positive there; COCOBoxAP ignores it as COCO does).
    keep = ~ground_truth.is_crowd
    features[OBJECT_COUNT] = np.array([object_count_bucket(int(keep.sum()))], dtype=object)
    result[tfma_constants.FEATURES_KEY] = features
    if not pixel_boxes:
        return result
    features[GROUNDTRUTH_PIXEL_BOXES] = np.concatenate(
        [ground_truth.boxes[keep], ground_truth.classes[keep, np.newaxis].astype(np.float64)], axis=1)

    standard = tfma_util.StandardExtracts(extracts)
    predictions = {}
    for model_name in model_names:
        outputs = dict(standard.get_predictions(model_name or None))
        detections = detections_from_outputs(outputs, ground_truth.height, ground_truth.width, need_masks=False,
                                             source_id=ground_truth.source_id)
        outputs[DETECTION_PIXEL_BOXES] = np.concatenate(
            [detections.boxes, detections.classes[:, np.newaxis].astype(np.float64),
             detections.scores[:, np.newaxis]], axis=1)
        predictions[model_name] = outputs
    result[tfma_constants.PREDICTIONS_KEY] = predictions[""] if list(model_names) == [""] else predictions
    return result


def _model_names(eval_config: tfma.EvalConfig) -> List[str]:
    # TFMA keys predictions by model name only when there are several models.
    specs = list(eval_config.model_specs)
    return [spec.name for spec in specs] if len(specs) > 1 else [""]


def _uses_pixel_boxes(eval_config: tfma.EvalConfig) -> bool:
    """Whether a metric of the config reads the pixel boxes (TFMA's box metrics configured with their keys)."""
    return any(GROUNDTRUTH_PIXEL_BOXES in metric.config or DETECTION_PIXEL_BOXES in metric.config
               for spec in eval_config.metrics_specs for metric in spec.metrics)


def CocoEvalInputsExtractor(eval_config: tfma.EvalConfig) -> tfma.extractors.Extractor:  # pylint: disable=invalid-name
    """Adds, to every unbatched example, what the model and the example do not carry:

    - features[:data:`OBJECT_COUNT`]: the bucket of the number of non-crowd objects, a feature to slice on;
    - when a metric of ``eval_config`` names them (TFMA's box metric, ``box_metric: tfma``), TFMA's box-metric
      inputs: features[:data:`GROUNDTRUTH_PIXEL_BOXES`], [G, 5] non-crowd ground truth (left, top, right,
      bottom, class) in pixels, and predictions[:data:`DETECTION_PIXEL_BOXES`] (per model), [D, 6] detections
      (left, top, right, bottom, class, score) in pixels, truncated to ``num_detections``. The default metrics
      do not read them; leaving them out spares every example a copy of its predictions.

    Must run after TFMA's unbatching and before slicing (:func:`custom_extractors` places it there).
    """
    model_names = _model_names(eval_config)
    return tfma.extractors.Extractor(
        stage_name=_EXTRACTOR_STAGE,
        ptransform=beam.Map(_add_eval_inputs, model_names=model_names,
                            pixel_boxes=_uses_pixel_boxes(eval_config)))


def custom_extractors(eval_shared_model: tfma.types.MaybeMultipleEvalSharedModels, eval_config: tfma.EvalConfig,
                      tensor_adapter_config: Optional[Any] = None) -> List[tfma.extractors.Extractor]:
    """TFMA's default extractors with :func:`CocoEvalInputsExtractor` between unbatching and slicing.

    The TFX Evaluator calls this when given ``module_path="maskrcnn_tfx.pipelines.metrics"``; with
    ``tfma.run_model_analysis`` pass ``extractors=custom_extractors(...)``.
    """
    extractors = tfma.default_extractors(eval_shared_model=eval_shared_model, eval_config=eval_config,
                                         tensor_adapter_config=tensor_adapter_config)
    stages = [extractor.stage_name for extractor in extractors]
    if _UNBATCH_STAGE not in stages:
        raise RuntimeError(f"TFMA's default extractors have no {_UNBATCH_STAGE!r} stage (stages: {stages}); "
                           f"this TFMA version is not supported")
    extractors.insert(stages.index(_UNBATCH_STAGE) + 1, CocoEvalInputsExtractor(eval_config))
    logging.info("TFMA extractors: %s", [extractor.stage_name for extractor in extractors])
    return extractors
