"""The Evaluator's configuration: COCO box and mask mAP, slices, and the thresholds that bless a model.

:func:`build_eval_config` returns the ``tfma.EvalConfig`` of the TFX Evaluator (or ``tfma.run_model_analysis``).
It reports, for the model and, with a baseline, for the baseline and their difference:

- ``mask_ap``, ``mask_ap50``, ``mask_ap75``: COCO mask AP at IoU .50:.95, .50 and .75
  (``pipelines.metrics.COCOMaskAP``);
- ``mask_ap_small``, ``mask_ap_medium``, ``mask_ap_large``: the same by object area (< 32², 32² to 96², > 96²
  pixels);
- ``mask_ap/<class name>``: per class, at IoU .50:.95;
- ``box_ap``, ``box_ap50``, ... ``box_ap/<class name>``: the same set for boxes.

Box AP comes from one of two implementations (``box_metric``):

- ``"tfma"`` (default): TFMA's own ``COCOMeanAveragePrecision``, one metric config per reported number, fed with
  pixel boxes by ``pipelines.metrics.CocoEvalInputsExtractor``. It is configured as its subclass
  ``pipelines.metrics.BoxMeanAveragePrecision``, whose computations are TFMA's but whose box-matching outputs are
  keyed by model name: TFMA 0.47's own class fails as soon as a baseline model is evaluated too (its
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
  * cost: every (class, IoU threshold, area range) is its own Beam computation, 40 per class, each with a fixed
    cost of about 1 s per evaluation at 1,000 thresholds (0.16 s at 200, 4.7 s at TFMA's default 10,000;
    measured on 2 shared CPU cores, 10 images): 3 classes take 2 minutes, 80 classes about an hour, where
    ``"pycocotools"`` takes 4 s for masks and boxes together.

- ``"pycocotools"``: ``pipelines.metrics.COCOBoxAP``, which shares the mask metric's path (COCO's own per-image
  matching and accumulation) and gives COCOeval's ``bbox`` numbers exactly, at a small fraction of the cost.

Slicing: the overall slice plus, by default, :data:`pipelines.metrics.OBJECT_COUNT` (the number of non-crowd
objects, bucketed 0, 1, 2-3, 4-7, ...), a feature that ``pipelines.metrics.custom_extractors`` derives.

Blessing: lower bounds on ``mask_ap`` and ``box_ap`` (``min_mask_ap``, ``min_box_ap``) and, with a baseline, a
change threshold (``tfma.GenericChangeThreshold``, HIGHER_IS_BETTER): the candidate's AP may be at most
``max_ap_drop`` below the baseline's. Both apply to the overall slice only.

The TFX Evaluator must run with ``module_path=EVALUATOR_MODULE_PATH`` (it supplies the extractors) and on the raw
examples; the model's tf.Example signature (``signature_name``) must return ``detection_boxes``,
``detection_classes``, ``detection_scores``, ``num_detections`` and ``detection_masks``.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Union

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow and TFMA load)
import tensorflow_model_analysis as tfma

from maskrcnn_tfx import signature
from maskrcnn_tfx.label_map import LabelMap
from pipelines import metrics

# The exported model's tf.Example signature (from the TF-free names module: no Model Garden in Beam workers).
DEFAULT_SIGNATURE = signature.TF_EXAMPLE_SIGNATURE
# The module whose custom_extractors() the TFX Evaluator must use: Evaluator(module_path=EVALUATOR_MODULE_PATH).
EVALUATOR_MODULE_PATH = metrics.__name__

MASK_AP = metrics.COCOMaskAP.DEFAULT_NAME
BOX_AP = metrics.COCOBoxAP.DEFAULT_NAME
BOX_METRIC_TFMA = "tfma"
BOX_METRIC_PYCOCOTOOLS = "pycocotools"
DEFAULT_SLICING = ((metrics.OBJECT_COUNT,),)
DEFAULT_BOX_NUM_THRESHOLDS = 1000
DEFAULT_MAX_DETECTIONS = 100

SliceLike = Union[str, Sequence[str], tfma.SlicingSpec]


def tfma_box_metric_configs(label_map: LabelMap, *, name: str = BOX_AP,
                            num_thresholds: int = DEFAULT_BOX_NUM_THRESHOLDS,
                            max_detections: int = DEFAULT_MAX_DETECTIONS) -> List[tfma.MetricConfig]:
    """TFMA's ``COCOMeanAveragePrecision`` configs for the names of :func:`pipelines.metrics.metric_names`.

    Their inputs are the pixel boxes that ``pipelines.metrics.CocoEvalInputsExtractor`` adds.
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
    """The config of ``pipelines.metrics.COCOMaskAP`` (``iou_type="segm"``) or ``COCOBoxAP`` (``"bbox"``)."""
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
        threshold.value_threshold.lower_bound.value = float(lower_bound)
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
                      with_baseline: bool = False, box_metric: str = BOX_METRIC_TFMA,
                      box_num_thresholds: int = DEFAULT_BOX_NUM_THRESHOLDS,
                      max_detections: int = DEFAULT_MAX_DETECTIONS) -> tfma.EvalConfig:
    """The Evaluator's ``tfma.EvalConfig`` (see the module docstring).

    Args:
      label_map: the data set's classes; every id gets a per-class AP, named by its class name.
      signature_name: the model's signature that takes serialized raw tf.Examples.
      slicing: slices besides the overall one: a feature key, a sequence of keys (their cross) or a
        ``tfma.SlicingSpec``; features of the raw example or :data:`pipelines.metrics.OBJECT_COUNT`.
      min_mask_ap: bless only if ``mask_ap`` (overall) is at least this; None: no lower bound.
      min_box_ap: the same for ``box_ap``.
      max_ap_drop: with a baseline, bless only if ``mask_ap`` and ``box_ap`` are at most this below the
        baseline's (0: no worse); None: no comparison.
      with_baseline: add a baseline model spec (``tfma.BASELINE_KEY``; the candidate is ``tfma.CANDIDATE_KEY``)
        and the change thresholds. In TFX pass True when a baseline resolver feeds the Evaluator: on the first
        run, without a blessed model, TFX drops the baseline spec and the change thresholds itself.
      box_metric: ``"tfma"`` (TFMA's COCOMeanAveragePrecision) or ``"pycocotools"`` (exact COCO, faster).
      box_num_thresholds: score thresholds of TFMA's box metric (its own default, 10,000, is ~5x slower).
      max_detections: detections per image and class that count (COCO: 100).
    """
    if box_metric not in (BOX_METRIC_TFMA, BOX_METRIC_PYCOCOTOOLS):
        raise ValueError(f"box_metric must be {BOX_METRIC_TFMA!r} or {BOX_METRIC_PYCOCOTOOLS!r}, not {box_metric!r}")
    for label, value in (("min_mask_ap", min_mask_ap), ("min_box_ap", min_box_ap), ("max_ap_drop", max_ap_drop)):
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{label} must be in [0, 1], not {value}")
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
    if with_baseline:
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
