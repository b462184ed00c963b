"""Where a run's outputs are, read from ML Metadata (the pipeline's metadata store), never from guessed paths.

:func:`latest_run` returns the executions of the latest run of a pipeline (state, timings, input and output
artifacts per component); :func:`summarize_run` adds what a user asks after a run: the pushed model's path
and version, whether the model was blessed, and the Evaluator's mask and box AP. :func:`pipeline_runs` and
:func:`summarize` do the same for every run (the report's index of runs).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.orchestration import metadata as tfx_metadata

from maskrcnn_tfx.pipelines import component_ids as ids
from maskrcnn_tfx.pipelines import metrics as metrics_lib
from maskrcnn_tfx.config.schema import PipelineConfig

_STATE_NAMES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}
_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT,
                  metadata_store_pb2.Event.PENDING_OUTPUT)
_INPUT_EVENTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)


@dataclasses.dataclass
class ArtifactInfo:
    type_name: str
    uri: str
    custom_properties: Dict[str, Any]


@dataclasses.dataclass
class ExecutionInfo:
    """One component's execution in a run."""

    component_id: str
    state: str  # NEW, RUNNING, COMPLETE, FAILED, CACHED, CANCELED
    start_ms: int
    end_ms: int
    inputs: Dict[str, List[ArtifactInfo]]
    outputs: Dict[str, List[ArtifactInfo]]
    execution_id: int = 0  # the execution's id in the metadata store

    @property
    def seconds(self) -> float:
        return max(0, self.end_ms - self.start_ms) / 1000.0


@dataclasses.dataclass
class RunSummary:
    run_id: str
    executions: Dict[str, ExecutionInfo]
    blessed: Optional[bool] = None
    pushed: bool = False
    pushed_model_path: str = ""
    pushed_version: str = ""
    eval_uri: str = ""
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    baseline_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    start_ms: int = 0  # when the run started (its pipeline_run context's creation)
    # Why the model was or was not blessed: one line per threshold (value, bound, outcome), then notes.
    blessing_reasons: List[str] = dataclasses.field(default_factory=list)

    def lines(self) -> List[str]:
        """A short human-readable report."""
        out = [f"run {self.run_id}:"]
        for component_id, execution in self.executions.items():
            out.append(f"  {component_id:<32} {execution.state:<9} {execution.seconds:8.1f} s")
        if self.metrics:
            shown = ", ".join(f"{k} {self.metrics[k]:.4f}" for k in metrics_lib.HEADLINE_METRICS
                              if k in self.metrics)
            out.append(f"eval metrics ({self.eval_uri}): {shown}")
        if self.baseline_metrics:
            shown = ", ".join(f"{k} {self.baseline_metrics[k]:.4f}" for k in metrics_lib.HEADLINE_METRICS
                              if k in self.baseline_metrics)
            out.append(f"baseline (latest blessed model): {shown}")
        if self.blessed is not None:
            failed = sum(reason.endswith(": failed") for reason in self.blessing_reasons)
            why = f" ({failed} threshold{'s' if failed != 1 else ''} failed)" if failed else (
                " (every threshold passed)" if self.blessed and self.blessing_reasons else "")
            out.append(f"blessed: {'yes' if self.blessed else 'no'}{why}")
            out.extend(f"  {reason}" for reason in self.blessing_reasons)
        if self.pushed:
            out.append(f"pushed model: {self.pushed_model_path} (version {self.pushed_version})")
        else:
            out.append("pushed model: none (not blessed, or the run stopped before the Pusher)")
        return out


def _properties(artifact: metadata_store_pb2.Artifact) -> Dict[str, Any]:
    values: Dict[str, Any] = {}
    for key, value in artifact.custom_properties.items():
        kind = value.WhichOneof("value")
        values[key] = getattr(value, kind) if kind in ("int_value", "double_value", "string_value") else None
    return values


