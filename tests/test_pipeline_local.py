"""The whole pipeline on LocalDagRunner, on a small shapes set, through ``maskrcnn-tfx run`` and the factory.

The session's sequence of runs on one pipeline root (tests/_pipeline_runs.py, the ``local_pipeline`` fixture):

1. span 1, thresholds 0: every component runs, the model is blessed and pushed to ``serving/<integer>/``; the
   command prints a line per component and keeps TensorFlow's, absl's and Orbit's output in the run's log;
2. the same data and trainer with a mask AP threshold of 1.0: the data, validation, Transform and Trainer
   executions are CACHED; the Evaluator runs again, does not bless, and nothing new is pushed;
3. span 2 added: the pipeline runs on it and the Evaluator compares with the last blessed model (baseline).

Separately: a bad record among good ones stops the run at validation, naming the record, and pushes nothing;
a curated schema the data breaks stops ``maskrcnn-tfx run`` at the ExampleValidator's gate, which the command
names with the run's log file.
"""
import dataclasses
import glob
import os
import re
import shutil
from typing import Dict

import pytest

import maskrcnn_tfx  # noqa: F401
import _pipeline_runs
from _pipeline_runs import versions
from maskrcnn_tfx.testing.data import shapes_tfrecords

pytestmark = pytest.mark.slow

CACHED_COMPONENTS = ("ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "AnomaliesGate",
                     "AnnotationValidator", "Transform", "Trainer")


@pytest.fixture(scope="module")
def runs(local_pipeline) -> Dict[str, _pipeline_runs.Run]:
    return local_pipeline.runs


def test_first_run_blesses_and_pushes_an_integer_version(runs):
    first = runs["first"]
    assert first.exit_code == 0, first.stdout
    summary = first.summary
    assert all(e.state == "COMPLETE" for e in summary.executions.values()), summary.lines()
    assert set(summary.executions) >= {"ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                                       "AnomaliesGate", "AnnotationValidator", "Transform", "Trainer",
                                       "Evaluator", "Pusher"}
    assert summary.blessed is True
    assert len(first.versions) == 1
    version = first.versions[0]
    assert summary.pushed and summary.pushed_version == version
    assert os.path.basename(summary.pushed_model_path.rstrip("/")) == version
    assert os.path.isfile(os.path.join(summary.pushed_model_path, "saved_model.pb"))
    assert 0.0 <= summary.metrics["mask_ap"] <= 1.0 and 0.0 <= summary.metrics["box_ap"] <= 1.0
    # The command's report names the pushed model, its version, the metrics and the blessing.
    assert summary.pushed_model_path in first.stdout and f"version {version}" in first.stdout
    assert "mask_ap" in first.stdout and "box_ap" in first.stdout and "blessed: yes" in first.stdout
    # ... and why: each bound with the model's value; no baseline yet, so no comparison applied.
    for name in ("mask_ap", "box_ap"):
        assert f"{name} {summary.metrics[name]:.4f}: must be above -1: passed" in first.stdout
    assert "not applied (no baseline" in first.stdout


@pytest.mark.parametrize("name", ["first", "span2"])  # the local runner's run, the Beam runner's
def test_the_command_prints_a_line_per_component_and_logs_the_rest(runs, name):
    first = runs[name]
    assert first.exit_code == 0, (first.stdout, first.stderr)
    printed = first.stdout
    executed = first.summary.executions
    for component_id in executed:
        assert re.search(rf"^\[\s*\d+/{len(executed)}\] {component_id}\s+complete in ", printed, re.M), printed
    assert re.search(r"^\[\s*\d+/\d+\] Trainer\s+complete in .*\(3 steps", printed, re.M), printed
    # Nothing of TensorFlow, absl, Beam or Orbit on the terminal, on stdout or stderr (C++ logging included).
    terminal = printed + first.stderr
    for noise in ("WARNING", "absl", "tensorflow", "W0000", "I0000", "E external", "train | step", "'total_loss'",
                  "Traceback"):
        assert noise not in terminal, (noise, terminal)
    # The last lines say where the log is; it holds the detail.
    log_path = re.search(r"^log: (.+)$", printed, re.M).group(1)
    assert os.path.dirname(log_path) == os.path.join(first.config.pipeline_root, "logs")
    with open(log_path, encoding="utf-8") as f:
        log = f.read()
    assert re.search(r"(Component|node) Trainer is running\.", log) and "Trainer: step 3/3" in log
    assert "train | step" in log  # Orbit's own lines
    assert "property_predicate" not in log  # TFX's always-false warning is dropped


def test_rerun_reuses_the_cache(runs):
    executions = runs["strict"].summary.executions
    for component_id in CACHED_COMPONENTS:
        assert executions[component_id].state == "CACHED", (component_id, executions[component_id].state)
    first_model = runs["first"].summary.executions["Trainer"].outputs["model"][0].uri
    assert executions["Trainer"].outputs["model"][0].uri == first_model


def test_too_high_threshold_is_not_blessed_nor_pushed(runs):
    strict = runs["strict"]
    assert strict.summary.executions["Evaluator"].state == "COMPLETE"
    assert strict.summary.blessed is False
    assert not strict.summary.pushed
    # The summary says why: the mask AP bound failed (with the model's value), the box AP bound passed.
    reasons = strict.summary.blessing_reasons
    mask_ap, box_ap = strict.summary.metrics["mask_ap"], strict.summary.metrics["box_ap"]
    assert f"mask_ap {mask_ap:.4f}: must be above 1: failed" in reasons, reasons
    assert f"box_ap {box_ap:.4f}: must be above -1: passed" in reasons, reasons
    assert "blessed: no (1 threshold failed)" in strict.summary.lines()
    assert strict.versions == runs["first"].versions


