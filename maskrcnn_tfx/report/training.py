"""The Trainer's training curves: every scalar of the TensorBoard logs in its ``model_run`` artifact.

Model Garden's training loop (trainer/train.py) writes ``train/`` (every loss term, the learning rate, steps per
second) and ``validation/`` (the evaluation's losses and COCO metrics) event files under the model directory.
They are read with TensorBoard's own event reader; TF2 summaries hold their scalars as tensors.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Tuple

Series = List[Tuple[int, float]]  # (step, value), by step

# Log folders of the model directory, in the order the report shows them.
LOG_FOLDERS = ("train", "validation")


@dataclasses.dataclass
class TrainingLogs:
    model_run_uri: str
    # folder ("train", "validation", or another one holding events) -> tag -> series
    scalars: Dict[str, Dict[str, Series]]

    @property
    def empty(self) -> bool:
        return not any(self.scalars.values())


def _event_dirs(model_run_uri: str) -> Dict[str, str]:
    """The folders holding event files: the known ones first, then any other (relative name -> path)."""
    found: Dict[str, str] = {}
    for root, _, files in sorted(os.walk(model_run_uri)):
        if any(".tfevents." in f for f in files):
            name = os.path.relpath(root, model_run_uri)
            found[name if name != "." else "model"] = root
    ordered = {name: found.pop(name) for name in LOG_FOLDERS if name in found}
    ordered.update(sorted(found.items()))
    return ordered


def _scalar(event_value) -> float:
    from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top

    return float(tensor_util.make_ndarray(event_value.tensor_proto).reshape(-1)[0])


def read_scalars(log_dir: str) -> Dict[str, Series]:
    """Every scalar tag of one event folder (TF1 scalars and TF2 scalar tensors), the latest value per step."""
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

    accumulator = event_accumulator.EventAccumulator(
        log_dir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    series: Dict[str, Dict[int, float]] = {}
    for tag in tags.get(event_accumulator.SCALARS, []):
        for event in accumulator.Scalars(tag):
            series.setdefault(tag, {})[int(event.step)] = float(event.value)
    for tag in tags.get(event_accumulator.TENSORS, []):
        points = accumulator.Tensors(tag)
        # Only scalar tensors are curves (images or text summaries are not).
        if not points or points[0].tensor_proto.tensor_shape.dim:
            continue
        try:
            for event in points:
                series.setdefault(tag, {})[int(event.step)] = _scalar(event)
        except (ValueError, TypeError, IndexError):
            series.pop(tag, None)
    return {tag: sorted(values.items()) for tag, values in sorted(series.items())}


def load(model_run_uri: str) -> TrainingLogs:
    if not model_run_uri or not os.path.isdir(model_run_uri):
        raise FileNotFoundError(f"the Trainer's model_run artifact {model_run_uri or '(none)'} is not a directory")
    return TrainingLogs(model_run_uri, {name: read_scalars(path) for name, path in _event_dirs(model_run_uri).items()})


def loss_tags(series: Dict[str, Series]) -> List[str]:
    """The loss terms of a log folder, total first."""
    losses = [t for t in series if "loss" in t.lower()]
    return sorted(losses, key=lambda t: (t != "total_loss", t))
