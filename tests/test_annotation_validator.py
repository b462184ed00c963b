"""The annotation validator: each rule on a crafted bad record, the executor over ExampleGen-style artifacts,
and a LocalDagRunner pipeline (ImportExampleGen -> AnnotationValidator) that stops on bad data."""
import dataclasses
import glob
import io
import json
import os
import shutil
from typing import Callable, Dict, List

import numpy as np
import pytest

import _odd_images
import maskrcnn_tfx  # noqa: F401  (before TensorFlow)
from maskrcnn_tfx.components import annotation_checks as checks
from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx.data import shapes
from maskrcnn_tfx.data.convert import convert_coco

IMAGE_SIZE = 64
LABEL_MAP = shapes.SHAPES_LABEL_MAP
# Beam's defaults (in memory, one worker), as the local runner asks for them: no flags.
BEAM_ARGS: list = []


def _read_records(pattern: str) -> List[bytes]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    files = sorted(glob.glob(pattern))
    assert files, pattern
    return [r for f in files for r in tf.data.TFRecordDataset(f, compression_type=_compression(f)).as_numpy_iterator()]


def _compression(path: str) -> str:
    with open(path, "rb") as f:
        return "GZIP" if f.read(2) == b"\x1f\x8b" else ""


def _write_records(path: str, records: List[bytes], gzip: bool = True) -> None:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP" if gzip else None) as writer:
        for record in records:
            writer.write(record)


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> str:
    """Six converted shapes images (train and eval splits), as the converter writes them."""
    root = str(tmp_path_factory.mktemp("shapes"))
    annotations = shapes.generate_shapes(root, num_images=6, image_size=IMAGE_SIZE, seed=3)
    output = os.path.join(root, "tfrecords")
    convert_coco(annotations, os.path.join(root, "coco", "images"), output, eval_fraction=0.4, progress=False)
    return output


@pytest.fixture(scope="module")
def train_records(shapes_data) -> List[bytes]:
    return _read_records(os.path.join(shapes_data, "train", "*.tfrecord-*"))


@pytest.fixture(scope="module")
def eval_records(shapes_data) -> List[bytes]:
    return _read_records(os.path.join(shapes_data, "eval", "*.tfrecord-*"))


@pytest.fixture(scope="module")
def base_example(train_records) -> ef.InstanceExample:
    """A clean example with at least two instances, to break in one way per test."""
    examples = [ef.from_tf_example(r) for r in train_records]
    return next(e for e in examples if e.num_instances >= 2)


def _serialize(example: ef.InstanceExample) -> bytes:
    return ef.to_tf_example(example).SerializeToString()


def _edit(example: ef.InstanceExample, **changes) -> bytes:
    """The example with some fields replaced (numpy fields copied, so the fixture stays clean)."""
    copy = dataclasses.replace(example, boxes=example.boxes.copy(), classes=example.classes.copy(),
                               masks_png=list(example.masks_png), class_texts=list(example.class_texts))
    for name, value in changes.items():
        setattr(copy, name, value)
    return _serialize(copy)


def _edit_proto(example: ef.InstanceExample, edit: Callable) -> bytes:
    """The example's proto after ``edit(feature_map)``: for records ``to_tf_example`` refuses to build."""
    proto = ef.to_tf_example(example)
    edit(proto.features.feature)
    return proto.SerializeToString()


def _box(example: ef.InstanceExample, i: int, **coords) -> bytes:
    boxes = example.boxes.copy()
    for name, value in coords.items():
        boxes[i, ("ymin", "xmin", "ymax", "xmax").index(name)] = value
    return _edit(example, boxes=boxes)


def _mask(example: ef.InstanceExample, i: int, png: bytes) -> bytes:
    masks = list(example.masks_png)
    masks[i] = png
    return _edit(example, masks_png=masks)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG")
    return buf.getvalue()


def _set_bytes(key: str, value: bytes):
    def edit(features):
        features[key].bytes_list.value[:] = [value]
    return edit


def _drop_last(key: str, kind: str):
    def edit(features):
        del getattr(features[key], kind).value[-1]
    return edit


def _clear(*keys: str):
    def edit(features):
        for key in keys:
            del features[key]
    return edit