def latest_run(config: PipelineConfig) -> Optional[RunSummary]:
    """The executions of the latest run of the pipeline, by component id; None when it never ran."""
    runs = _runs(config, latest_only=True)
    return runs[-1] if runs else None


def pipeline_runs(config: PipelineConfig) -> List[RunSummary]:
    """Every run of the pipeline, oldest first, each with its executions by component id (as :func:`latest_run`)."""
    return _runs(config, latest_only=False)


def _runs(config: PipelineConfig, latest_only: bool) -> List[RunSummary]:
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(config.resolved_metadata_path)
    if not os.path.exists(config.resolved_metadata_path):
        return []
    with tfx_metadata.Metadata(connection) as m:
        store = m.store
        pipeline_context = store.get_context_by_type_and_name("pipeline", config.pipeline_name)
        if pipeline_context is None:
            return []
        pipeline_execution_ids = {e.id for e in store.get_executions_by_context(pipeline_context.id)}
        runs = [c for c in store.get_contexts_by_type("pipeline_run")
                if any(e.id in pipeline_execution_ids for e in store.get_executions_by_context(c.id))]
        runs.sort(key=lambda c: (c.create_time_since_epoch, c.id))
        runs = runs[-1:] if latest_only else runs
        nodes = sorted(store.get_contexts_by_type("node"), key=lambda c: c.id)
        return [_run_summary(store, config.pipeline_name, run, nodes) for run in runs]


def _run_summary(store, pipeline_name: str, run: metadata_store_pb2.Context,
                 nodes: List[metadata_store_pb2.Context]) -> RunSummary:
    run_executions = {e.id: e for e in store.get_executions_by_context(run.id)}
    executions: Dict[str, ExecutionInfo] = {}
    for node in nodes:
        prefix = f"{pipeline_name}."
        if not node.name.startswith(prefix):
            continue
        component_id = node.name[len(prefix):]
        mine = [e for e in store.get_executions_by_context(node.id) if e.id in run_executions]
        if not mine:
            continue
        execution = max(mine, key=lambda e: e.id)
        events = store.get_events_by_execution_ids([execution.id])
        artifacts = {a.id: a for a in store.get_artifacts_by_id([ev.artifact_id for ev in events])}
        types = {t.id: t.name for t in store.get_artifact_types_by_id(
            list({a.type_id for a in artifacts.values()}))} if artifacts else {}
        inputs: Dict[str, List[ArtifactInfo]] = {}
        outputs: Dict[str, List[ArtifactInfo]] = {}
        for event in events:
            artifact = artifacts[event.artifact_id]
            key = next((s.key for s in event.path.steps if s.HasField("key")), "")
            info = ArtifactInfo(types.get(artifact.type_id, ""), artifact.uri, _properties(artifact))
            target = outputs if event.type in _OUTPUT_EVENTS else inputs if event.type in _INPUT_EVENTS else None
            if target is not None:
                target.setdefault(key, []).append(info)
        executions[component_id] = ExecutionInfo(
            component_id=component_id, state=_STATE_NAMES.get(execution.last_known_state, "UNKNOWN"),
            start_ms=execution.create_time_since_epoch, end_ms=execution.last_update_time_since_epoch,
            inputs=inputs, outputs=outputs, execution_id=execution.id)
    return RunSummary(run_id=run.name, executions=executions, start_ms=run.create_time_since_epoch)


def _overall_metrics(eval_uri: str) -> Dict[str, Dict[str, float]]:
    """The overall slice's metrics by model name ('' for a single model) from an Evaluator output."""
    import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top

    by_model: Dict[str, Dict[str, float]] = {}
    for metrics_for_slice in tfma.load_metrics(eval_uri):
        if metrics_for_slice.slice_key.single_slice_keys:
            continue
        for kv in metrics_for_slice.metric_keys_and_values:
            if kv.key.is_diff:
                continue
            if kv.value.HasField("double_value"):
                by_model.setdefault(kv.key.model_name, {})[kv.key.name] = kv.value.double_value.value
    return by_model


