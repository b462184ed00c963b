"""The Evaluator's configuration: COCO box and mask mAP, slices, and the thresholds that bless a model.

:func:`build_eval_config` returns the ``tfma.EvalConfig`` of the TFX Evaluator (or ``tfma.run_model_analysis``).
It reports, for the model and, with a baseline, for the baseline and their difference:

- ``mask_ap``, ``mask_ap50``, ``mask_ap75``: COCO mask AP at IoU .50:.95, .50 and .75
  (``maskrcnn_tfx.pipelines.metrics.COCOMaskAP``);
- ``mask_ap_small``, ``mask_ap_medium``, ``mask_ap_large``: the same by object area (< 32², 32² to 96², > 96²
  pixels);
- ``mask_ap/<class name>``: per class, at IoU .50:.95;
- ``box_ap``, ``box_ap50``, ... ``box_ap/<class name>``: the same set for boxes.

Box AP comes from one of two implementations (``box_metric``):

- ``"pycocotools"`` (default): ``maskrcnn_tfx.pipelines.metrics.COCOBoxAP``, which shares the mask metric's path: one
  COCO per-image matching per example (``COCOeval.evaluateImg``) and one accumulation per slice
  (``COCOeval.accumulate``). It gives COCOeval's ``bbox`` numbers exactly (crowd regions, mask areas for
  APs/m/l, classes without ground truth left out of the mean), and its cost does not grow with the number of
  classes or score thresholds (``benchmarks/evaluator.py`` compares it with COCOeval itself).
- ``"tfma"``: TFMA's own ``COCOMeanAveragePrecision``, one metric config per reported number, fed with pixel
  boxes by ``maskrcnn_tfx.pipelines.metrics.CocoEvalInputsExtractor``. It is configured as its subclass
  ``maskrcnn_tfx.pipelines.metrics.BoxMeanAveragePrecision``, whose computations are TFMA's but whose box-matching
  outputs are keyed by model name: TFMA 0.47's own class fails as soon as a baseline model is evaluated too (its
  ``BoundingBoxMatchPreprocessor`` yields bare predictions that its combiner looks up by model name). It is
  COCO's algorithm with these differences
  (``tests/test_metrics.py`` shows it equal to ``pycocotools`` where none applies, and the crowd difference):

  * no crowd handling: crowd regions are dropped from its ground truth, so a detection on one is a false
    positive (COCO ignores it);
  * a class without ground truth (in the data, a slice, or an area range) counts as AP 0 in the mean (COCO
    leaves it out), which lowers AP on slices and APs/m/l wherever a class is absent;
  * APs/m/l bucket objects by box area (COCO: by ``image/object/area``, the mask area), and ground truth outside
    the range is dropped rather than ignored, so near 32² and 96² detections can count differently;
  * scores are binned into ``box_num_thresholds`` thresholds (detections within one bin tie);
  * cost: every (class, IoU threshold, area range) is its own Beam computation with its own pure-Python box
    matching per example: 40 per class (3,201 computations with the mask metric at 80 classes), each growing
    with the score thresholds, so a COCO-like eval split takes hours (figures: benchmarks/README.md).
    :func:`tfma_box_metric_cost` gives the estimate, and
    ``maskrcnn_tfx.pipelines.pipeline.create_pipeline`` warns before a run whose estimate is slow.

Slicing: the overall slice plus, by default, :data:`maskrcnn_tfx.pipelines.metrics.OBJECT_COUNT` (the number of
non-crowd objects, bucketed 0, 1, 2-3, 4-7, ...), a feature that ``maskrcnn_tfx.pipelines.metrics.custom_extractors``
derives.

Blessing: strict lower bounds on ``mask_ap`` and ``box_ap`` (``min_mask_ap``, ``min_box_ap``: the AP must be
strictly above the bound, so that with the default 0.001 a model that detects nothing, AP 0.000, is never
blessed) and, with a baseline, a change threshold (``tfma.GenericChangeThreshold``, HIGHER_IS_BETTER): the
candidate's AP may be at most ``max_ap_drop`` below the baseline's. All apply to the overall slice only. TFMA's
``value_threshold.lower_bound`` is inclusive (it passes ``value >= lower_bound``), so "strictly above b" is
stored as the next double above b (:func:`strict_lower_bound`): for every computed AP, ``value >=
nextafter(b, +inf)`` holds exactly when ``value > b``. An undefined AP (NaN: no ground truth) never passes. A
negative bound lets every model with a defined AP pass (smoke runs that must push whatever they train). On a
first run (no blessed model yet) TFX drops the change thresholds; with no bound left it validates nothing and
blesses nothing.

The TFX Evaluator must run with ``module_path=EVALUATOR_MODULE_PATH`` (it supplies the extractors) and on the raw
examples; the model's tf.Example signature (``signature_name``) must return ``detection_boxes``,
``detection_classes``, ``detection_scores``, ``num_detections`` and ``detection_masks``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow and TFMA load)
import tensorflow_model_analysis as tfma

from maskrcnn_tfx import signature
from maskrcnn_tfx.config.schema import AP_BOUND_RANGE, BOX_METRICS, EvaluationConfig
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx.pipelines import metrics

# The exported model's tf.Example signature (from the TF-free names module: no Model Garden in Beam workers).
DEFAULT_SIGNATURE = signature.TF_EXAMPLE_SIGNATURE
# The module whose custom_extractors() the TFX Evaluator must use: Evaluator(module_path=EVALUATOR_MODULE_PATH).
EVALUATOR_MODULE_PATH = metrics.__name__

BOX_METRIC_PYCOCOTOOLS, BOX_METRIC_TFMA = BOX_METRICS
# The configuration's defaults (maskrcnn_tfx/config/schema.py's EvaluationConfig), for callers without one.
_DEFAULTS = EvaluationConfig()
DEFAULT_BOX_METRIC = _DEFAULTS.box_metric
DEFAULT_SLICING = ((metrics.OBJECT_COUNT,),)
DEFAULT_BOX_NUM_THRESHOLDS = _DEFAULTS.box_num_thresholds
DEFAULT_MAX_DETECTIONS = _DEFAULTS.max_detections
# The default strict lower bound on mask and box AP: AP 0.000 (a model that detects nothing) never passes.
DEFAULT_MIN_AP = _DEFAULTS.min_mask_ap

# TFMA's box metric: its Beam computations per class ((10 IoU thresholds) x (all, small, medium, large areas)),
# and its cost per computation and eval image, linear in the score thresholds: fitted to measurements on 2 CPU
# cores (benchmarks/README.md), so the warning's estimate is of the right order, not exact.
TFMA_BOX_COMPUTATIONS_PER_CLASS = 10 * len(metrics.AREA_RANGES)
TFMA_BOX_SECONDS_PER_COMPUTATION_AND_IMAGE = (0.021, 0.0000935)  # (fixed, per score threshold)
# A TFMA box metric configuration estimated above this many seconds per eval image gets a warning.
SLOW_SECONDS_PER_IMAGE = 1.0

# The model outputs the metrics read, as feature names of examples that carry their predictions.
STORED_PREDICTION_KEYS = metrics.REQUIRED_OUTPUTS["mask"]

SliceLike = Union[str, Sequence[str], tfma.SlicingSpec]


def strict_lower_bound(bound: float) -> float:
    """TFMA's inclusive ``value_threshold.lower_bound`` that passes exactly the values strictly above ``bound``.

    TFMA passes ``value >= lower_bound``; between ``bound`` and the next double above it there is no double, so
    ``value >= nextafter(bound, +inf)`` is ``value > bound`` for every float64 AP.
    """
    return float(np.nextafter(float(bound), math.inf))


def stated_lower_bound(lower_bound: float) -> float:
    """The configured strict bound behind a TFMA ``lower_bound`` written by :func:`strict_lower_bound`."""
    return float(np.nextafter(float(lower_bound), -math.inf))


def describe_lower_bound(lower_bound: float) -> str:
    """A TFMA (inclusive) lower bound in words: "above 0.001" when it is a strict bound of this module, else
    "at least 0.5" (whichever reads shorter: both say the same for float64 values)."""
    strict = stated_lower_bound(lower_bound)
    if len(repr(strict)) < len(repr(float(lower_bound))):
        return f"above {strict:g}"
    return f"at least {float(lower_bound):g}"


@dataclasses.dataclass(frozen=True)
class TfmaBoxMetricCost:
    """The expected cost of ``box_metric="tfma"`` (see the module docstring)."""

    num_classes: int
    num_thresholds: int
    computations: int  # Beam computations of the evaluation (TFMA's box matching, plus the mask metric)
    seconds_per_image: float  # estimated on 2 CPU cores

    @property
    def slow(self) -> bool:
        return self.seconds_per_image >= SLOW_SECONDS_PER_IMAGE

    def message(self) -> str:
        return (f"evaluation.box_metric 'tfma' (TFMA's COCOMeanAveragePrecision) with {self.num_classes} classes "
                f"and {self.num_thresholds} score thresholds builds {self.computations:,} Beam computations (40 "
                f"per class, each with its own box matching); expect about {self.seconds_per_image:,.0f} s of "
                f"Evaluator time per eval image on 2 CPU cores (about {self.seconds_per_image * 100 / 3600:.1f} h "
                f"per 100 images). The default box_metric 'pycocotools' gives COCO's exact box AP at a cost that "
                f"does not grow with classes or thresholds; fewer box_num_thresholds make 'tfma' cheaper.")


def tfma_box_metric_cost(num_classes: int, num_thresholds: int = DEFAULT_BOX_NUM_THRESHOLDS) -> TfmaBoxMetricCost:
    """The Beam computations and the estimated seconds per eval image of TFMA's box metric (with the mask AP)."""
    box = TFMA_BOX_COMPUTATIONS_PER_CLASS * int(num_classes)
    fixed, per_threshold = TFMA_BOX_SECONDS_PER_COMPUTATION_AND_IMAGE
    return TfmaBoxMetricCost(num_classes=int(num_classes), num_thresholds=int(num_thresholds),
                             computations=box + 1,
                             seconds_per_image=box * (fixed + per_threshold * int(num_thresholds)))


