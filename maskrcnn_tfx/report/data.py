"""What the validators saw in a run's data: TFDV's statistics (StatisticsGen), its schema anomalies
(ExampleValidator) and the AnnotationValidator's per-record report, from the artifacts MLMD names.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Dict, List

from maskrcnn_tfx import example_format as ef

SPLIT_PREFIX = "Split-"  # TFX's split folders inside an artifact directory
TOP_VALUES_SHOWN = 5


def split_dirs(uri: str) -> Dict[str, str]:
    """The ``Split-<name>`` folders of an artifact directory, by split name (train first, then eval, then any)."""
    if not uri or not os.path.isdir(uri):
        return {}
    names = sorted(d[len(SPLIT_PREFIX):] for d in os.listdir(uri)
                   if d.startswith(SPLIT_PREFIX) and os.path.isdir(os.path.join(uri, d)))
    names.sort(key=lambda n: ({"train": 0, "eval": 1}.get(n, 2), n))
    return {n: os.path.join(uri, SPLIT_PREFIX + n) for n in names}


@dataclasses.dataclass
class FeatureRow:
    name: str
    type: str
    present: float  # fraction of examples that have the feature
    values_per_example: str  # "min / mean / max"
    summary: str  # numbers or top values


@dataclasses.dataclass
class SplitStatistics:
    split: str
    num_examples: int
    features: List[FeatureRow]
    class_counts: Dict[str, int]  # instances per class name, from the class text feature
    path: str


def _common(feature) -> Any:
    for field in ("num_stats", "string_stats", "bytes_stats", "struct_stats"):
        if feature.HasField(field):
            return getattr(feature, field).common_stats
    return None


def _feature_row(feature, num_examples: int) -> FeatureRow:
    from tensorflow_metadata.proto.v0 import statistics_pb2  # pylint: disable=g-import-not-at-top

    name = ".".join(feature.path.step) or feature.name
    type_name = statistics_pb2.FeatureNameStatistics.Type.Name(feature.type).lower()
    common = _common(feature)
    present = (common.num_non_missing / num_examples) if (common is not None and num_examples) else 0.0
    per_example = (f"{common.min_num_values} / {common.avg_num_values:.2f} / {common.max_num_values}"
                   if common is not None else "")
    if feature.HasField("num_stats"):
        s = feature.num_stats
        summary = f"mean {s.mean:.4g}, std {s.std_dev:.3g}, min {s.min:.4g}, max {s.max:.4g}"
        if s.num_zeros:
            summary += f", zeros {s.num_zeros}"
    elif feature.HasField("string_stats"):
        s = feature.string_stats
        top = ", ".join(f"{v.value} ({int(v.frequency)})" for v in list(s.top_values)[:TOP_VALUES_SHOWN])
        summary = f"{s.unique} unique" + (f"; top: {top}" if top else "")
    elif feature.HasField("bytes_stats"):
        s = feature.bytes_stats
        summary = f"{s.unique} unique; {s.avg_num_bytes:.0f} bytes on average (max {s.max_num_bytes:.0f})"
    else:
        summary = ""
    return FeatureRow(name, type_name, present, per_example, summary)


def load_statistics(statistics_uri: str) -> List[SplitStatistics]:
    """Every split's TFDV statistics in a StatisticsGen output."""
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top
    from tfx.components.statistics_gen import stats_artifact_utils  # pylint: disable=g-import-not-at-top

    result = []
    for split, path in split_dirs(statistics_uri).items():
        stats_file = os.path.join(path, stats_artifact_utils.BINARY_PB_BASENAME)
        if not os.path.isfile(stats_file):
            continue
        stats = tfdv.load_stats_binary(stats_file)
        if not stats.datasets:
            continue
        dataset = stats.datasets[0]
        features = [_feature_row(f, dataset.num_examples) for f in dataset.features]
        class_counts: Dict[str, int] = {}
        for feature in dataset.features:
            if ".".join(feature.path.step) == ef.CLASS_TEXT and feature.HasField("string_stats"):
                class_counts = {v.value: int(v.frequency) for v in feature.string_stats.top_values}
        result.append(SplitStatistics(split, int(dataset.num_examples), sorted(features, key=lambda r: r.name),
                                      class_counts, stats_file))
    return result


@dataclasses.dataclass
class SchemaAnomaly:
    split: str
    feature: str  # "(data set)" for a data-set-level anomaly
    severity: str
    short: str
    description: str


def load_schema_anomalies(anomalies_uri: str) -> Dict[str, List[SchemaAnomaly]]:
    """ExampleValidator's anomalies by split (an empty list: the split was checked and is clean)."""
    from maskrcnn_tfx.components.anomalies_gate import ANOMALIES_FILE  # pylint: disable=g-import-not-at-top
    from tensorflow_metadata.proto.v0 import anomalies_pb2  # pylint: disable=g-import-not-at-top

    result: Dict[str, List[SchemaAnomaly]] = {}
    for split, path in split_dirs(anomalies_uri).items():
        anomalies_file = os.path.join(path, ANOMALIES_FILE)
        if not os.path.isfile(anomalies_file):
            continue
        anomalies = anomalies_pb2.Anomalies()
        with open(anomalies_file, "rb") as f:
            anomalies.ParseFromString(f.read())
        found = []
        for feature, info in sorted(anomalies.anomaly_info.items()):
            found.append(SchemaAnomaly(split, feature, anomalies_pb2.AnomalyInfo.Severity.Name(info.severity),
                                       info.short_description, info.description))
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            found.append(SchemaAnomaly(split, "(data set)", anomalies_pb2.AnomalyInfo.Severity.Name(info.severity),
                                       info.short_description, info.description))
        result[split] = found
    return result


def load_annotation_reports(reports_uri: str) -> Dict[str, Dict[str, Any]]:
    """The AnnotationValidator's report of each split (``maskrcnn_tfx.components.annotation_validator``'s format)."""
    from maskrcnn_tfx.components import annotation_validator as av  # pylint: disable=g-import-not-at-top

    reports = {}
    for split in split_dirs(reports_uri):
        if os.path.isfile(av.report_path(reports_uri, split)):
            reports[split] = av.load_report(reports_uri, split)
    return reports


def eval_example_files(examples_uri: str, split: str = "eval") -> List[str]:
    """The record files of one split of an ExampleGen output, sorted."""
    path = split_dirs(examples_uri).get(split)
    if path is None:
        return []
    return sorted(p for p in glob.glob(os.path.join(path, "*")) if os.path.isfile(p))


def first_examples(files: List[str], count: int) -> List[ef.InstanceExample]:
    """The first ``count`` examples of record files (ExampleGen writes them gzipped)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    found: List[ef.InstanceExample] = []
    for path in files:
        compression = "GZIP" if _is_gzip(path) else ""
        for record in tf.data.TFRecordDataset(path, compression_type=compression).take(count - len(found)):
            found.append(ef.from_tf_example(record.numpy()))
        if len(found) >= count:
            break
    return found


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"