def test_new_span_is_evaluated_against_the_last_blessed_model(runs):
    span2 = runs["span2"].summary
    example_gen = span2.executions["ImportExampleGen"]
    assert example_gen.state == "COMPLETE"
    assert example_gen.outputs["examples"][0].custom_properties.get("span") == 2
    assert span2.executions["Trainer"].state == "COMPLETE"
    baseline = span2.executions["Evaluator"].inputs.get("baseline_model", [])
    # The baseline is the model the first run blessed (the strict run's was not blessed).
    assert [b.uri for b in baseline] == [runs["first"].summary.executions["Trainer"].outputs["model"][0].uri]
    assert "mask_ap" in span2.baseline_metrics and "box_ap" in span2.baseline_metrics
    assert span2.blessed is True and span2.pushed
    # The baseline comparison is in the summary: candidate vs baseline, the allowed drop, the outcome.
    for name in ("mask_ap", "box_ap"):
        change = [r for r in span2.blessing_reasons if r.startswith(f"{name} ") and "vs baseline" in r]
        assert change and change[0].endswith("must be at most 1 below the baseline: passed"), span2.blessing_reasons
        assert f"{span2.metrics[name]:.4f} vs baseline {span2.baseline_metrics[name]:.4f}" in change[0]
    assert len(runs["span2"].versions) == 2


# ---------------------------------------------------------------------------------------------------------
# Validation stops the run before training


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> str:
    return shapes_tfrecords(str(tmp_path_factory.mktemp("small_data")), num_images=10, image_size=64, seed=5,
                            eval_fraction=0.3)


def _bad_record(data_dir: str) -> tuple:
    """A clean record whose first box is moved outside its image; (serialized, source_id, filename)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx import example_format as ef  # pylint: disable=g-import-not-at-top

    (path,) = glob.glob(os.path.join(data_dir, "train", "*.tfrecord-*"))
    record = next(tf.data.TFRecordDataset(path).as_numpy_iterator())
    example = ef.from_tf_example(record)
    boxes = example.boxes.copy()
    boxes[0, 3] = 1.5  # xmax beyond the right edge
    bad = dataclasses.replace(example, boxes=boxes, source_id=9999, filename="broken.png")
    return ef.to_tf_example(bad).SerializeToString(), 9999, "broken.png"


def _assert_stopped_before_training(config) -> None:
    from maskrcnn_tfx.pipelines import outputs  # pylint: disable=g-import-not-at-top

    summary = outputs.latest_run(config)
    for component_id in ("Transform", "Trainer", "Evaluator", "Pusher"):
        assert component_id not in summary.executions, summary.executions.keys()
    assert versions(config.resolved_serving_dir) == []


def test_bad_record_stops_at_validation_and_is_named(tmp_path, small_data):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx.components import annotation_validator as av  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines import local_runner  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top

    data = str(tmp_path / "data")
    shutil.copytree(small_data, data)
    record, source_id, filename = _bad_record(data)
    with tf.io.TFRecordWriter(os.path.join(data, "train", "train.tfrecord-extra")) as writer:
        writer.write(record)
    config = config_lib.from_dict({"pipeline_root": str(tmp_path / "root"), "data": {"root": data}, "trainer": {"train": {"train_steps": 1}}})
    with pytest.raises(av.AnnotationValidationError) as info:
        local_runner.run(config)
    message = str(info.value)
    assert f"source_id {source_id} ({filename})" in message and "box_outside_image" in message
    (kept,) = glob.glob(str(tmp_path / "root" / "AnnotationValidator" / "anomalies" / f"*{av.FAILED_SUFFIX}"))
    report = av.load_report(kept, "train")
    assert report["examples_with_errors"] == 1
    assert any(r["source_id"] == str(source_id) for r in report["records"])
    _assert_stopped_before_training(config)


def test_schema_anomaly_stops_at_the_gate(tmp_path, small_data, capsys):
    import yaml  # pylint: disable=g-import-not-at-top
    from tensorflow_metadata.proto.v0 import schema_pb2  # pylint: disable=g-import-not-at-top
    from google.protobuf import text_format  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx import cli  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx import example_format as ef  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.trainer.preprocessing import raw_schema  # pylint: disable=g-import-not-at-top

    # A curated schema that allows only JPEG images: the PNG shapes break it.
    schema: schema_pb2.Schema = raw_schema()
    feature = next(f for f in schema.feature if f.name == ef.FORMAT)
    feature.string_domain.name = "image_format"
    feature.string_domain.value.append("jpeg")
    schema_path = str(tmp_path / "schema.pbtxt")
    with open(schema_path, "w", encoding="utf-8") as f:
        f.write(text_format.MessageToString(schema))
    config = config_lib.from_dict({"pipeline_root": str(tmp_path / "root"), "data": {"root": small_data, "schema_path": schema_path},
                                       "trainer": {"train": {"train_steps": 1}}})
    # Through the command, as a user runs it: the failing component and the log are named.
    config_file = str(tmp_path / "pipeline.yaml")
    with open(config_file, "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f)
    assert cli.main(["run", "--config", config_file]) == 1
    printed = capsys.readouterr()
    assert re.search(r"^\[\s*\d+/\d+\] AnomaliesGate\s+FAILED after .*: ", printed.out, re.M), printed.out
    log_path = re.search(r"^log: (.+)$", printed.out, re.M).group(1)
    assert "error: the pipeline stopped at AnomaliesGate: " in printed.err and ef.FORMAT in printed.err
    assert f"(the whole log: {log_path})" in printed.err
    with open(log_path, encoding="utf-8") as f:
        log = f.read()
    assert "SchemaAnomaliesError" in log and "Traceback" in log  # the whole error is in the log
    _assert_stopped_before_training(config)