# (rule, instance the problem names (None: the whole example), the bad record made from a clean example)
BAD_RECORDS: Dict[str, tuple] = {
    "box past the right border": (checks.BOX_OUTSIDE_IMAGE, 0, lambda e: _box(e, 0, xmax=1.2)),
    "box left of the image": (checks.BOX_OUTSIDE_IMAGE, 1, lambda e: _box(e, 1, xmin=-0.01)),
    "box ymin > ymax": (checks.BOX_INVERTED, 1, lambda e: _box(e, 1, ymin=0.9, ymax=0.1)),
    "box xmin > xmax": (checks.BOX_INVERTED, 0, lambda e: _box(e, 0, xmin=0.8, xmax=0.3)),
    "box of zero width": (checks.BOX_DEGENERATE, 0, lambda e: _box(e, 0, xmin=0.5, xmax=0.5)),
    "box with NaN": (checks.BOX_NOT_FINITE, 1, lambda e: _box(e, 1, ymax=float("nan"))),
    "one mask fewer than boxes": (checks.MASK_COUNT_MISMATCH, None,
                                  lambda e: _edit_proto(e, _drop_last(ef.MASK, "bytes_list"))),
    "one class label fewer": (checks.INSTANCE_LISTS_MISMATCH, None,
                              lambda e: _edit_proto(e, _drop_last(ef.CLASS_LABEL, "int64_list"))),
    "one xmin fewer": (checks.INSTANCE_LISTS_MISMATCH, None,
                       lambda e: _edit_proto(e, _drop_last(ef.BBOX_XMIN, "float_list"))),
    "one crowd flag fewer": (checks.INSTANCE_LISTS_MISMATCH, None,
                             lambda e: _edit_proto(e, _drop_last(ef.IS_CROWD, "int64_list"))),
    "mask one row too tall": (checks.MASK_SIZE_MISMATCH, 1,
                              lambda e: _mask(e, 1, ef.encode_png_mask(np.ones((e.height + 1, e.width), np.uint8)))),
    "mask of 0/255": (checks.MASK_NOT_BINARY, 0,
                      lambda e: _mask(e, 0, _png(ef.decode_png_mask(e.masks_png[0]) * 255))),
    "mask not a PNG": (checks.MASK_UNDECODABLE, 1, lambda e: _mask(e, 1, b"not a png at all")),
    "mask a JPEG": (checks.MASK_UNDECODABLE, 0,
                    lambda e: _mask(e, 0, _jpeg(np.zeros((e.height, e.width), np.uint8)))),
    "mask PNG truncated": (checks.MASK_UNDECODABLE, 1,
                           lambda e: _mask(e, 1, e.masks_png[1][:len(e.masks_png[1]) // 2])),
    "class id not in the label map": (checks.LABEL_NOT_IN_MAP, 1,
                                      lambda e: _edit(e, classes=np.asarray([e.classes[0], 99] + list(e.classes[2:])))),
    "class text of another class": (checks.LABEL_TEXT_MISMATCH, 0,
                                    lambda e: _edit(e, class_texts=["bogus"] + e.class_texts[1:])),
    "image bytes that do not decode": (checks.IMAGE_UNDECODABLE, None,
                                       lambda e: _edit(e, encoded=b"\x89PNG\r\n\x1a\nbroken")),
    "image truncated": (checks.IMAGE_UNDECODABLE, None, lambda e: _edit(e, encoded=e.encoded[:len(e.encoded) // 2])),
    "image absent": (checks.IMAGE_UNDECODABLE, None, lambda e: _edit_proto(e, _clear(ef.ENCODED))),
    "image above the pixel limit": (checks.IMAGE_TOO_LARGE, None,
                                    lambda e: _edit(e, encoded=_odd_images.png_bomb(20000, 20000))),
    "image/height larger than the image": (checks.IMAGE_SIZE_MISMATCH, None, lambda e: _edit(e, height=e.height + 8)),
    "image/width of 0": (checks.IMAGE_SIZE_INVALID, None, lambda e: _edit(e, width=0)),
    "source_id not numeric": (checks.SOURCE_ID_NOT_NUMERIC, None,
                              lambda e: _edit_proto(e, _set_bytes(ef.SOURCE_ID, b"img-7"))),
    "source_id absent": (checks.SOURCE_ID_NOT_NUMERIC, None, lambda e: _edit_proto(e, _clear(ef.SOURCE_ID))),
}


def test_clean_shapes_examples_have_no_problem(train_records, eval_records):
    for record in train_records + eval_records:
        check = checks.inspect_example(record, LABEL_MAP)
        assert check.problems == [], [p.describe() for p in check.problems]
        assert check.num_instances == ef.from_tf_example(record).num_instances >= 1


def test_every_rule_has_a_bad_record():
    covered = {rule for rule, _, _ in BAD_RECORDS.values()} | {checks.RECORD_UNPARSEABLE}
    assert covered == set(checks.RULES)


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_is_named_with_its_rule(base_example, case):
    rule, instance, make = BAD_RECORDS[case]
    problems = checks.check_example(make(base_example), LABEL_MAP)
    matching = [p for p in problems if p.rule == rule]
    assert matching, f"{case}: expected {rule}, got {[p.describe() for p in problems]}"
    problem = matching[0]
    assert problem.instance == instance
    assert problem.filename == base_example.filename
    if rule != checks.SOURCE_ID_NOT_NUMERIC:
        assert problem.source_id == str(base_example.source_id)
        where = f"source_id {base_example.source_id} ({base_example.filename})"
        assert problem.describe().startswith(where + (f" instance {instance}" if instance is not None else ""))
    assert problem.detail


def test_only_the_broken_rule_fires(base_example):
    """A single fault yields one problem, not a cascade (the size checks skip what cannot be judged)."""
    for case in ("box past the right border", "mask one row too tall", "class id not in the label map",
                 "one mask fewer than boxes", "image/width of 0"):
        rule, _, make = BAD_RECORDS[case]
        assert [p.rule for p in checks.check_example(make(base_example), LABEL_MAP)] == [rule], case


def test_problem_details_name_the_values(base_example):
    (outside,) = checks.check_example(_box(base_example, 0, xmax=1.2), LABEL_MAP)
    assert "xmax=1.2" in outside.detail
    (count,) = checks.check_example(BAD_RECORDS["one mask fewer than boxes"][2](base_example), LABEL_MAP)
    n = base_example.num_instances
    assert count.detail == f"{n - 1} masks for {n} boxes"
    (label,) = checks.check_example(BAD_RECORDS["class id not in the label map"][2](base_example), LABEL_MAP)
    assert "class id 99" in label.detail and "ids 1, 2, 3" in label.detail
    problems = checks.check_example(BAD_RECORDS["image/height larger than the image"][2](base_example), LABEL_MAP)
    (size,) = [p for p in problems if p.rule == checks.IMAGE_SIZE_MISMATCH]
    assert f"{IMAGE_SIZE}x{IMAGE_SIZE}" in size.detail and f"{IMAGE_SIZE}x{IMAGE_SIZE + 8}" in size.detail


def test_several_faults_of_one_record_are_all_listed(base_example):
    boxes = base_example.boxes.copy()
    boxes[0, 3] = 1.5
    boxes[1, 0], boxes[1, 2] = 0.9, 0.1
    record = _edit(base_example, boxes=boxes, classes=np.asarray([42] + list(base_example.classes[1:])))
    found = {(p.rule, p.instance) for p in checks.check_example(record, LABEL_MAP)}
    assert found == {(checks.BOX_OUTSIDE_IMAGE, 0), (checks.BOX_INVERTED, 1), (checks.LABEL_NOT_IN_MAP, 0)}


def test_tolerated_and_optional(base_example):
    # Float rounding just past the border is tolerated.
    assert checks.check_example(_box(base_example, 0, xmax=1.0 + 1e-7, ymin=-1e-7), LABEL_MAP) == []
    # Crowd flags, areas and class texts may be absent (Model Garden's decoder fills them in).
    bare = _edit_proto(base_example, _clear(ef.IS_CROWD, ef.AREA, ef.CLASS_TEXT))
    assert checks.check_example(bare, LABEL_MAP) == []
    # An image without instances is a valid (negative) example.
    empty = _edit(base_example, boxes=np.zeros((0, 4), np.float32), classes=np.zeros((0,), np.int64),
                  class_texts=[], is_crowd=np.zeros((0,), np.int64), areas=np.zeros((0,), np.float32),
                  masks_png=[])
    assert checks.inspect_example(empty, LABEL_MAP) == checks.ExampleCheck(
        str(base_example.source_id), base_example.filename, 0, [])


def test_jpeg_images_are_checked(base_example):
    from PIL import Image  # pylint: disable=g-import-not-at-top

    pixels = np.asarray(Image.open(io.BytesIO(base_example.encoded)).convert("RGB"))
    jpeg = _jpeg(pixels)
    assert checks.check_example(_edit(base_example, encoded=jpeg, format="jpeg"), LABEL_MAP) == []
    # JPEGs are decoded at 1/8 scale to save time; a truncated one must still be caught.
    (problem,) = checks.check_example(_edit(base_example, encoded=jpeg[:len(jpeg) * 2 // 3], format="jpeg"),
                                      LABEL_MAP)
    assert problem.rule == checks.IMAGE_UNDECODABLE and "truncated" in problem.detail


def test_unparseable_record():
    (problem,) = checks.check_example(b"\xff\xff\xff not a proto", LABEL_MAP)
    assert problem.rule == checks.RECORD_UNPARSEABLE
    assert problem.describe().startswith("record without source_id: record_unparseable")


# ---------------------------------------------------------------------------------------------------------
# The executor, run directly on artifacts laid out as ExampleGen writes them


def _examples_artifact(root: str, splits: Dict[str, List[bytes]], gzip: bool = True):
    from tfx.types import artifact_utils, standard_artifacts  # pylint: disable=g-import-not-at-top

    examples = standard_artifacts.Examples()
    examples.uri = os.path.join(root, "examples")
    examples.split_names = artifact_utils.encode_split_names(list(splits))
    for split, records in splits.items():
        name = "data_tfrecord-00000-of-00001" + (".gz" if gzip else "")
        _write_records(os.path.join(examples.uri, f"Split-{split}", name), records, gzip=gzip)
    return examples


def _run_executor(root: str, examples, label_map_path: str, **exec_properties):
    from maskrcnn_tfx.components import annotation_validator as av  # pylint: disable=g-import-not-at-top
    from tfx.dsl.components.base import base_beam_executor  # pylint: disable=g-import-not-at-top
    from tfx.utils import json_utils  # pylint: disable=g-import-not-at-top

    anomalies = av.InstanceAnomalies()
    anomalies.uri = os.path.join(root, "anomalies")
    properties = {av.LABEL_MAP_PATH_KEY: label_map_path}
    if "exclude_splits" in exec_properties:
        properties[av.EXCLUDE_SPLITS_KEY] = json_utils.dumps(exec_properties.pop("exclude_splits"))
    properties.update(exec_properties)
    executor = av.AnnotationValidatorExecutor(base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=BEAM_ARGS))
    error = None
    try:
        executor.Do({av.EXAMPLES_KEY: [examples]}, {av.ANOMALIES_KEY: [anomalies]}, properties)
    except av.AnnotationValidationError as e:
        error = e
    return anomalies, error


@pytest.fixture(scope="module")
def bad_records(base_example) -> List[bytes]:
    return [BAD_RECORDS["box past the right border"][2](base_example),
            BAD_RECORDS["one mask fewer than boxes"][2](base_example),
            b"not a record"]


def test_executor_passes_clean_data(tmp_path, shapes_data, train_records, eval_records):
    from maskrcnn_tfx.components import annotation_validator as av  # pylint: disable=g-import-not-at-top

    examples = _examples_artifact(str(tmp_path), {"train": train_records, "eval": eval_records})
    # The label map may be named by the converter's output directory.
    anomalies, error = _run_executor(str(tmp_path), examples, shapes_data)
    assert error is None
    assert av.validated_splits(anomalies) == ["train", "eval"]
    assert anomalies.get_int_custom_property(av.SPAN_PROPERTY) == examples.span
    assert anomalies.get_int_custom_property(av.ERRORS_PROPERTY) == 0
    assert anomalies.get_int_custom_property(av.BLESSED_PROPERTY) == 1
    for split, records in (("train", train_records), ("eval", eval_records)):
        report = av.load_report(anomalies.uri, split)
        assert report["split"] == split
        assert report["examples"] == len(records)
        assert report["instances"] == sum(ef.from_tf_example(r).num_instances for r in records)
        assert report["errors"] == report["examples_with_errors"] == 0
        assert report["errors_by_rule"] == {rule: 0 for rule in checks.RULES}
        assert report["records"] == []
        assert report["examples_uri"] == os.path.join(examples.uri, f"Split-{split}")
        assert report["label_map"] == os.path.join(shapes_data, "label_map.json")
    assert not os.path.exists(anomalies.uri + av.FAILED_SUFFIX)


def test_executor_reports_and_fails_on_bad_data(tmp_path, shapes_data, train_records, eval_records, bad_records,
                                                base_example):
    from maskrcnn_tfx.components import annotation_validator as av  # pylint: disable=g-import-not-at-top

    examples = _examples_artifact(str(tmp_path), {"train": train_records + bad_records, "eval": eval_records})
    anomalies, error = _run_executor(str(tmp_path), examples, os.path.join(shapes_data, "label_map.json"))
    assert error is not None
    message = str(error)
    kept = anomalies.uri + av.FAILED_SUFFIX
    # The message names the records at fault and the kept report (TFX deletes the artifact of a failed run).
    assert f"source_id {base_example.source_id} ({base_example.filename})" in message
    assert "box_outside_image: xmax=1.2 outside [0, 1]" in message
    assert "mask_count_mismatch" in message and "record_unparseable" in message
    assert av.report_path(kept, "train") in message
    assert av.report_path(kept, "eval") not in message  # eval is clean

    for uri in (anomalies.uri, kept):
        report = av.load_report(uri, "train")
        assert report["examples"] == len(train_records) + 3
        assert report["examples_with_errors"] == 3
        assert report["errors"] == 3
        assert {rule: n for rule, n in report["errors_by_rule"].items() if n} == {
            checks.BOX_OUTSIDE_IMAGE: 1, checks.MASK_COUNT_MISMATCH: 1, checks.RECORD_UNPARSEABLE: 1}
        listed = [(r["source_id"], r["filename"], r["instance"], r["rule"]) for r in report["records"]]
        sid, name = str(base_example.source_id), base_example.filename
        # Ordered by source_id (records without one last), then instance (whole-example problems first).
        assert listed == [(sid, name, None, checks.MASK_COUNT_MISMATCH), (sid, name, 0, checks.BOX_OUTSIDE_IMAGE),
                          ("", "", None, checks.RECORD_UNPARSEABLE)]
        assert all(r["file"] == "data_tfrecord-00000-of-00001.gz" for r in report["records"])
        assert av.load_report(uri, "eval")["errors"] == 0
    assert anomalies.get_int_custom_property(av.BLESSED_PROPERTY) == 0


def test_listed_records_are_capped_but_counts_whole(tmp_path, shapes_data, base_example):
    from maskrcnn_tfx.components import annotation_validator as av  # pylint: disable=g-import-not-at-top

    bad = [_box(dataclasses.replace(base_example, source_id=1000 + i), 0, xmax=2.0) for i in range(30)]
    examples = _examples_artifact(str(tmp_path), {"train": bad})
    anomalies, error = _run_executor(str(tmp_path), examples, shapes_data, max_listed_records=4)
    assert error is not None
    report = av.load_report(anomalies.uri, "train")
    assert report["errors"] == report["examples_with_errors"] == report["examples"] == 30
    assert report["max_listed_records"] == 4
    assert [r["source_id"] for r in report["records"]] == ["1000", "1001", "1002", "1003"]


def test_fail_on_error_off_and_exclude_splits(tmp_path, shapes_data, train_records, eval_records, bad_records):
    from maskrcnn_tfx.components import annotation_validator as av  # pylint: disable=g-import-not-at-top

    examples = _examples_artifact(str(tmp_path / "a"), {"train": eval_records + bad_records, "eval": eval_records})
    anomalies, error = _run_executor(str(tmp_path / "a"), examples, shapes_data, fail_on_error=False)
    assert error is None
    assert anomalies.get_int_custom_property(av.ERRORS_PROPERTY) == 3
    assert anomalies.get_int_custom_property(av.BLESSED_PROPERTY) == 0
    assert av.load_report(anomalies.uri, "train")["errors"] == 3

    anomalies, error = _run_executor(str(tmp_path / "b"), examples, shapes_data, exclude_splits=["train"])
    assert error is None
    assert av.validated_splits(anomalies) == ["eval"]
    assert not os.path.exists(av.report_path(anomalies.uri, "train"))


def test_uncompressed_files_without_suffix_are_read(tmp_path, shapes_data, eval_records, bad_records):
    from maskrcnn_tfx.components import annotation_validator as av  # pylint: disable=g-import-not-at-top

    examples = _examples_artifact(str(tmp_path), {"train": eval_records + bad_records[:1]}, gzip=False)
    # A second file in the split, GZIP'd but without a .gz suffix: compression is sniffed from its bytes.
    _write_records(os.path.join(examples.uri, "Split-train", "more"), eval_records, gzip=True)
    anomalies, error = _run_executor(str(tmp_path), examples, shapes_data)
    report = av.load_report(anomalies.uri, "train")
    assert report["examples"] == 2 * len(eval_records) + 1
    assert report["errors"] == 1 and error is not None


def test_component_wiring():
    from maskrcnn_tfx.components import AnnotationValidator  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.components import annotation_validator as av  # pylint: disable=g-import-not-at-top
    from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top

    examples = tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples)
    validator = AnnotationValidator(examples=examples, label_map_path="/data/label_map.json",
                                    exclude_splits=["eval"], max_listed_records=5)
    assert validator.outputs["anomalies"].type is av.InstanceAnomalies
    # The Kubeflow V2 container finds the output's Python class by importing its type name.
    from tfx.utils import import_utils  # pylint: disable=g-import-not-at-top
    assert import_utils.import_class_by_path(av.InstanceAnomalies.TYPE_NAME) is av.InstanceAnomalies
    assert validator.exec_properties[av.EXCLUDE_SPLITS_KEY] == '["eval"]'
    assert validator.exec_properties[av.FAIL_ON_ERROR_KEY] is True
    assert validator.exec_properties[av.MAX_LISTED_RECORDS_KEY] == 5
    with pytest.raises(ValueError, match="max_listed_records"):
        AnnotationValidator(examples=examples, label_map_path="x", max_listed_records=-1)


# ---------------------------------------------------------------------------------------------------------
# A real pipeline: ImportExampleGen over converted TFRecords -> AnnotationValidator, on LocalDagRunner


def _run_pipeline(root: str, data_dir: str, label_map_path: str) -> None:
    from maskrcnn_tfx.components import AnnotationValidator  # pylint: disable=g-import-not-at-top
    from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top

    example_gen = tfx.components.ImportExampleGen(
        input_base=data_dir,
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="train", pattern="train/*"),
                                             tfx.proto.Input.Split(name="eval", pattern="eval/*")]))
    validator = AnnotationValidator(examples=example_gen.outputs["examples"], label_map_path=label_map_path)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="annotation-validation",
        pipeline_root=os.path.join(root, "pipeline_root"),
        components=[example_gen, validator],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")),
        beam_pipeline_args=BEAM_ARGS,
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)


@pytest.mark.slow
def test_pipeline_passes_good_data_and_stops_on_bad(tmp_path, shapes_data, base_example):
    from maskrcnn_tfx.components import annotation_validator as av  # pylint: disable=g-import-not-at-top

    label_map_path = os.path.join(shapes_data, "label_map.json")
    _run_pipeline(str(tmp_path / "good"), shapes_data, label_map_path)
    (report_file,) = glob.glob(str(tmp_path / "good" / "pipeline_root" / "AnnotationValidator" / "anomalies" / "*"
                                   / "Split-train" / av.REPORT_FILE))
    with open(report_file, encoding="utf-8") as f:
        assert json.load(f)["errors"] == 0

    bad_data = str(tmp_path / "bad_data")
    shutil.copytree(shapes_data, bad_data)
    bad = BAD_RECORDS["mask one row too tall"][2](base_example)
    _write_records(os.path.join(bad_data, "eval", "eval.tfrecord-extra"), [bad], gzip=False)
    with pytest.raises(av.AnnotationValidationError) as info:
        _run_pipeline(str(tmp_path / "bad"), bad_data, label_map_path)
    message = str(info.value)
    assert f"source_id {base_example.source_id} ({base_example.filename})" in message
    assert "instance 1: mask_size_mismatch" in message
    (kept,) = glob.glob(str(tmp_path / "bad" / "pipeline_root" / "AnnotationValidator" / "anomalies"
                            / f"*{av.FAILED_SUFFIX}"))
    assert av.report_path(kept, "eval") in message
    assert av.load_report(kept, "eval")["errors_by_rule"][checks.MASK_SIZE_MISMATCH] == 1
    assert av.load_report(kept, "train")["errors"] == 0
