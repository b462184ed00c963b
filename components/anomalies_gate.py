"""AnomaliesGate: stops the pipeline when TFDV's ExampleValidator found anomalies.

ExampleValidator writes its anomalies (``Split-<split>/SchemaDiff.pb``) and succeeds whatever they hold, so a
run would train on data that breaks the schema. This gate fails the execution when any validated split has an
anomaly, with an error naming each split, feature and anomaly, and the file that holds the full report::

    gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])
    trainer.add_upstream_node(gate)   # training starts only when the schema check passed

TFDV's anomalies are per feature (statistics against the schema); per-record problems are the
AnnotationValidator's (``maskrcnn_tfx.components.annotation_validator``), whose report names the records.
"""

import os  # (no `from __future__ import annotations`: TFX reads the real type hints of @component)
from typing import List

from tfx import v1 as tfx
from tfx.dsl.io import fileio
from tfx.types import artifact_utils

# ExampleValidator's file name per split (tfx.components.example_validator.executor.DEFAULT_FILE_NAME).
ANOMALIES_FILE = "SchemaDiff.pb"


class SchemaAnomaliesError(RuntimeError):
    """ExampleValidator found anomalies; the message names them and the files that hold them."""


def anomaly_lines(anomalies_uri: str, split_names: List[str]) -> List[str]:
    """One line per anomaly (split, feature, short description) and the report path, for the given splits."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2  # pylint: disable=g-import-not-at-top

    lines: List[str] = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE)
        if not fileio.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies()
        with fileio.open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"  {split}: feature {feature!r}: {info.short_description or info.description} "
                         f"({path})")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"  {split}: data set: {info.short_description or info.description} ({path})")
    return lines


@tfx.dsl.components.component
def AnomaliesGate(  # pylint: disable=invalid-name
        anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
    """Fails when the ExampleValidator's anomalies artifact holds any anomaly."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    lines = anomaly_lines(anomalies.uri, splits)
    if lines:
        raise SchemaAnomaliesError(
            f"ExampleValidator found {len(lines)} schema anomalies; the pipeline stops before training:\n"
            + "\n".join(lines))
