"""Which runs a pipeline has and where each run's artifacts are, from the pipeline's metadata store (MLMD).

Contract 6 of docs/architecture.md: the evaluation, the blessing and every other artifact are found through MLMD
(``maskrcnn_tfx.pipelines.outputs`` reads it), never by guessing paths. The one exception is a failed
AnnotationValidator: TFX records no output artifact for a failed execution, and the component keeps its reports beside
the artifact directory TFX had made for it (TFX's own output layout, ``<pipeline root>/<node>/<key>/<execution
id>``, with the execution id from MLMD) plus ``.failed``: see :meth:`Run.annotation_reports_uri`.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import re
from typing import Dict, List, Optional

from maskrcnn_tfx.pipelines import outputs
# The pipeline's component ids, re-exported for the report's modules (runs_lib.TRAINER ...).
from maskrcnn_tfx.pipelines.component_ids import (  # noqa: F401
    ANNOTATION_VALIDATOR, EVALUATOR, EXAMPLE_GEN, EXAMPLE_VALIDATOR, STATISTICS_GEN, TRAINER)
from maskrcnn_tfx.config.schema import PipelineConfig

COMPLETE, FAILED, RUNNING = "complete", "failed", "running"
_DONE_STATES = ("COMPLETE", "CACHED")


class ReportInputError(ValueError):
    """The pipeline root, metadata store or run asked for cannot be reported on; the message says why."""


class UnknownRunError(ReportInputError):
    """The metadata store has no run of that id; the message lists the ones it has."""


def open_pipeline(pipeline_root: str, *, metadata_path: str = "", pipeline_name: str = "") -> PipelineConfig:
    """The configuration that names a pipeline's metadata store; the pipeline's name is found there if not given.

    Raises :class:`ReportInputError` when the store is absent or holds no (or, unnamed, several) pipelines.
    """
    config = PipelineConfig(pipeline_root=os.path.abspath(pipeline_root),
                            metadata_path=os.path.abspath(metadata_path) if metadata_path else "")
    path = config.resolved_metadata_path
    if not os.path.isfile(path):
        raise ReportInputError(f"no pipeline metadata at {path}: is {pipeline_root} a pipeline root "
                               f"(`maskrcnn-tfx run --pipeline-root`)? Give --metadata-path if it is elsewhere")
    names = pipeline_names(path)
    if pipeline_name:
        if pipeline_name not in names:
            raise ReportInputError(f"the metadata store {path} has no pipeline named {pipeline_name!r}; it has: "
                                   f"{', '.join(names) or 'none'}")
    elif len(names) == 1:
        pipeline_name = names[0]
    elif not names:
        raise ReportInputError(f"the metadata store {path} holds no pipeline run yet")
    else:
        raise ReportInputError(f"the metadata store {path} holds several pipelines ({', '.join(names)}): "
                               f"choose one with --pipeline-name")
    config.pipeline_name = pipeline_name
    return config


def pipeline_names(metadata_path: str) -> List[str]:
    """The names of the pipelines recorded in a metadata store, sorted."""
    from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
    from tfx.orchestration import metadata as tfx_metadata  # pylint: disable=g-import-not-at-top

    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
    with tfx_metadata.Metadata(connection) as m:
        return sorted(c.name for c in m.store.get_contexts_by_type("pipeline"))


def slug(run_id: str) -> str:
    """A file-name-safe form of a run id (TFX's local run ids are timestamps with colons)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.") or "run"


@dataclasses.dataclass
class Run:
    """One run of the pipeline: its executions and artifacts (a summarized
    ``maskrcnn_tfx.pipelines.outputs.RunSummary``)."""

    summary: outputs.RunSummary
    number: int  # 1 for the pipeline's first run
    pipeline_root: str
    slug: str = ""

    @property
    def run_id(self) -> str:
        return self.summary.run_id

    @property
    def started(self) -> str:
        """The start time in UTC, to the second."""
        if not self.summary.start_ms:
            return ""
        moment = datetime.datetime.fromtimestamp(self.summary.start_ms / 1000.0, tz=datetime.timezone.utc)
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")

    @property
    def executions(self) -> Dict[str, outputs.ExecutionInfo]:
        return self.summary.executions

    @property
    def failed_components(self) -> List[str]:
        return [c for c, e in self.executions.items() if e.state == "FAILED"]

    @property
    def state(self) -> str:
        """:data:`COMPLETE`, :data:`FAILED` (some execution failed) or :data:`RUNNING` (some has not ended)."""
        if self.failed_components:
            return FAILED
        if any(e.state not in _DONE_STATES for e in self.executions.values()):
            return RUNNING
        return COMPLETE

    def output(self, component_id: str, key: str) -> Optional[outputs.ArtifactInfo]:
        """The first artifact an execution of this run wrote under ``key`` (None without one)."""
        execution = self.executions.get(component_id)
        found = execution.outputs.get(key, []) if execution is not None else []
        return found[0] if found else None

    def input(self, component_id: str, key: str) -> Optional[outputs.ArtifactInfo]:
        execution = self.executions.get(component_id)
        found = execution.inputs.get(key, []) if execution is not None else []
        return found[0] if found else None

    def _uri(self, artifact: Optional[outputs.ArtifactInfo]) -> str:
        return artifact.uri if artifact is not None else ""

    @property
    def eval_uri(self) -> str:
        return self._uri(self.output(EVALUATOR, "evaluation"))

    @property
    def blessing(self) -> Optional[outputs.ArtifactInfo]:
        return self.output(EVALUATOR, "blessing")

    @property
    def model_uri(self) -> str:
        """The model this run trained (or took from the cache) and evaluated."""
        return self._uri(self.output(TRAINER, "model"))

    @property
    def model_run_uri(self) -> str:
        """The Trainer's working directory: checkpoints and TensorBoard logs."""
        return self._uri(self.output(TRAINER, "model_run"))

    @property
    def baseline_model_uri(self) -> str:
        """The blessed model the Evaluator compared against ('' on a first run)."""
        return self._uri(self.input(EVALUATOR, "baseline_model"))

    @property
    def eval_examples_uri(self) -> str:
        """The examples the Evaluator read (ExampleGen's output, with its eval split)."""
        return self._uri(self.input(EVALUATOR, "examples")) or self._uri(self.output(EXAMPLE_GEN, "examples"))

    @property
    def examples(self) -> Optional[outputs.ArtifactInfo]:
        return self.output(EXAMPLE_GEN, "examples")

    @property
    def statistics_uri(self) -> str:
        return self._uri(self.output(STATISTICS_GEN, "statistics"))

    @property
    def schema_anomalies_uri(self) -> str:
        return self._uri(self.output(EXAMPLE_VALIDATOR, "anomalies"))

    @property
    def annotation_reports_uri(self) -> str:
        """Where the AnnotationValidator's reports are: its output artifact, or, when it failed, the copy it kept
        (see the module docstring); '' when it did not run."""
        from maskrcnn_tfx.components import annotation_validator as av  # pylint: disable=g-import-not-at-top

        found = self._uri(self.output(ANNOTATION_VALIDATOR, av.ANOMALIES_KEY))
        if found:
            return found
        execution = self.executions.get(ANNOTATION_VALIDATOR)
        if execution is None or execution.state != "FAILED" or not execution.execution_id:
            return ""
        planned = os.path.join(self.pipeline_root, ANNOTATION_VALIDATOR, av.ANOMALIES_KEY, str(execution.execution_id))
        kept = planned + av.FAILED_SUFFIX
        return kept if os.path.isdir(kept) else ""


def list_runs(config: PipelineConfig) -> List[Run]:
    """Every run of the pipeline, oldest first, with blessing, pushed model and overall metrics filled in."""
    runs: List[Run] = []
    used = set()
    for number, summary in enumerate(outputs.pipeline_runs(config), start=1):
        run = Run(summary=outputs.summarize(summary), number=number, pipeline_root=config.pipeline_root)
        name = slug(run.run_id)
        run.slug = name if name not in used else f"{name}-{number}"
        used.add(run.slug)
        runs.append(run)
    return runs


def find_run(runs: List[Run], run_id: str = "") -> Run:
    """The run of that id, or the latest without one; :class:`UnknownRunError` (listing the known ids) else."""
    if not runs:
        raise ReportInputError("the pipeline has no runs recorded in its metadata store")
    if not run_id:
        return runs[-1]
    for run in runs:
        if run.run_id == run_id or run.slug == run_id:
            return run
    shown = ", ".join(r.run_id for r in runs[-10:])
    raise UnknownRunError(f"the pipeline's metadata knows no run {run_id!r}; its runs (latest {min(len(runs), 10)}): "
                          f"{shown}")
