"""The Evaluator's result read back: metrics by slice and model, precision-recall curves, and the blessing
decision with every threshold of the EvalConfig stored with the result (the evaluation-output contract of
docs/architecture.md). The run summary (``outputs``) and the report read it through this module.

Everything is read with TFMA's own loaders from the evaluation artifact MLMD names (``tfma.load_metrics``,
``tfma.load_eval_result`` for the EvalConfig, ``tfma.load_validation_result`` for the decision). Metric names are
``maskrcnn_tfx.pipelines.metrics``' (``mask_ap``, ``box_ap50``, ``mask_ap/<class>``, ``mask_ap_pr_curves`` ...).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from maskrcnn_tfx.pipelines import metrics as metrics_lib

KINDS = (metrics_lib.MASK_AP, metrics_lib.BOX_AP)
# Slice columns shown with a reader's name rather than the feature key.
SLICE_COLUMN_NAMES = {metrics_lib.OBJECT_COUNT: "objects in the image"}
OVERALL = "Overall"

SliceKey = Tuple[Tuple[str, Any], ...]


@dataclasses.dataclass
class SliceMetrics:
    """One slice's numbers: ``values[model][metric]`` ('' is the only model of a single-model evaluation),
    ``diffs[metric]`` (candidate minus baseline) and ``arrays[model][metric]`` (the precision-recall curves)."""

    key: SliceKey
    values: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
    diffs: Dict[str, float] = dataclasses.field(default_factory=dict)
    arrays: Dict[str, Dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return slice_name(self.key)

    @property
    def is_overall(self) -> bool:
        return not self.key


@dataclasses.dataclass
class ThresholdCheck:
    """One blessing threshold of the EvalConfig, with the numbers it was applied to and its outcome."""

    metric: str
    slices: str  # which slices it applies to, e.g. "Overall"
    condition: str  # e.g. "at least 0.5" or "at most 0.01 below the baseline"
    kind: str  # "value" or "change"
    candidate: Optional[float]
    baseline: Optional[float]
    change: Optional[float]
    # "passed", "failed", or "not applied" (a change threshold without a baseline)
    outcome: str
    message: str = ""


@dataclasses.dataclass
class Evaluation:
    uri: str
    slices: List[SliceMetrics]
    candidate: str  # the model name of the evaluated model ('' or 'candidate')
    baseline: str  # the baseline's model name ('' without one)
    thresholds: List[ThresholdCheck]
    validation_ok: Optional[bool]  # TFMA's verdict (None: no validation result written)
    validation_messages: List[str]
    class_names: List[str]  # per-class metric suffixes, label-map order
    signature: str = ""
    problems: List[str] = dataclasses.field(default_factory=list)  # parts that could not be read

    @property
    def overall(self) -> Optional[SliceMetrics]:
        return next((s for s in self.slices if s.is_overall), None)

    def value(self, metric: str, model: Optional[str] = None, slice_metrics: Optional[SliceMetrics] = None
              ) -> Optional[float]:
        """A metric of the candidate (or ``model``) on the overall slice (or ``slice_metrics``); None if absent."""
        slice_metrics = slice_metrics or self.overall
        if slice_metrics is None:
            return None
        return slice_metrics.values.get(self.candidate if model is None else model, {}).get(metric)

    def baseline_value(self, metric: str, slice_metrics: Optional[SliceMetrics] = None) -> Optional[float]:
        return self.value(metric, self.baseline, slice_metrics) if self.baseline else None

    def diff(self, metric: str, slice_metrics: Optional[SliceMetrics] = None) -> Optional[float]:
        slice_metrics = slice_metrics or self.overall
        return slice_metrics.diffs.get(metric) if (slice_metrics and self.baseline) else None

    def pr_curves(self, kind: str, model: Optional[str] = None) -> Optional[np.ndarray]:
        """The ``[3, 1 + C, 101]`` curves of ``maskrcnn_tfx.pipelines.metrics.pr_curves_name`` on the overall slice, or
        None (e.g. box AP computed by TFMA's own metric, which has no curves)."""
        overall = self.overall
        if overall is None:
            return None
        return overall.arrays.get(self.candidate if model is None else model, {}).get(metrics_lib.pr_curves_name(kind))

    def has_metric(self, metric: str) -> bool:
        return self.value(metric) is not None


def slice_name(key: SliceKey) -> str:
    if not key:
        return OVERALL
    return " × ".join(f"{SLICE_COLUMN_NAMES.get(column, column)} = {_text(value)}" for column, value in key)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _slice_sort_key(slice_metrics: SliceMetrics):
    # Overall first; then by column and by the value's natural order ("2-3" after "1", "16-31" after "8-15").
    def natural(value: Any):
        text = _text(value)
        head = text.split("-")[0].rstrip("+")
        return (0, float(head), text) if head.replace(".", "", 1).isdigit() else (1, 0.0, text)
    return (len(slice_metrics.key), [(c, natural(v)) for c, v in slice_metrics.key])


def _array(array_value) -> np.ndarray:
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2  # pylint: disable=g-import-not-at-top

    kinds = metrics_for_slice_pb2.ArrayValue
    field = {kinds.FLOAT64: "float64_values", kinds.FLOAT32: "float32_values", kinds.INT64: "int64_values",
             kinds.INT32: "int32_values"}.get(array_value.data_type)
    values = np.asarray(getattr(array_value, field), np.float64) if field else np.zeros((0,))
    return values.reshape(tuple(array_value.shape)) if array_value.shape else values


def load_slices(eval_uri: str) -> List[SliceMetrics]:
    """Every slice's metrics from an Evaluator output (overall first)."""
    import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
    from tensorflow_model_analysis.slicer import slicer_lib  # pylint: disable=g-import-not-at-top

    slices: List[SliceMetrics] = []
    for metrics_for_slice in tfma.load_metrics(eval_uri):
        key = tuple(slicer_lib.deserialize_slice_key(metrics_for_slice.slice_key))
        found = SliceMetrics(key=key)
        for kv in metrics_for_slice.metric_keys_and_values:
            name, model = kv.key.name, kv.key.model_name
            kind = kv.value.WhichOneof("type")
            if kind == "double_value":
                value = float(kv.value.double_value.value)
                if kv.key.is_diff:
                    found.diffs[name] = value
                else:
                    found.values.setdefault(model, {})[name] = value
            elif kind == "array_value" and not kv.key.is_diff:
                found.arrays.setdefault(model, {})[name] = _array(kv.value.array_value)
        slices.append(found)
    return sorted(slices, key=_slice_sort_key)


def _threshold_conditions(threshold) -> List[Tuple[str, str]]:
    """(kind, condition text) of one ``tfma.MetricThreshold``."""
    import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top

    found = []
    if threshold.HasField("value_threshold"):
        bounds = threshold.value_threshold
        if bounds.HasField("lower_bound"):
            # "above 0.001" for the pipeline's strict bounds (stored as the next double up), else "at least".
            from maskrcnn_tfx.pipelines.eval_config import describe_lower_bound  # pylint: disable=g-import-not-at-top
            found.append(("value", describe_lower_bound(bounds.lower_bound.value)))
        if bounds.HasField("upper_bound"):
            found.append(("value", f"at most {bounds.upper_bound.value:g}"))
    if threshold.HasField("change_threshold"):
        change = threshold.change_threshold
        higher = change.direction == tfma.MetricDirection.HIGHER_IS_BETTER
        if change.HasField("absolute"):
            limit = change.absolute.value
            if higher:
                text = (f"at most {-limit:g} below the baseline" if limit <= 0
                        else f"at least {limit:g} above the baseline")
            else:
                text = (f"at most {limit:g} above the baseline" if limit >= 0
                        else f"at least {-limit:g} below the baseline")
            found.append(("change", text))
        if change.HasField("relative"):
            found.append(("change", f"relative change vs the baseline {'≥' if higher else '≤'} "
                                    f"{change.relative.value:g}"))
    return found


def _slicing_text(specs) -> str:
    names = []
    for spec in specs:
        if not spec.feature_keys and not spec.feature_values:
            names.append(OVERALL)
            continue
        parts = [SLICE_COLUMN_NAMES.get(k, k) for k in spec.feature_keys]
        parts += [f"{SLICE_COLUMN_NAMES.get(k, k)} = {v}" for k, v in spec.feature_values.items()]
        names.append(" × ".join(parts))
    return ", ".join(names) or "every slice"


def _metric_config_name(config) -> str:
    try:
        body = json.loads(config.config) if config.config else {}
    except ValueError:
        body = {}
    return str(body.get("name") or config.class_name)


def thresholds_of(eval_config, slices: List[SliceMetrics], candidate: str, baseline: str,
                  validation) -> List[ThresholdCheck]:
    """Every threshold of ``eval_config`` with its numbers (overall slice) and outcome from ``validation``."""
    failures: Dict[Tuple[str, str, SliceKey], str] = {}
    if validation is not None:
        from tensorflow_model_analysis.slicer import slicer_lib  # pylint: disable=g-import-not-at-top

        for per_slice in validation.metric_validations_per_slice:
            key = tuple(slicer_lib.deserialize_slice_key(per_slice.slice_key))
            for failure in per_slice.failures:
                kind = "change" if failure.metric_key.is_diff else "value"
                failures[(failure.metric_key.name, kind, key)] = failure.message or "failed"
    overall = next((s for s in slices if s.is_overall), SliceMetrics(key=()))
    checks: List[ThresholdCheck] = []
    for spec in eval_config.metrics_specs:
        for config in spec.metrics:
            name = _metric_config_name(config)
            applied = []
            if config.HasField("threshold"):
                applied.append(("every slice", config.threshold))
            applied += [(_slicing_text(t.slicing_specs), t.threshold) for t in config.per_slice_thresholds]
            for slices_text, threshold in applied:
                for kind, condition in _threshold_conditions(threshold):
                    candidate_value = overall.values.get(candidate, {}).get(name)
                    baseline_value = overall.values.get(baseline, {}).get(name) if baseline else None
                    change = overall.diffs.get(name) if baseline else None
                    failed = [m for (metric, k, _), m in failures.items() if metric == name and k == kind]
                    if kind == "change" and not baseline:
                        outcome = "not applied"
                        message = "no baseline: there was no blessed model to compare with"
                    elif failed:
                        outcome, message = "failed", "; ".join(failed)
                    elif validation is None:
                        outcome, message = "unknown", "the evaluation wrote no validation result"
                    else:
                        outcome, message = "passed", ""
                    checks.append(ThresholdCheck(metric=name, slices=slices_text, condition=condition, kind=kind,
                                                 candidate=candidate_value, baseline=baseline_value, change=change,
                                                 outcome=outcome, message=message))
    return checks


def configured_class_names(eval_config) -> List[str]:
    """The class names of the COCO metrics' configs in the EvalConfig: the label map's order, which is also the
    order of the precision-recall curves' class columns. Empty when no metric names its classes."""
    for spec in (eval_config.metrics_specs if eval_config is not None else []):
        for metric in spec.metrics:
            if metric.class_name not in ("COCOMaskAP", "COCOBoxAP") or not metric.config:
                continue
            try:
                names = json.loads(metric.config).get("class_names")
            except ValueError:
                continue
            if names:
                return [str(n) for n in names]
    return []


def class_names_of(slices: List[SliceMetrics], candidate: str, order: Sequence[str] = ()) -> List[str]:
    """The per-class metric suffixes (``mask_ap/<class>``) found on the overall slice, in ``order`` (the label
    map's) where it names them, the others after them in the order TFMA stored them."""
    overall = next((s for s in slices if s.is_overall), None)
    if overall is None:
        return []
    names: List[str] = []
    for metric in overall.values.get(candidate, {}):
        for kind in KINDS:
            prefix = f"{kind}/"
            if metric.startswith(prefix) and metric[len(prefix):] not in names:
                names.append(metric[len(prefix):])
    rank = {name: i for i, name in enumerate(order)}
    return sorted(names, key=lambda name: rank.get(name, len(rank)))


def load(eval_uri: str) -> Evaluation:
    """Reads an Evaluator output directory (as MLMD names it)."""
    import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top

    if not eval_uri or not os.path.isdir(eval_uri):
        raise FileNotFoundError(f"the evaluation artifact {eval_uri or '(none)'} is not a directory")
    problems: List[str] = []
    slices = load_slices(eval_uri)
    result = tfma.load_eval_result(eval_uri)
    eval_config = result.config
    specs = list(eval_config.model_specs) if eval_config is not None else []
    baseline_specs = [s.name for s in specs if s.is_baseline]
    candidate_specs = [s.name for s in specs if not s.is_baseline]
    models = {m for s in slices for m in s.values}
    baseline = baseline_specs[0] if baseline_specs and baseline_specs[0] in models else ""
    candidate = candidate_specs[0] if candidate_specs and candidate_specs[0] in models else (
        "" if "" in models or not models else sorted(models - {baseline})[0])
    try:
        validation = tfma.load_validation_result(eval_uri)
    except (AssertionError, OSError, IOError, ValueError) as e:  # no validations file
        validation = None
        problems.append(f"no validation result in {eval_uri}: {e}")
    messages: List[str] = []
    if validation is not None:
        for per_slice in validation.metric_validations_per_slice:
            for failure in per_slice.failures:
                messages.append(failure.message)
        if validation.missing_thresholds:
            messages.append("no threshold applied (TFMA's missing_thresholds), and TFX blesses no model without one; "
                            "without a baseline the change thresholds are dropped, so a first model needs a lower "
                            "bound (evaluation min_mask_ap / min_box_ap, `run --min-mask-ap`)")
        for spec in validation.missing_slices:
            messages.append(f"a thresholded slice has no examples: {_slicing_text([spec])}")
        if validation.rubber_stamp:
            messages.append("rubber stamp: there was no baseline, so only absolute thresholds applied")
    thresholds = thresholds_of(eval_config, slices, candidate, baseline, validation) if eval_config else []
    return Evaluation(uri=eval_uri, slices=slices, candidate=candidate, baseline=baseline, thresholds=thresholds,
                      validation_ok=bool(validation.validation_ok) if validation is not None else None,
                      validation_messages=messages,
                      class_names=class_names_of(slices, candidate, configured_class_names(eval_config)),
                      signature=specs[0].signature_name if specs else "", problems=problems)
