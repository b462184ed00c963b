"""The trainer's input pipeline: compression detection and the data set's pixel statistics (no training)."""
import os

import numpy as np
import pytest

import _trainer_helpers as helpers
import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
import tensorflow as tf
from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx import config as config_lib
from maskrcnn_tfx.trainer import experiment as experiment_lib
from maskrcnn_tfx.trainer import input as input_lib
from maskrcnn_tfx.trainer import model as model_lib
from maskrcnn_tfx.trainer import preprocessing
from maskrcnn_tfx.trainer import train as train_lib

MEAN = [100.0, 110.0, 120.0]
STD = [50.0, 60.0, 70.0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return helpers.shapes_data(str(tmp_path_factory.getbasetemp() / "trainer_data"))


def _records(pattern):
    return [r.numpy() for f in sorted(tf.io.gfile.glob(pattern)) for r in tf.data.TFRecordDataset(f)]


def _write(path, records, compression=""):
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type=compression)) as writer:
        for record in records:
            writer.write(record)
    return path


def _with_statistics(record: bytes) -> bytes:
    """The example as TFX Transform writes it: raw features plus the pixel statistics."""
    example = tf.train.Example.FromString(record)
    example.features.feature[ef.PIXEL_MEAN].float_list.value.extend(MEAN)
    example.features.feature[ef.PIXEL_STD].float_list.value.extend(STD)
    return example.SerializeToString()


@pytest.fixture(scope="module")
def transformed(data, tmp_path_factory):
    """The eval split as GZIP TFRecords carrying pixel statistics (what Transform writes)."""
    out = tmp_path_factory.mktemp("transformed")
    _write(str(out / "transformed_examples-00000-of-00001.gz"), [_with_statistics(r) for r in _records(data.eval)],
           "GZIP")
    return str(out / "*")


def test_detects_plain_and_gzip_records(data, transformed, tmp_path):
    assert input_lib.detect_file_type(data.train) == input_lib.FILE_TYPE_PLAIN
    assert input_lib.detect_file_type([transformed]) == input_lib.FILE_TYPE_GZIP
    # Empty shards (Transform may write some) are skipped; the first non-empty file decides.
    _write(str(tmp_path / "a-empty.gz"), [], "GZIP")
    _write(str(tmp_path / "b-data.gz"), _records(data.eval)[:1], "GZIP")
    assert input_lib.detect_file_type(str(tmp_path / "*.gz")) == input_lib.FILE_TYPE_GZIP
    assert input_lib.resolve_file_type("none", transformed) == input_lib.FILE_TYPE_PLAIN  # Configured wins.


def test_missing_or_unreadable_input_is_a_clear_error(tmp_path):
    with pytest.raises(input_lib.InputError, match="no input files match"):
        input_lib.detect_file_type(str(tmp_path / "nothing-*"))
    (tmp_path / "junk.tfrecord").write_bytes(b"this is not a TFRecord file at all")
    with pytest.raises(input_lib.InputError, match="no readable TFRecord"):
        input_lib.detect_file_type(str(tmp_path / "junk.tfrecord"))


def test_pixel_statistics_presence(data, transformed):
    assert input_lib.examples_have_pixel_statistics([transformed], input_lib.FILE_TYPE_GZIP)
    assert not input_lib.examples_have_pixel_statistics(data.eval, input_lib.FILE_TYPE_PLAIN)


def _first_batch(data, pattern, file_type, statistics_from_examples):
    config = config_lib.load_trainer_config("tiny", {"train": {"eval_batch_size": 2}})
    exp = experiment_lib.to_experiment_config(config, LabelMap.load(data.label_map), eval_input=pattern,
                                          file_type=file_type)
    task = model_lib.MaskRCNNTrainerTask(exp.task, statistics_from_examples=statistics_from_examples)
    images, labels = next(iter(task.build_inputs(exp.task.validation_data)))
    return images.numpy(), labels


def test_images_are_renormalized_with_the_examples_statistics(data, transformed):
    plain_images, plain_labels = _first_batch(data, data.eval, input_lib.FILE_TYPE_PLAIN, False)
    stat_images, stat_labels = _first_batch(data, transformed, input_lib.FILE_TYPE_GZIP, True)
    # Same examples, same order (eval reads in order): only the normalization differs.
    np.testing.assert_array_equal(plain_labels["groundtruths"]["source_id"].numpy(),
                                  stat_labels["groundtruths"]["source_id"].numpy())
    np.testing.assert_allclose(plain_labels["image_info"].numpy(), stat_labels["image_info"].numpy())
    expected = preprocessing.renormalize_image(plain_images, MEAN, STD).numpy()
    np.testing.assert_allclose(stat_images, expected, rtol=1e-5, atol=1e-4)
    assert np.abs(stat_images - plain_images).max() > 0.1
    # Without a Transform the images are exactly Model Garden's ImageNet-normalized ones (renormalize is the
    # identity): the pixel mean of an ImageNet-normalized image is far from the raw [0, 255] values.
    assert -5.0 < plain_images.mean() < 5.0


def test_statistics_required_when_a_transform_output_is_given(data, tmp_path):
    # The examples lack the statistics: the run stops before building anything, naming the problem.
    with pytest.raises(input_lib.InputError, match="carry no pixel statistics"):
        train_lib.train(helpers.quick_overrides(), data.train, None, str(tmp_path / "run"), label_map=data.label_map,
                        tf_transform_output=str(tmp_path / "transform_graph"))
    assert not os.path.exists(tmp_path / "run" / "checkpoint")
