"""The AnnotationValidator: a TFX component that stops a pipeline on broken annotations, before training.

TFDV's ExampleValidator checks feature statistics against a schema; it cannot see that a box lies outside its
image, that an example has three boxes and two masks, or that a mask PNG is of another size than its image.
This component runs the per-record checks of :mod:`maskrcnn_tfx.components.annotation_checks` over every record of every
split, in a Beam pipeline (so it scales out with the pipeline's ``beam_pipeline_args``), and writes a report::

    validator = AnnotationValidator(examples=example_gen.outputs["examples"],
                                    label_map_path="data/label_map.json")
    trainer = Trainer(examples=example_gen.outputs["examples"], ...)
    trainer.add_upstream_node(validator)   # training starts only on data that passed

Output ``anomalies`` (an :class:`InstanceAnomalies` artifact) holds ``Split-<split>/annotation_report.json``
for each validated split::

    {"format": "maskrcnn-tfx/annotation-report@1", "split": "train",
     "examples_uri": ".../Split-train", "label_map": ".../label_map.json",
     "examples": 64, "instances": 151, "examples_with_errors": 1, "errors": 2,
     "errors_by_rule": {"box_outside_image": 1, "mask_count_mismatch": 1, ...every rule, 0 if unseen},
     "max_listed_records": 100,
     "records": [{"source_id": "7", "filename": "000007.png", "instance": 0, "rule": "box_outside_image",
                  "detail": "xmax=1.2 outside [0, 1]", "file": "data_tfrecord-00000-of-00001.gz"}, ...]}

The counts cover every record; ``records`` lists at most ``max_listed_records`` problems, the first in
(source_id, filename, instance, rule) order, so the same data gives the same report whatever the sharding.

With ``fail_on_error`` (the default) any problem fails the execution, after the reports are written, with an
error naming the first records at fault and the reports' paths. TFX deletes a failed execution's output
directory, so the reports are also copied next to it, to ``<artifact uri>.failed/Split-<split>/``, which is
the path the error names. Without ``fail_on_error`` the run succeeds and the artifact's custom properties
``annotation_errors`` (total) and ``blessed`` (1 when there is none) tell downstream components; its custom
properties ``split_names`` (a JSON list) and ``span`` say what was validated (:func:`validated_splits`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)

import apache_beam as beam
from absl import logging
from apache_beam.io.filesystem import CompressionTypes
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor, base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact, artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import json_utils

from maskrcnn_tfx.components.annotation_checks import RULES, ExampleCheck, Problem, inspect_example
from maskrcnn_tfx import label_map as label_map_lib
from maskrcnn_tfx.images import DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["AnnotationValidator", "AnnotationValidatorExecutor", "AnnotationValidatorSpec", "InstanceAnomalies",
           "AnnotationValidationError", "REPORT_FILE", "REPORT_FORMAT", "report_path", "load_report",
           "validated_splits"]

# Keys of the component's inputs, outputs and execution properties.
EXAMPLES_KEY = "examples"
ANOMALIES_KEY = "anomalies"
LABEL_MAP_PATH_KEY = "label_map_path"
EXCLUDE_SPLITS_KEY = "exclude_splits"
FAIL_ON_ERROR_KEY = "fail_on_error"
MAX_LISTED_RECORDS_KEY = "max_listed_records"
MAX_IMAGE_PIXELS_KEY = "max_image_pixels"

REPORT_FILE = "annotation_report.json"
REPORT_FORMAT = "maskrcnn-tfx/annotation-report@1"
DEFAULT_MAX_LISTED_RECORDS = 100
# Custom properties of the output artifact.
ERRORS_PROPERTY = "annotation_errors"
BLESSED_PROPERTY = "blessed"
SPLIT_NAMES_PROPERTY = "split_names"  # the validated splits, as a JSON list (TFX's split_names encoding)
SPAN_PROPERTY = "span"  # the examples' span
# Where the reports of a failed execution are kept: TFX removes the output artifact's directory on failure.
FAILED_SUFFIX = ".failed"
# Records named in the error message; the report lists up to max_listed_records.
_MESSAGE_RECORDS = 10
_METRICS_NAMESPACE = "AnnotationValidator"
_GZIP_MAGIC = b"\x1f\x8b\x08"
_RULE_ORDER = {rule: i for i, rule in enumerate(RULES)}


class InstanceAnomalies(artifact.Artifact):
    """The AnnotationValidator's reports: ``Split-<split>/annotation_report.json`` per validated split.

    Its split names and span are custom properties (:data:`SPLIT_NAMES_PROPERTY`, :data:`SPAN_PROPERTY`), not
    typed ``PROPERTIES``: Kubeflow V2 compiles a custom artifact type to KFP's generic Artifact schema, which
    declares no properties, and its compiler rejects any. The type name is KFP's schema title, which must be
    ``<namespace>.<Name>`` and which the Kubeflow container imports as the class path at run time:
    ``components`` (this package) exports the class under that name.
    """

    TYPE_NAME = "components.InstanceAnomalies"


class AnnotationValidationError(RuntimeError):
    """The examples break annotation rules; the message names the first records and the reports' paths."""