def warn_if_slow_box_metric(evaluation: Any, label_map: LabelMap) -> Optional[TfmaBoxMetricCost]:
    """Logs the expected cost of ``evaluation.box_metric`` "tfma" when it would be slow, before a run starts.

    ``evaluation`` is the configuration's evaluation section; returns the cost (None for "pycocotools").
    """
    if evaluation.box_metric != "tfma":
        return None
    cost = tfma_box_metric_cost(len(label_map), evaluation.box_num_thresholds)
    if cost.slow:
        logging.getLogger(__name__).warning("%s", cost.message())
    return cost


def tfma_box_metric_configs(label_map: LabelMap, *, name: str = metrics.BOX_AP,
                            num_thresholds: int = DEFAULT_BOX_NUM_THRESHOLDS,
                            max_detections: int = DEFAULT_MAX_DETECTIONS) -> List[tfma.MetricConfig]:
    """TFMA's ``COCOMeanAveragePrecision`` configs for the names of :func:`maskrcnn_tfx.pipelines.metrics.metric_names`.

    Their inputs are the pixel boxes that ``maskrcnn_tfx.pipelines.metrics.CocoEvalInputsExtractor`` adds.
    """
    common: Dict[str, Any] = {
        "labels_to_stack": [metrics.GROUNDTRUTH_PIXEL_BOXES],
        "predictions_to_stack": [metrics.DETECTION_PIXEL_BOXES],
        "max_num_detections": int(max_detections),
        "num_thresholds": int(num_thresholds),
    }
    ids = label_map.ids
    # Same arguments give the same computation names, so per-class AP reuses the overall AP's computations.
    variants: List[Dict[str, Any]] = [
        {"class_ids": ids},
        {"class_ids": ids, "iou_thresholds": [0.5]},
        {"class_ids": ids, "iou_thresholds": [0.75]},
    ]
    variants += [{"class_ids": ids, "area_range": list(area)} for area in metrics.AREA_RANGES[1:]]
    variants += [{"class_ids": [class_id]} for class_id in ids]
    names = metrics.metric_names(name, label_map.names)
    # TFMA's COCOMeanAveragePrecision, through the subclass that also works with a baseline model.
    return [tfma.MetricConfig(class_name=metrics.BoxMeanAveragePrecision.__name__, module=metrics.__name__,
                              config=json.dumps(dict(common, name=metric_name, **variant), sort_keys=True))
            for metric_name, variant in zip(names, variants)]


