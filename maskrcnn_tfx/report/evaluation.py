"""The Evaluator's result as the report's tables show it (rows of :mod:`maskrcnn_tfx.pipelines.evaluation_result`)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from maskrcnn_tfx.pipelines import metrics as metrics_lib
from maskrcnn_tfx.pipelines.evaluation_result import KINDS, Evaluation

# The summary numbers of each kind, in the order of the metrics table, with their column labels.
SUMMARY_SUFFIXES = (("", "AP"), ("50", "AP50"), ("75", "AP75"), ("_small", "APs"), ("_medium", "APm"),
                    ("_large", "APl"))


def summary_rows(evaluation: Evaluation) -> List[Dict[str, Any]]:
    """The metrics table: one row per summary number (AP, AP50, ...), mask and box columns, with the baseline
    and the change when there is one."""
    rows = []
    for suffix, label in SUMMARY_SUFFIXES:
        row: Dict[str, Any] = {"label": label}
        for kind in KINDS:
            metric = kind + suffix
            row[kind] = {"metric": metric, "value": evaluation.value(metric),
                         "baseline": evaluation.baseline_value(metric), "change": evaluation.diff(metric)}
        rows.append(row)
    return rows


def _finite(value: Optional[float]) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def has_ground_truth(evaluation: Evaluation, name: str) -> bool:
    """Whether the eval split holds ground truth of class ``name``: COCO's AP is undefined (NaN) otherwise.

    The mask AP decides when it is there (it is always COCO's); TFMA's own box metric gives such a class 0.
    """
    kinds = [k for k in KINDS if evaluation.value(f"{k}/{name}") is not None]
    kinds = [metrics_lib.MASK_AP] if metrics_lib.MASK_AP in kinds else kinds
    return any(_finite(evaluation.value(f"{kind}/{name}")) for kind in kinds)


def per_class_rows(evaluation: Evaluation) -> List[Dict[str, Any]]:
    """One row per class with ground truth in the eval split, best mask AP (else box AP) first, ties by name.

    With many classes (COCO's 80) most have no ground truth in a small eval split; :func:`absent_classes` names
    them instead.
    """
    rows = []
    for name in evaluation.class_names:
        if not has_ground_truth(evaluation, name):
            continue
        row: Dict[str, Any] = {"name": name}
        for kind in KINDS:
            metric = f"{kind}/{name}"
            row[kind] = {"value": evaluation.value(metric), "baseline": evaluation.baseline_value(metric),
                         "change": evaluation.diff(metric)}
        rows.append(row)

    def key(row: Dict[str, Any]):
        mask, box = row[metrics_lib.MASK_AP]["value"], row[metrics_lib.BOX_AP]["value"]
        value = mask if _finite(mask) else box
        return (-(value if _finite(value) else -1.0), row["name"])

    return sorted(rows, key=key)


def absent_classes(evaluation: Evaluation) -> List[str]:
    """The classes of the label map without ground truth in the eval split (no AP), in label-map order."""
    return [name for name in evaluation.class_names if not has_ground_truth(evaluation, name)]


def slice_rows(evaluation: Evaluation, metric_names: Sequence[str] = (
        metrics_lib.MASK_AP, metrics_lib.MASK_AP50, metrics_lib.BOX_AP, metrics_lib.BOX_AP50)) -> List[Dict[str, Any]]:
    rows = []
    for slice_metrics in evaluation.slices:
        values = {m: evaluation.value(m, slice_metrics=slice_metrics) for m in metric_names}
        changes = {m: evaluation.diff(m, slice_metrics) for m in metric_names}
        rows.append({"name": slice_metrics.name, "values": values, "changes": changes,
                     "overall": slice_metrics.is_overall})
    return rows
