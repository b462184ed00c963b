"""Builds the report: one page per run (``runs/<run>/index.html``) and the index of every run (``index.html``).

Each part of a run page is read on its own: a part whose artifact is missing or unreadable is named on the page
(and in :attr:`RunPage.problems`) while the rest is still shown, so a run that failed at validation still gets
a report with its anomalies and the records at fault. A run's page also gets ``report.json``, the same facts
for programs.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import maskrcnn_tfx
from maskrcnn_tfx.pipelines import metrics as metrics_lib
from maskrcnn_tfx.report import html
from maskrcnn_tfx.report import runs as runs_lib
from maskrcnn_tfx.report.runs import Run

logger = logging.getLogger(__name__)

REPORT_FORMAT = "maskrcnn-tfx/report@1"
RUNS_FOLDER = "runs"
PAGE = "index.html"
FACTS = "report.json"
DEFAULT_GALLERY_SIZE = 6
# Model Garden's COCO evaluation scalars drawn in the training chart (-1: undefined, left out).
COCO_CURVES = ("AP", "AP50", "AP75", "mask_AP", "mask_AP50", "mask_AP75")
T = TypeVar("T")


@dataclasses.dataclass
class RunPage:
    run_id: str
    path: str  # the page's index.html
    problems: List[str]


@dataclasses.dataclass
class Report:
    index_path: str
    pages: List[RunPage]  # the run pages built by this call


class _Problems:
    """Collects what could not be read; each part is tried on its own."""

    def __init__(self) -> None:
        self.items: List[str] = []

    def attempt(self, what: str, read: Callable[[], T]) -> Optional[T]:
        try:
            return read()
        except Exception as e:  # pylint: disable=broad-except  (one unreadable part must not hide the others)
            logger.warning("report: %s: %s", what, e, exc_info=logger.isEnabledFor(logging.DEBUG))
            self.items.append(f"{what}: {type(e).__name__}: {e}")
            return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _run_href(run: Run, from_run_page: bool) -> str:
    prefix = "../" if from_run_page else f"{RUNS_FOLDER}/"
    return f"{prefix}{run.slug}/{PAGE}"


def _run_facts(run: Run) -> Dict[str, Any]:
    summary = run.summary
    return {"id": run.run_id, "number": run.number, "started": run.started, "state": run.state,
            "failed_components": run.failed_components, "blessed": summary.blessed, "pushed": summary.pushed,
            "pushed_version": summary.pushed_version, "pushed_path": summary.pushed_model_path,
            "slug": run.slug}


def _trainer_of(runs: Sequence[Run], model_uri: str) -> Optional[Run]:
    """The run whose Trainer produced ``model_uri`` (a later cached run reuses it; the first one trained it)."""
    if not model_uri:
        return None
    having = [r for r in runs if r.model_uri == model_uri]
    trained = [r for r in having if r.executions.get(runs_lib.TRAINER) and
               r.executions[runs_lib.TRAINER].state == "COMPLETE"]
    return (trained or having or [None])[0]


# --------------------------------------------------------------------------------------------------------------
# The parts of a run page
# --------------------------------------------------------------------------------------------------------------

def _evaluation_part(run: Run, runs: Sequence[Run], page_dir: str, problems: _Problems
                     ) -> Tuple[Optional[Dict[str, Any]], str]:
    """(the evaluation's context, or None with the reason it is absent)."""
    from maskrcnn_tfx.pipelines import evaluation_result  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.report import charts, evaluation as evaluation_lib  # pylint: disable=g-import-not-at-top

    evaluator = run.executions.get(runs_lib.EVALUATOR)
    if evaluator is None:
        return None, _not_run("The Evaluator", run)
    if not run.eval_uri:
        return None, f"The Evaluator's execution is {evaluator.state} and recorded no evaluation."
    result = problems.attempt(f"the evaluation {run.eval_uri}", lambda: evaluation_result.load(run.eval_uri))
    if result is None:
        return None, "The evaluation could not be read (see above)."
    problems.items.extend(result.problems)
    baseline_run = _trainer_of(runs, run.baseline_model_uri) if result.baseline else None
    context: Dict[str, Any] = {
        "uri": result.uri, "baseline": result.baseline,
        "baseline_run": ({"number": baseline_run.number, "href": _run_href(baseline_run, True)}
                         if baseline_run is not None else None),
        "summary_rows": evaluation_lib.summary_rows(result),
        "per_class_rows": evaluation_lib.per_class_rows(result),
        "absent_classes": evaluation_lib.absent_classes(result),
        "slice_metric_names": [m for m in (metrics_lib.MASK_AP, metrics_lib.MASK_AP50, metrics_lib.BOX_AP,
                                           metrics_lib.BOX_AP50) if result.has_metric(m)],
        "thresholds": result.thresholds, "validation_ok": result.validation_ok,
        "validation_messages": result.validation_messages,
        "per_class_chart": "", "pr_chart": "", "pr_missing": [],
    }
    context["slice_rows"] = evaluation_lib.slice_rows(result, context["slice_metric_names"])
    context["classes_without_ground_truth"] = len(context["absent_classes"])
    if context["per_class_rows"]:
        values = {k: {r["name"]: r[k]["value"] for r in context["per_class_rows"]} for k in evaluation_lib.KINDS}
        baseline = {k: {r["name"]: r[k]["baseline"] for r in context["per_class_rows"]} for k in evaluation_lib.KINDS}
        shown = [r["name"] for r in context["per_class_rows"]]  # the table's classes, in its order
        if problems.attempt("the per-class AP chart", lambda: charts.per_class_ap(
                shown, values, baseline, os.path.join(page_dir, "per_class_ap.svg"))):
            context["per_class_chart"] = "per_class_ap.svg"
    curves = {k: result.pr_curves(k) for k in evaluation_lib.KINDS}
    found = {k: c for k, c in curves.items() if c is not None}
    context["pr_missing"] = [charts.KIND_LABELS[k] for k in evaluation_lib.KINDS
                             if curves[k] is None and result.has_metric(k)]
    if found and problems.attempt("the precision-recall chart", lambda: charts.pr_curves(
            found, result.class_names, os.path.join(page_dir, "pr_curves.svg"))):
        context["pr_chart"] = "pr_curves.svg"
    return context, ""


def _not_run(component: str, run: Run) -> str:
    """Why a component has nothing to show in this run."""
    if run.failed_components:
        return f"{component} did not run: the run stopped at {', '.join(run.failed_components)}."
    if run.state == runs_lib.RUNNING:
        return f"{component} has not run yet: the run is still going (build the report again when it ends)."
    return f"{component} did not run in this run."


def _headline(run: Run, evaluation: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    cards = []
    for metric, label in ((metrics_lib.MASK_AP, "mask AP"), (metrics_lib.BOX_AP, "box AP"),
                          (metrics_lib.MASK_AP50, "mask AP50"), (metrics_lib.BOX_AP50, "box AP50")):
        value = run.summary.metrics.get(metric)
        baseline = run.summary.baseline_metrics.get(metric)
        change = (value - baseline) if (value is not None and baseline is not None) else None
        if value is not None or evaluation is not None:
            cards.append({"label": label, "value": value, "baseline": baseline, "change": change})
    return cards


def training_panels(scalars: Dict[str, Dict[str, List[Tuple[int, float]]]]
                    ) -> List[Tuple[str, Dict[str, List[Tuple[int, float]]]]]:
    """The training chart's panels: losses, learning rate, and the rest, per log folder."""
    from maskrcnn_tfx.report import training  # pylint: disable=g-import-not-at-top

    panels = []
    for folder, series in scalars.items():
        losses = training.loss_tags(series)
        if losses:
            panels.append((f"{folder}: losses", {t: series[t] for t in losses}))
        rates = [t for t in series if "learning_rate" in t]
        if rates:
            panels.append((f"{folder}: learning rate", {t: series[t] for t in rates}))
        rest = [t for t in series if t not in losses and t not in rates]
        # Of the evaluation's COCO numbers only the main ones are drawn; the table lists every scalar.
        coco = [t for t in rest if t in COCO_CURVES]
        rest = coco or [t for t in rest if not t.startswith(("AP", "AR", "mask_AP", "mask_AR"))]
        if rest:
            panels.append((f"{folder}: metrics", {t: [(s, v) for s, v in series[t] if v >= 0 or t not in coco]
                                                 for t in rest}))
    return panels


def _training_part(run: Run, runs: Sequence[Run], page_dir: str, problems: _Problems
                   ) -> Tuple[Optional[Dict[str, Any]], str]:
    from maskrcnn_tfx.report import charts, training  # pylint: disable=g-import-not-at-top

    trainer = run.executions.get(runs_lib.TRAINER)
    if trainer is None:
        return None, _not_run("The Trainer", run)
    if not run.model_run_uri:
        return None, f"The Trainer's execution is {trainer.state} and recorded no logs."
    logs = problems.attempt(f"the training logs in {run.model_run_uri}", lambda: training.load(run.model_run_uri))
    if logs is None:
        return None, "The training logs could not be read (see above)."
    if logs.empty:
        return None, f"The Trainer wrote no TensorBoard scalars in {run.model_run_uri}."
    chart = problems.attempt("the training chart", lambda: charts.training_curves(
        training_panels(logs.scalars), os.path.join(page_dir, "training.svg")))
    last = [{"folder": folder, "tag": tag, "step": points[-1][0], "value": points[-1][1]}
            for folder, series in logs.scalars.items() for tag, points in series.items() if points]
    trained_in = _trainer_of(runs, run.model_uri) if trainer.state == "CACHED" else None
    return {"chart": "training.svg" if chart else "", "last": last, "uri": logs.model_run_uri,
            "cached_from": ({"number": trained_in.number, "href": _run_href(trained_in, True)}
                            if trained_in is not None and trained_in is not run else None)}, ""


def _data_part(run: Run, page_dir: str, problems: _Problems) -> Dict[str, Any]:
    from maskrcnn_tfx.report import charts, data  # pylint: disable=g-import-not-at-top

    part: Dict[str, Any] = {"statistics": [], "statistics_absent": "", "class_names": [], "class_chart": "",
                            "schema_anomalies": None, "schema_anomalies_absent": "", "schema_anomaly_count": 0,
                            "annotation": {}, "annotation_absent": "", "annotation_failed": False,
                            "annotation_uri": ""}
    if run.statistics_uri:
        statistics = problems.attempt(f"the statistics {run.statistics_uri}",
                                      lambda: data.load_statistics(run.statistics_uri)) or []
        part["statistics"] = statistics
        counts = {s.split: s.class_counts for s in statistics if s.class_counts}
        part["class_names"] = sorted({n for c in counts.values() for n in c})
        if counts and problems.attempt("the class chart", lambda: charts.class_counts(
                counts, os.path.join(page_dir, "class_counts.svg"))):
            part["class_chart"] = "class_counts.svg"
    else:
        part["statistics_absent"] = (_not_run("StatisticsGen", run) if runs_lib.STATISTICS_GEN not in run.executions
                                     else "StatisticsGen recorded no statistics in this run.")
    if run.schema_anomalies_uri:
        anomalies = problems.attempt(f"the schema anomalies {run.schema_anomalies_uri}",
                                     lambda: data.load_schema_anomalies(run.schema_anomalies_uri))
        part["schema_anomalies"] = anomalies
        part["schema_anomaly_count"] = sum(len(a) for a in (anomalies or {}).values())
        if anomalies is None:
            part["schema_anomalies_absent"] = "The schema anomalies could not be read (see above)."
    else:
        part["schema_anomalies_absent"] = (
            _not_run("ExampleValidator", run) if runs_lib.EXAMPLE_VALIDATOR not in run.executions
            else "ExampleValidator recorded no anomalies artifact in this run.")
    uri = run.annotation_reports_uri
    part["annotation_uri"] = uri
    execution = run.executions.get(runs_lib.ANNOTATION_VALIDATOR)
    part["annotation_failed"] = execution is not None and execution.state == "FAILED"
    if uri:
        part["annotation"] = problems.attempt(f"the annotation reports {uri}",
                                              lambda: data.load_annotation_reports(uri)) or {}
    if not part["annotation"]:
        part["annotation_absent"] = (_not_run("The AnnotationValidator", run) if execution is None else
                                     f"The AnnotationValidator's execution is {execution.state}; no report of it "
                                     f"was found.")
    return part


def _gallery_part(run: Run, page_dir: str, problems: _Problems, size: int, score_threshold: float
                  ) -> Tuple[Optional[Any], str]:
    if size <= 0:
        return None, "No gallery was asked for (--gallery-size 0)."
    if not run.model_uri:
        return None, (_not_run("The Trainer", run) if runs_lib.TRAINER not in run.executions else
                      "The run has no trained model to show.")
    if not run.eval_examples_uri:
        return None, "The run has no examples to show."

    def build():
        from tfx.utils import path_utils  # pylint: disable=g-import-not-at-top

        from maskrcnn_tfx.report import data, gallery  # pylint: disable=g-import-not-at-top

        model_path = path_utils.serving_model_path(run.model_uri)
        files = data.eval_example_files(run.eval_examples_uri, "eval")
        if not files:
            raise FileNotFoundError(f"no eval split in {run.eval_examples_uri}")
        examples = data.first_examples(files, size)
        return gallery.build(model_path, examples, gallery.model_label_map(model_path), page_dir,
                             score_threshold=score_threshold)

    result = problems.attempt(f"the gallery (model {run.model_uri})", build)
    return result, ("" if result is not None else "The gallery could not be made (see above).")


def _artifacts(run: Run) -> List[Tuple[str, str]]:
    found = [("examples", run.examples.uri if run.examples else ""), ("statistics", run.statistics_uri),
             ("schema anomalies", run.schema_anomalies_uri), ("annotation reports", run.annotation_reports_uri),
             ("model", run.model_uri), ("training logs", run.model_run_uri),
             ("baseline model", run.baseline_model_uri), ("evaluation", run.eval_uri),
             ("blessing", run.blessing.uri if run.blessing else ""),
             ("pushed model", run.summary.pushed_model_path)]
    return [(label, uri) for label, uri in found if uri]


def _json_ready(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_ready(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def build_run_page(config, run: Run, runs: Sequence[Run], output_dir: str, *,
                   gallery_size: int = DEFAULT_GALLERY_SIZE,
                   score_threshold: Optional[float] = None) -> RunPage:
    """Writes ``OUTPUT/runs/<run>/`` (page, charts, gallery, report.json), replacing an earlier one whole."""
    from maskrcnn_tfx.report import gallery as gallery_lib  # pylint: disable=g-import-not-at-top

    score_threshold = gallery_lib.DEFAULT_SCORE_THRESHOLD if score_threshold is None else score_threshold
    final_dir = os.path.join(output_dir, RUNS_FOLDER, run.slug)
    # Built beside the old page and swapped in at the end: a failure leaves the earlier page as it was.
    page_dir = final_dir + ".building"
    shutil.rmtree(page_dir, ignore_errors=True)
    os.makedirs(page_dir)
    problems = _Problems()
    evaluation, evaluation_absent = _evaluation_part(run, runs, page_dir, problems)
    training, training_absent = _training_part(run, runs, page_dir, problems)
    data = _data_part(run, page_dir, problems)
    gallery, gallery_absent = _gallery_part(run, page_dir, problems, gallery_size, score_threshold)
    context = {
        "pipeline_name": config.pipeline_name, "run": _run_facts(run), "index_href": f"../../{PAGE}",
        "headline": _headline(run, evaluation), "problems": problems.items,
        "evaluation": evaluation, "evaluation_absent": evaluation_absent,
        "training": training, "training_absent": training_absent, "data": data,
        "gallery": gallery, "gallery_absent": gallery_absent, "max_drawn": gallery_lib.MAX_DRAWN,
        "executions": [{"component": c, "state": e.state, "seconds": e.seconds} for c, e in run.executions.items()],
        "artifacts": _artifacts(run), "version": maskrcnn_tfx.__version__, "generated": _now(),
        "metadata_path": config.resolved_metadata_path,
    }
    html.write(os.path.join(page_dir, PAGE), "run.html.j2", context)
    facts = {"format": REPORT_FORMAT, "run": context["run"], "metrics": run.summary.metrics,
             "baseline_metrics": run.summary.baseline_metrics, "problems": problems.items,
             "evaluation": ({k: evaluation[k] for k in ("uri", "baseline", "thresholds", "validation_ok",
                                                        "summary_rows", "per_class_rows", "absent_classes",
                                                        "classes_without_ground_truth", "slice_rows",
                                                        "per_class_chart", "pr_chart")}
                            if evaluation else None),
             "training": training, "gallery": gallery,
             "data": {"schema_anomalies": data["schema_anomalies"], "annotation": data["annotation"],
                      "annotation_failed": data["annotation_failed"],
                      "statistics": [{"split": s.split, "num_examples": s.num_examples,
                                      "class_counts": s.class_counts} for s in data["statistics"]]}}
    with open(os.path.join(page_dir, FACTS), "w", encoding="utf-8") as f:
        json.dump(_json_ready(facts), f, indent=1, sort_keys=True, allow_nan=False)
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(page_dir, final_dir)
    return RunPage(run.run_id, os.path.join(final_dir, PAGE), problems.items)


def build_index(config, runs: Sequence[Run], output_dir: str) -> str:
    """Writes ``OUTPUT/index.html``: every run with its headline metrics and blessing, and AP across runs."""
    from maskrcnn_tfx.report import charts  # pylint: disable=g-import-not-at-top

    rows = []
    for run in runs:
        facts = _run_facts(run)
        page = os.path.join(output_dir, RUNS_FOLDER, run.slug, PAGE)
        metrics = run.summary.metrics
        baseline = run.summary.baseline_metrics
        mask_ap = metrics_lib.MASK_AP
        change = (metrics[mask_ap] - baseline[mask_ap]) if (mask_ap in metrics and mask_ap in baseline) \
            else None
        facts.update(href=_run_href(run, False) if os.path.isfile(page) else "", metrics=metrics, mask_change=change)
        rows.append(facts)
    history = [{"label": r["number"], **{k: r["metrics"].get(k) for k in (metrics_lib.MASK_AP, metrics_lib.BOX_AP)},
                "blessed": r["blessed"]} for r in rows]
    chart = ""
    if any(h[metrics_lib.MASK_AP] is not None or h[metrics_lib.BOX_AP] is not None for h in history):
        charts.runs_history(history, os.path.join(output_dir, "runs_history.svg"))
        chart = "runs_history.svg"
    context = {"pipeline_name": config.pipeline_name, "pipeline_root": config.pipeline_root, "runs": rows,
               "history_chart": chart, "missing_pages": any(not r["href"] for r in rows),
               "version": maskrcnn_tfx.__version__, "generated": _now(),
               "metadata_path": config.resolved_metadata_path}
    return html.write(os.path.join(output_dir, PAGE), "index.html.j2", context)


def build_report(pipeline_root: str, output_dir: str, run_id: str = "", *, metadata_path: str = "",
                 pipeline_name: str = "", all_runs: bool = False, gallery_size: int = DEFAULT_GALLERY_SIZE,
                 score_threshold: Optional[float] = None) -> Report:
    """The page of one run (``run_id``, default the latest; with ``all_runs`` also every run without a page
    yet) and the index of all runs, under ``output_dir``.

    Raises ``runs.ReportInputError`` (``runs.UnknownRunError`` for an unknown ``run_id``) before writing
    anything when the pipeline or the run cannot be found.
    """
    config = runs_lib.open_pipeline(pipeline_root, metadata_path=metadata_path, pipeline_name=pipeline_name)
    runs = runs_lib.list_runs(config)
    chosen = runs_lib.find_run(runs, run_id)
    output_dir = os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    targets = [chosen]
    if all_runs:
        targets += [r for r in runs if r is not chosen and
                    not os.path.isfile(os.path.join(output_dir, RUNS_FOLDER, r.slug, PAGE))]
    pages = [build_run_page(config, run, runs, output_dir, gallery_size=gallery_size,
                            score_threshold=score_threshold) for run in targets]
    return Report(index_path=build_index(config, runs, output_dir), pages=pages)