class AnnotationValidatorSpec(ComponentSpec):
    """Inputs, outputs and execution properties of :class:`AnnotationValidator`."""

    PARAMETERS = {
        LABEL_MAP_PATH_KEY: ExecutionParameter(type=str),
        EXCLUDE_SPLITS_KEY: ExecutionParameter(type=str, optional=True),  # A JSON list, as TFX's own components.
        FAIL_ON_ERROR_KEY: ExecutionParameter(type=bool, optional=True),
        MAX_LISTED_RECORDS_KEY: ExecutionParameter(type=int, optional=True),
        MAX_IMAGE_PIXELS_KEY: ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {ANOMALIES_KEY: ChannelParameter(type=InstanceAnomalies)}


# ---------------------------------------------------------------------------------------------------------
# Tallying the checks of a split (a CombineFn, so it runs in parallel and keeps bounded state)


@dataclasses.dataclass
class SplitTally:
    """Counts over every record of a split, and the first problems in :func:`_problem_order`."""

    examples: int = 0
    instances: int = 0
    examples_with_errors: int = 0
    errors_by_rule: Dict[str, int] = dataclasses.field(default_factory=dict)
    records: List[Problem] = dataclasses.field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(self.errors_by_rule.values())


def _problem_order(problem: Problem) -> Tuple:
    """A total order on problems, so the listed ones do not depend on sharding or bundle order."""
    numeric = problem.source_id.isdigit()
    return (not numeric, int(problem.source_id) if numeric else 0, problem.source_id, problem.filename,
            problem.file, -1 if problem.instance is None else problem.instance,
            _RULE_ORDER.get(problem.rule, len(_RULE_ORDER)), problem.detail)


class _TallyFn(beam.CombineFn):
    def __init__(self, max_records: int):
        super().__init__()
        self._max_records = max_records

    def _trim(self, records: List[Problem], force: bool) -> List[Problem]:
        # Sorting on every input would cost O(n log n) per record; trim only once the list doubles.
        if force or len(records) > 2 * self._max_records + 64:
            records = sorted(records, key=_problem_order)[:self._max_records]
        return records

    def create_accumulator(self) -> SplitTally:
        return SplitTally()

    def add_input(self, tally: SplitTally, check: ExampleCheck) -> SplitTally:
        tally.examples += 1
        tally.instances += check.num_instances
        if check.problems:
            tally.examples_with_errors += 1
            for problem in check.problems:
                tally.errors_by_rule[problem.rule] = tally.errors_by_rule.get(problem.rule, 0) + 1
            tally.records.extend(check.problems)
            tally.records = self._trim(tally.records, force=False)
        return tally

    def merge_accumulators(self, tallies: Iterable[SplitTally]) -> SplitTally:
        merged = SplitTally()
        for tally in tallies:
            merged.examples += tally.examples
            merged.instances += tally.instances
            merged.examples_with_errors += tally.examples_with_errors
            for rule, count in tally.errors_by_rule.items():
                merged.errors_by_rule[rule] = merged.errors_by_rule.get(rule, 0) + count
            merged.records.extend(tally.records)
            merged.records = self._trim(merged.records, force=False)
        return merged

    def extract_output(self, tally: SplitTally) -> SplitTally:
        tally.records = self._trim(tally.records, force=True)
        return tally


class _CheckRecordFn(beam.DoFn):
    """(file, serialized example) -> ExampleCheck, its problems tagged with the file's name."""

    def __init__(self, label_map: label_map_lib.LabelMap, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        super().__init__()
        self._label_map = label_map
        self._max_image_pixels = max_image_pixels
        self._examples = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "examples_checked")
        self._bad_examples = beam.metrics.Metrics.counter(_METRICS_NAMESPACE, "examples_with_errors")

    def process(self, element: Tuple[str, bytes]) -> Iterator[ExampleCheck]:
        path, record = element
        check = inspect_example(record, self._label_map, self._max_image_pixels)
        self._examples.inc()
        if check.problems:
            self._bad_examples.inc()
            name = os.path.basename(path)
            check.problems = [dataclasses.replace(p, file=name) for p in check.problems]
        yield check


def split_report(tally: SplitTally, *, split: str, examples_uri: str, label_map_path: str,
                 max_records: int) -> Dict[str, Any]:
    """The report body of one split (the format is described in the module docstring)."""
    return {
        "format": REPORT_FORMAT,
        "split": split,
        "examples_uri": examples_uri,
        "label_map": label_map_path,
        "examples": tally.examples,
        "instances": tally.instances,
        "examples_with_errors": tally.examples_with_errors,
        "errors": tally.errors,
        "errors_by_rule": {rule: tally.errors_by_rule.get(rule, 0) for rule in RULES},
        "max_listed_records": max_records,
        "records": [p.to_dict() for p in tally.records],
    }


def _report_json(tally: SplitTally, report_fields: Dict[str, Any], max_records: int) -> str:
    return json.dumps(split_report(tally, max_records=max_records, **report_fields), indent=1, sort_keys=True)


@beam.ptransform_fn
def _ValidateSplit(pbegin: beam.pvalue.PBegin, files_by_compression: Dict[str, List[str]],  # pylint: disable=invalid-name
                   label_map: label_map_lib.LabelMap, report_file: str, report_fields: Dict[str, Any],
                   max_records: int, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> beam.pvalue.PDone:
    """Reads a split's files, checks every record and writes the split's report (one JSON file)."""
    reads = [
        pbegin
        | f"Files[{compression}]" >> beam.Create(files)
        | f"Read[{compression}]" >> beam.io.ReadAllFromTFRecord(compression_type=compression, with_filename=True)
        for compression, files in sorted(files_by_compression.items())
    ]
    return (
        reads
        | "Flatten" >> beam.Flatten()
        # Reading a gzip file cannot be split; reshuffling spreads its records' (costly) checks over workers.
        | "Reshuffle" >> beam.Reshuffle()
        | "Check" >> beam.ParDo(_CheckRecordFn(label_map, max_image_pixels))
        | "Tally" >> beam.CombineGlobally(_TallyFn(max_records))
        | "ToJson" >> beam.Map(_report_json, report_fields, max_records)
        | "Write" >> beam.io.WriteToText(report_file, shard_name_template="", num_shards=1)
    )


# ---------------------------------------------------------------------------------------------------------
# Reading the Examples artifact


def _split_names(examples: types.Artifact) -> List[str]:
    if examples.has_custom_property(examples_utils.CUSTOM_SPLIT_PATTERN_PROPERTY_NAME):
        return list(json.loads(examples.get_string_custom_property(
            examples_utils.CUSTOM_SPLIT_PATTERN_PROPERTY_NAME)))
    return artifact_utils.decode_split_names(examples.split_names)


def _check_examples_format(examples: types.Artifact) -> None:
    payload = examples_utils.get_payload_format(examples)
    if payload != example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE:
        raise ValueError(f"the examples hold {example_gen_pb2.PayloadFormat.Name(payload)} records; the annotation "
                         f"validator reads tf.Examples (FORMAT_TF_EXAMPLE)")
    file_format = examples_utils.get_file_format(examples)
    if not file_format.startswith("tfrecord"):
        raise ValueError(f"the examples are stored as {file_format!r}; the annotation validator reads TFRecords")


def _compression_of(path: str) -> str:
    """Beam's compression type of a TFRecord file: from its suffix (ExampleGen writes ``.gz``), else from its
    first bytes, so GZIP files without a suffix and uncompressed files with none both read."""
    by_suffix = CompressionTypes.detect_compression_type(path)
    if by_suffix != CompressionTypes.UNCOMPRESSED:
        return by_suffix
    with fileio.open(path, "rb") as f:
        head = f.read(len(_GZIP_MAGIC))
    return CompressionTypes.GZIP if head == _GZIP_MAGIC else CompressionTypes.UNCOMPRESSED


def _split_files(examples: types.Artifact, split: str) -> Dict[str, List[str]]:
    """The files of one split, grouped by compression type."""
    by_compression: Dict[str, List[str]] = {}
    patterns = examples_utils.get_split_file_patterns([examples], split)
    for pattern in patterns:
        for path in sorted(fileio.glob(pattern)):
            if not fileio.isdir(path):
                by_compression.setdefault(_compression_of(path), []).append(path)
    if not by_compression:
        raise ValueError(f"split {split!r} of the examples has no files (looked for {', '.join(patterns)})")
    return by_compression


def _resolve_label_map_path(path: str) -> str:
    """A label map file, or a directory holding ``label_map.json`` (as the converter's output directory)."""
    if not path:
        raise ValueError(f"{LABEL_MAP_PATH_KEY} is empty; give the label map file the examples were made with")
    if fileio.isdir(path):
        return os.path.join(path, label_map_lib.FILE_NAME)
    return path


# ---------------------------------------------------------------------------------------------------------
# Reports


def report_path(anomalies_uri: str, split: str) -> str:
    """Where a split's report is inside an :class:`InstanceAnomalies` artifact's directory."""
    return os.path.join(anomalies_uri, f"Split-{split}", REPORT_FILE)


def load_report(anomalies_uri: str, split: str) -> Dict[str, Any]:
    """A split's report, from an :class:`InstanceAnomalies` artifact's directory (or its ``.failed`` copy)."""
    with fileio.open(report_path(anomalies_uri, split), "r") as f:
        body = json.loads(f.read())
    if body.get("format") != REPORT_FORMAT:
        raise ValueError(f"{report_path(anomalies_uri, split)} is not an annotation report")
    return body


def validated_splits(anomalies: types.Artifact) -> List[str]:
    """The splits an :class:`InstanceAnomalies` artifact holds reports for."""
    return artifact_utils.decode_split_names(anomalies.get_string_custom_property(SPLIT_NAMES_PROPERTY))


def _keep_reports(anomalies_uri: str, splits: Sequence[str]) -> str:
    """Copies the reports out of the artifact directory, which TFX removes when the execution fails."""
    kept_uri = anomalies_uri.rstrip("/") + FAILED_SUFFIX
    for split in splits:
        destination = report_path(kept_uri, split)
        fileio.makedirs(os.path.dirname(destination))
        fileio.copy(report_path(anomalies_uri, split), destination, overwrite=True)
    return kept_uri


def _summary_lines(reports: Dict[str, Dict[str, Any]]) -> List[str]:
    lines = []
    for split, report in reports.items():
        rules = ", ".join(f"{rule} {n}" for rule, n in report["errors_by_rule"].items() if n)
        lines.append(f"  {split}: {report['examples']} examples, {report['instances']} instances, "
                     f"{report['errors']} errors in {report['examples_with_errors']} examples"
                     + (f" ({rules})" if rules else ""))
    return lines


def _failure_message(reports: Dict[str, Dict[str, Any]], kept_uri: str) -> str:
    errors = sum(r["errors"] for r in reports.values())
    bad_examples = sum(r["examples_with_errors"] for r in reports.values())
    examples = sum(r["examples"] for r in reports.values())
    lines = [f"Annotation validation failed: {errors} errors in {bad_examples} of {examples} examples."]
    lines += _summary_lines(reports)
    named = [(split, Problem.from_dict(record)) for split, report in reports.items()
             for record in report["records"]][:_MESSAGE_RECORDS]
    lines.append(f"First records at fault ({len(named)} of {errors}):")
    lines += [f"  [{split}] {problem.describe()}" for split, problem in named]
    lines.append("Reports (every count, up to max_listed_records records):")
    lines += [f"  {report_path(kept_uri, split)}" for split, report in reports.items() if report["errors"]]
    lines.append("Fix or drop these records (e.g. re-convert with `maskrcnn-tfx convert-coco --on-error skip`), "
                 "or set fail_on_error=False to let the pipeline go on.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# The executor and the component


class AnnotationValidatorExecutor(base_beam_executor.BaseBeamExecutor):
    """Checks every record of the examples' splits in one Beam pipeline and writes a report per split."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        """Validates the examples; raises :class:`AnnotationValidationError` on errors with ``fail_on_error``.

        Args:
          input_dict: ``examples``: one Examples artifact (TFRecords of tf.Examples, any compression).
          output_dict: ``anomalies``: one InstanceAnomalies artifact, receives the per-split reports.
          exec_properties: ``label_map_path`` (a label map file or a directory holding ``label_map.json``),
            ``exclude_splits`` (JSON list), ``fail_on_error`` (default True), ``max_listed_records``
            (default 100), ``max_image_pixels`` (default :data:`maskrcnn_tfx.images.DEFAULT_MAX_IMAGE_PIXELS`).
        """
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        anomalies = artifact_utils.get_single_instance(output_dict[ANOMALIES_KEY])

        exclude_splits = json_utils.loads(exec_properties.get(EXCLUDE_SPLITS_KEY) or "null") or []
        if not isinstance(exclude_splits, list):
            raise ValueError(f"{EXCLUDE_SPLITS_KEY} must be a JSON list of split names, got {exclude_splits!r}")
        fail_on_error = exec_properties.get(FAIL_ON_ERROR_KEY)
        fail_on_error = True if fail_on_error is None else bool(fail_on_error)
        max_records = exec_properties.get(MAX_LISTED_RECORDS_KEY)
        max_records = DEFAULT_MAX_LISTED_RECORDS if max_records is None else int(max_records)
        if max_records < 0:
            raise ValueError(f"{MAX_LISTED_RECORDS_KEY} must be >= 0, got {max_records}")
        max_image_pixels = exec_properties.get(MAX_IMAGE_PIXELS_KEY)
        max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS if max_image_pixels is None else int(max_image_pixels)
        if max_image_pixels < 1:
            raise ValueError(f"{MAX_IMAGE_PIXELS_KEY} must be positive, got {max_image_pixels}")
        label_map_path = _resolve_label_map_path(exec_properties.get(LABEL_MAP_PATH_KEY) or "")
        label_map = label_map_lib.LabelMap.load(label_map_path)

        _check_examples_format(examples)
        all_splits = _split_names(examples)
        unknown = sorted(set(exclude_splits) - set(all_splits))
        if unknown:
            logging.warning("AnnotationValidator: exclude_splits names splits the examples do not have: %s",
                            unknown)
        splits = [s for s in all_splits if s not in exclude_splits]
        if not splits:
            raise ValueError(f"no split to validate: the examples have {all_splits}, exclude_splits is "
                             f"{exclude_splits}")
        files = {split: _split_files(examples, split) for split in splits}

        anomalies.set_string_custom_property(SPLIT_NAMES_PROPERTY, artifact_utils.encode_split_names(splits))
        anomalies.set_int_custom_property(SPAN_PROPERTY, examples.span)
        with self._make_beam_pipeline() as pipeline:
            for split in splits:
                out_path = report_path(anomalies.uri, split)
                fileio.makedirs(os.path.dirname(out_path))
                fields = {"split": split, "label_map_path": label_map_path,
                          "examples_uri": os.path.dirname(examples_utils.get_split_file_patterns([examples], split)[0])}
                _ = pipeline | f"Validate[{split}]" >> _ValidateSplit(  # pylint: disable=no-value-for-parameter
                    files[split], label_map, out_path, fields, max_records, max_image_pixels)

        reports = {split: load_report(anomalies.uri, split) for split in splits}
        errors = sum(r["errors"] for r in reports.values())
        anomalies.set_int_custom_property(ERRORS_PROPERTY, errors)
        anomalies.set_int_custom_property(BLESSED_PROPERTY, int(errors == 0))
        logging.info("AnnotationValidator: %d errors; reports in %s\n%s", errors, anomalies.uri,
                     "\n".join(_summary_lines(reports)))
        if errors and fail_on_error:
            raise AnnotationValidationError(_failure_message(reports, _keep_reports(anomalies.uri, splits)))


class AnnotationValidator(base_component.BaseComponent):
    """Checks every annotation of the examples; fails the run (after writing a report) on bad records.

    Inputs: ``examples`` (Examples: TFRecords of the product's detection tf.Examples, as ExampleGen writes them).
    Outputs: ``anomalies`` (:class:`InstanceAnomalies`): ``Split-<split>/annotation_report.json`` per split.
    """

    SPEC_CLASS = AnnotationValidatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(AnnotationValidatorExecutor)

    def __init__(self, examples: types.BaseChannel, label_map_path: str, *,
                 exclude_splits: Optional[Sequence[str]] = None, fail_on_error: bool = True,
                 max_listed_records: int = DEFAULT_MAX_LISTED_RECORDS,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        """Args:
          examples: a channel of Examples, e.g. ``example_gen.outputs["examples"]``.
          label_map_path: the label map the examples were converted with (``label_map.json``, or the
            directory holding it); class ids not in it are errors.
          exclude_splits: splits not to validate (default: none, every split is checked).
          fail_on_error: fail the execution when any rule is broken (the report is written first).
          max_listed_records: problems listed in each split's report; the counts always cover every record.
          max_image_pixels: an image whose header declares more pixels is an error (``image_too_large``),
            not decoded; pass the trainer configuration's ``export.max_image_pixels``, the served model's limit.
        """
        if max_listed_records < 0:
            raise ValueError(f"max_listed_records must be >= 0, got {max_listed_records}")
        if max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
        spec = AnnotationValidatorSpec(
            examples=examples,
            label_map_path=label_map_path,
            exclude_splits=json_utils.dumps(list(exclude_splits or [])),
            fail_on_error=bool(fail_on_error),
            max_listed_records=int(max_listed_records),
            max_image_pixels=int(max_image_pixels),
            anomalies=types.Channel(type=InstanceAnomalies),
        )
        super().__init__(spec=spec)