def coco_metric_config(label_map: LabelMap, iou_type: str, *, name: Optional[str] = None,
                       max_detections: int = DEFAULT_MAX_DETECTIONS) -> tfma.MetricConfig:
    """The config of ``maskrcnn_tfx.pipelines.metrics.COCOMaskAP`` (``iou_type="segm"``) or ``COCOBoxAP``
    (``"bbox"``)."""
    classes = {"segm": metrics.COCOMaskAP, "bbox": metrics.COCOBoxAP}
    if iou_type not in classes:
        raise ValueError(f"iou_type must be one of {sorted(classes)}, not {iou_type!r}")
    cls = classes[iou_type]
    config = {"class_ids": label_map.ids, "class_names": label_map.names, "max_detections": int(max_detections),
              "name": name or cls.DEFAULT_NAME}
    return tfma.MetricConfig(class_name=cls.__name__, module=metrics.__name__,
                             config=json.dumps(config, sort_keys=True))


def _slicing_spec(spec: SliceLike) -> tfma.SlicingSpec:
    if isinstance(spec, tfma.SlicingSpec):
        return spec
    if isinstance(spec, str):
        return tfma.SlicingSpec(feature_keys=[spec])
    return tfma.SlicingSpec(feature_keys=list(spec))


def _blessing_threshold(lower_bound: Optional[float], max_drop: Optional[float]) -> Optional[tfma.MetricThreshold]:
    if lower_bound is None and max_drop is None:
        return None
    threshold = tfma.MetricThreshold()
    if lower_bound is not None:
        # Strictly above the configured bound (TFMA's lower_bound is inclusive).
        threshold.value_threshold.lower_bound.value = strict_lower_bound(lower_bound)
    if max_drop is not None:
        # The validator passes candidate - baseline >= absolute (inclusive), so an equal model passes at 0.
        threshold.change_threshold.direction = tfma.MetricDirection.HIGHER_IS_BETTER
        threshold.change_threshold.absolute.value = -float(max_drop)
    return threshold