def _number(value: Optional[float]) -> str:
    return "undefined" if value is None or value != value else f"{value:.4f}"


def blessing_reasons(eval_uri: str, blessed: bool) -> List[str]:
    """Why the Evaluator blessed the model or not, from its output: every threshold of the stored EvalConfig
    with the model's value, the bound and the outcome, the comparison with the baseline when there is one."""
    from maskrcnn_tfx.pipelines import evaluation_result as evaluation_lib  # pylint: disable=g-import-not-at-top

    try:
        result = evaluation_lib.load(eval_uri)
    except Exception as e:  # pylint: disable=broad-except  (the summary must print whatever is readable)
        return [f"cannot read the thresholds from {eval_uri}: {e}"]
    reasons = []
    applied = 0
    for check in result.thresholds:
        where = "" if check.slices == evaluation_lib.OVERALL else f" ({check.slices})"
        if check.kind == "change":
            numbers = (f"{_number(check.candidate)} vs baseline {_number(check.baseline)}"
                       + (f" ({check.change:+.4f})" if check.change is not None else ""))
        else:
            numbers = _number(check.candidate)
        outcome = check.outcome if check.outcome != "not applied" else f"not applied ({check.message})"
        reasons.append(f"{check.metric}{where} {numbers}: must be {check.condition}: {outcome}")
        applied += check.outcome in ("passed", "failed")
    failed = [c for c in result.thresholds if c.outcome == "failed"]
    if not blessed and not failed:
        if not applied:
            reasons.append("no threshold applied, and TFX blesses no model without one (on a first run the "
                           "baseline comparison is dropped): set evaluation.min_mask_ap / min_box_ap")
        else:
            reasons.extend(result.validation_messages or ["the Evaluator did not validate the model"])
    return reasons


def summarize_run(config: PipelineConfig) -> Optional[RunSummary]:
    """The latest run with its blessing, pushed model and overall eval metrics filled in."""
    summary = latest_run(config)
    return None if summary is None else summarize(summary)


def summarize(summary: RunSummary) -> RunSummary:
    """Fills in a run's blessing, pushed model and overall eval metrics (from :func:`pipeline_runs`)."""
    evaluator = summary.executions.get(ids.EVALUATOR)
    if evaluator is not None:
        blessing = evaluator.outputs.get("blessing", [])
        if blessing:
            summary.blessed = bool(blessing[0].custom_properties.get("blessed", 0))
        evaluation = evaluator.outputs.get("evaluation", [])
        if evaluation and os.path.isdir(evaluation[0].uri) and os.listdir(evaluation[0].uri):
            summary.eval_uri = evaluation[0].uri
            by_model = _overall_metrics(summary.eval_uri)
            summary.metrics = by_model.get("candidate", by_model.get("", {}))
            summary.baseline_metrics = by_model.get("baseline", {})
            if summary.blessed is not None:
                summary.blessing_reasons = blessing_reasons(summary.eval_uri, summary.blessed)
                if not evaluator.inputs.get("baseline_model") and not any(
                        " vs baseline " in reason for reason in summary.blessing_reasons):
                    # TFX drops the change thresholds from a run without a baseline: say so rather than nothing.
                    summary.blessing_reasons.append(
                        "comparison with the last blessed model: not applied (no baseline: no model had been "
                        "blessed before this run)")
    pusher = summary.executions.get(ids.PUSHER)
    if pusher is not None:
        pushed = pusher.outputs.get("pushed_model", [])
        if pushed and pushed[0].custom_properties.get("pushed", 0):
            summary.pushed = True
            summary.pushed_model_path = str(pushed[0].custom_properties.get("pushed_destination", ""))
            summary.pushed_version = str(pushed[0].custom_properties.get("pushed_version", ""))
    return summary