def _with_threshold(config: tfma.MetricConfig, threshold: Optional[tfma.MetricThreshold]) -> tfma.MetricConfig:
    if threshold is not None:
        # The overall slice only: slices are small and noisy, a blessing gate should not hinge on one of them.
        config.per_slice_thresholds.add(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)
    return config


def build_eval_config(label_map: LabelMap, *, signature_name: str = DEFAULT_SIGNATURE,
                      slicing: Sequence[SliceLike] = DEFAULT_SLICING, min_mask_ap: Optional[float] = None,
                      min_box_ap: Optional[float] = None, max_ap_drop: Optional[float] = 0.0,
                      with_baseline: bool = False, box_metric: str = DEFAULT_BOX_METRIC,
                      box_num_thresholds: int = DEFAULT_BOX_NUM_THRESHOLDS,
                      max_detections: int = DEFAULT_MAX_DETECTIONS,
                      stored_predictions: bool = False) -> tfma.EvalConfig:
    """The Evaluator's ``tfma.EvalConfig`` (see the module docstring).

    Args:
      label_map: the data set's classes; every id gets a per-class AP, named by its class name.
      signature_name: the model's signature that takes serialized raw tf.Examples.
      slicing: slices besides the overall one: a feature key, a sequence of keys (their cross) or a
        ``tfma.SlicingSpec``; features of the raw example or :data:`maskrcnn_tfx.pipelines.metrics.OBJECT_COUNT`.
      min_mask_ap: bless only if ``mask_ap`` (overall) is strictly above this; None: no lower bound (the
        pipeline's configuration defaults to :data:`DEFAULT_MIN_AP`).
      min_box_ap: the same for ``box_ap``.
      max_ap_drop: with a baseline, bless only if ``mask_ap`` and ``box_ap`` are at most this below the
        baseline's (0: no worse); None: no comparison.
      with_baseline: add a baseline model spec (``tfma.BASELINE_KEY``; the candidate is ``tfma.CANDIDATE_KEY``)
        and the change thresholds. In TFX pass True when a baseline resolver feeds the Evaluator: on the first
        run, without a blessed model, TFX drops the baseline spec and the change thresholds itself.
      box_metric: ``"pycocotools"`` (exact COCO box AP, the default) or ``"tfma"`` (TFMA's
        COCOMeanAveragePrecision; see :func:`tfma_box_metric_cost`).
      box_num_thresholds: score thresholds of TFMA's box metric (its own default, 10,000, is ~5x slower).
      max_detections: detections per image and class that count (COCO: 100).
      stored_predictions: evaluate predictions stored in the examples as features named like the model's
        outputs (:data:`STORED_PREDICTION_KEYS`; flat lists are fine), without a model:
        ``tfma.run_model_analysis(eval_shared_model=None, extractors=custom_extractors(None, config), ...)``.
    """
    if box_metric not in BOX_METRICS:
        raise ValueError(f"box_metric must be {BOX_METRIC_PYCOCOTOOLS!r} or {BOX_METRIC_TFMA!r}, not {box_metric!r}")
    low, high = AP_BOUND_RANGE
    for label, value in (("min_mask_ap", min_mask_ap), ("min_box_ap", min_box_ap)):
        if value is not None and not low <= float(value) <= high:
            raise ValueError(f"{label} must be in [{low:g}, {high:g}], not {value}")
    if max_ap_drop is not None and not 0.0 <= float(max_ap_drop) <= 1.0:
        raise ValueError(f"max_ap_drop must be in [0, 1], not {max_ap_drop}")
    if not len(label_map):
        raise ValueError("the label map has no classes")
    max_drop = max_ap_drop if with_baseline else None

    if box_metric == BOX_METRIC_TFMA:
        box_configs = tfma_box_metric_configs(label_map, num_thresholds=box_num_thresholds,
                                              max_detections=max_detections)
    else:
        box_configs = [coco_metric_config(label_map, "bbox", max_detections=max_detections)]
    # The overall box AP is the first config in both cases.
    _with_threshold(box_configs[0], _blessing_threshold(min_box_ap, max_drop))
    mask_config = _with_threshold(coco_metric_config(label_map, "segm", max_detections=max_detections),
                                  _blessing_threshold(min_mask_ap, max_drop))

    # The serving model is a tf.Module's SavedModel, not a Keras one: saying so spares TFMA loading each model as
    # Keras first to find out (which costs a whole model load and warns "SavedModel saved prior to TF 2.5").
    generic = tfma.constants.TF_GENERIC
    if stored_predictions:
        if with_baseline:
            raise ValueError("stored_predictions evaluates one set of predictions: no baseline")
        model_specs = [tfma.ModelSpec(prediction_keys={key: key for key in STORED_PREDICTION_KEYS})]
    elif with_baseline:
        model_specs = [tfma.ModelSpec(name=tfma.CANDIDATE_KEY, signature_name=signature_name, model_type=generic),
                       tfma.ModelSpec(name=tfma.BASELINE_KEY, signature_name=signature_name, is_baseline=True,
                                      model_type=generic)]
    else:
        model_specs = [tfma.ModelSpec(signature_name=signature_name, model_type=generic)]
    return tfma.EvalConfig(
        model_specs=model_specs,
        metrics_specs=[tfma.MetricsSpec(metrics=[mask_config] + box_configs)],
        slicing_specs=[tfma.SlicingSpec()] + [_slicing_spec(spec) for spec in slicing],
    )
