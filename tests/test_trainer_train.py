"""Training through the TFX Trainer entry point (run_fn) on a small shapes set, in this process.

One short run (4 steps of the tiny preset, batch 2, evaluation at the end, bfloat16 export) is shared by the
tests; the warm-start tests then load its outputs.
"""
import math
import os
import shutil

import numpy as np
import pytest
import yaml

import _trainer_helpers as helpers
import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
import tensorflow as tf
from maskrcnn_tfx import config as config_lib
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx.trainer import experiment as experiment_lib
from maskrcnn_tfx.trainer import model as model_lib
from maskrcnn_tfx.trainer import task as task_lib
from maskrcnn_tfx.trainer import train as train_lib

pytestmark = pytest.mark.slow

TRAIN_STEPS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return helpers.shapes_data(str(tmp_path_factory.getbasetemp() / "trainer_data"))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """run_fn with FnArgs as the TFX Trainer executor builds them (no Transform: plain converter records)."""
    from tfx.components.trainer.fn_args_utils import FnArgs  # pylint: disable=g-import-not-at-top

    root = tmp_path_factory.mktemp("tfx_trainer")
    fn_args = FnArgs(
        train_files=[data.train], eval_files=[data.eval],
        # The whole eval split (4 images, 2 batches), once at the end.
        # The serving precision comes from custom_config too: bfloat16 here, so the test sees it reach the export.
        custom_config={"trainer": {**helpers.quick_overrides(train_steps=TRAIN_STEPS, eval_steps=-1),
                                   "export": {"precision": "bfloat16"}},
                       "label_map_path": data.label_map},
        # TFX's TrainArgs may repeat the trainer section's steps (a different count is an error:
        # tests/test_pipeline_runners.py).
        transform_output=None, train_steps=TRAIN_STEPS, eval_steps=None,
        model_run_dir=str(root / "model_run"), serving_model_dir=str(root / "serving"), base_model=None)
    task_lib.run_fn(fn_args)
    return fn_args


def _trainer(run) -> config_lib.TrainerConfig:
    return config_lib.from_trainer_custom_config(run.custom_config)[0]


def test_checkpoints_every_interval_and_run_records(run):
    assert helpers.checkpoint_steps(run.model_run_dir) == [2, 4]
    assert train_lib.latest_step(run.model_run_dir) == TRAIN_STEPS
    # The run's whole trainer section, which reads back as it was.
    with open(os.path.join(run.model_run_dir, train_lib.CONFIG_FILE), encoding="utf-8") as f:
        saved = config_lib.trainer_from_dict(yaml.safe_load(f))
    assert saved == _trainer(run)
    assert saved.train.train_steps == TRAIN_STEPS and saved.model.backbone == "resnet18"
    assert os.path.exists(os.path.join(run.model_run_dir, "params.yaml"))  # Model Garden's experiment.


def test_tensorboard_has_every_loss_the_learning_rate_and_eval_metrics(run):
    train = helpers.read_scalars(os.path.join(run.model_run_dir, "train"))
    for tag in helpers.TRAIN_TAGS:
        assert tag in train, f"missing train summary {tag!r} (have {sorted(train)})"
        assert [step for step, _ in train[tag]] == [2, 4]
        assert all(math.isfinite(value) for _, value in train[tag]), (tag, train[tag])
    assert all(value > 0 for _, value in train["total_loss"])
    # The schedule as configured: a warm-up of 2 steps to the base rate, then a cosine decay that reaches
    # base * alpha at the last step.
    schedule = _trainer(run).train.learning_rate
    assert schedule.schedule == "cosine" and schedule.warmup_steps == 2
    learning_rate = dict(train["learning_rate"])
    assert learning_rate[2] == pytest.approx(schedule.base)
    assert learning_rate[4] == pytest.approx(schedule.base * schedule.cosine_alpha)

    validation = helpers.read_scalars(os.path.join(run.model_run_dir, "validation"))
    for tag in helpers.EVAL_TAGS:
        assert tag in validation, f"missing eval summary {tag!r} (have {sorted(validation)})"
        assert [step for step, _ in validation[tag]] == [TRAIN_STEPS]
        assert -1.0 <= validation[tag][0][1] <= 1.0


def test_serving_model_is_exported_in_the_configured_precision(run):
    assert os.path.exists(os.path.join(run.serving_model_dir, "saved_model.pb"))
    assert os.path.exists(os.path.join(run.serving_model_dir, "variables", "variables.index"))
    # custom_config's export.precision reached the export: the served convolutions compute in bfloat16.
    assert "bfloat16" in helpers.saved_model_op_dtypes(run.serving_model_dir, "Conv2D")


def test_trained_export_answers_both_signatures_on_jpeg_and_png(run, data):
    """The model run_fn trained and exported, reloaded: real shapes images as PNG and JPEG bytes, and as
    tf.Examples; every output's shape, dtype and range."""
    from maskrcnn_tfx import example_format as ef  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.trainer import export as export_lib  # pylint: disable=g-import-not-at-top

    serialized = [r.numpy() for r in tf.data.TFRecordDataset(tf.io.gfile.glob(data.eval))][:2]
    png = ef.from_tf_example(serialized[0]).encoded
    assert png.startswith(b"\x89PNG")
    jpeg = tf.io.encode_jpeg(tf.io.decode_png(ef.from_tf_example(serialized[1]).encoded, channels=3)).numpy()
    loaded = tf.saved_model.load(run.serving_model_dir)
    by_images = loaded.signatures[export_lib.SERVING_SIGNATURE](**{export_lib.IMAGES_INPUT: tf.constant([png, jpeg])})
    by_examples = loaded.signatures[export_lib.TF_EXAMPLE_SIGNATURE](
        **{export_lib.EXAMPLES_INPUT: tf.constant(serialized)})
    label_ids = set(LabelMap.load(data.label_map).ids)
    max_detections = _trainer(run).model.max_num_detections
    for outputs in (by_images, by_examples):
        assert set(outputs) == set(export_lib.OUTPUT_KEYS)
        out = {k: v.numpy() for k, v in outputs.items()}
        assert out["detection_boxes"].shape == (2, max_detections, 4) and out["detection_boxes"].dtype == np.float32
        assert out["detection_scores"].shape == (2, max_detections) and out["detection_scores"].dtype == np.float32
        assert out["detection_classes"].dtype == np.int32 and out["num_detections"].dtype == np.int32
        masks = out["detection_masks"]
        assert masks.shape[:2] == (2, max_detections) and masks.shape[2] == masks.shape[3] and masks.dtype == np.float32
        np.testing.assert_array_equal(out["image_size"], [[128, 128], [128, 128]])
        for i in range(2):
            n = int(out["num_detections"][i])
            assert 0 <= n <= max_detections
            assert np.all((out["detection_boxes"][i, :n] >= 0) & (out["detection_boxes"][i, :n] <= 1))
            assert np.all((out["detection_scores"][i, :n] >= 0) & (out["detection_scores"][i, :n] <= 1))
            assert set(out["detection_classes"][i, :n].tolist()) <= label_ids
            assert np.all((masks[i, :n] >= 0) & (masks[i, :n] <= 1))
    # The tf.Example path reads the same PNG as the image path's first image.
    np.testing.assert_allclose(by_examples["detection_scores"].numpy()[0], by_images["detection_scores"].numpy()[0],
                               atol=1e-5)


@pytest.fixture(scope="module")
def fresh_model(run, data):
    config = _trainer(run)
    return model_lib.build_model(experiment_lib.to_experiment_config(config, LabelMap.load(data.label_map)))


def test_the_model_has_the_variables_of_model_gardens_build(run, data, fresh_model):
    """build_model creates the variables with one eager call; Model Garden's (a symbolic call) makes the same."""
    from official.vision.tasks import maskrcnn as mg_maskrcnn_task  # pylint: disable=g-import-not-at-top

    config = _trainer(run)
    reference = mg_maskrcnn_task.MaskRCNNTask(
        experiment_lib.to_experiment_config(config, LabelMap.load(data.label_map)).task).build_model()

    def described(model):
        return [(name, tuple(v.shape), v.dtype, v.trainable) for name, v in model_lib.model_parts_variables(model)]

    assert described(fresh_model) == described(reference)
    assert len(fresh_model.variables) == len(reference.variables) > 100
    assert len(fresh_model.trainable_variables) == len(reference.trainable_variables)


def _weights(model):
    return {name: variable.numpy().copy() for name, variable in model_lib.model_parts_variables(model)}


def test_restore_weights_finds_the_model_in_saved_models_and_checkpoints(run, fresh_model):
    initial = _weights(fresh_model)
    model_lib.restore_weights(fresh_model, run.serving_model_dir)
    from_serving = _weights(fresh_model)
    changed = [name for name in initial if not np.array_equal(initial[name], from_serving[name])]
    assert len(changed) > 0.9 * len(initial)  # Random initialization replaced (a few zero biases may match).
    model_lib.restore_weights(fresh_model, run.model_run_dir)  # The latest checkpoint: the same step-4 model.
    from_checkpoint = _weights(fresh_model)
    for name in initial:
        np.testing.assert_array_equal(from_checkpoint[name], from_serving[name], err_msg=name)


def test_restore_weights_rejects_what_does_not_fit(run, data, fresh_model, tmp_path):
    module = tf.Module()
    module.dense = tf.Variable(tf.zeros([3, 3]))
    tf.train.Checkpoint(other=module).write(str(tmp_path / "other"))
    with pytest.raises(model_lib.WeightsError, match="holds no Mask R-CNN"):
        model_lib.restore_weights(fresh_model, str(tmp_path / "other"))
    with pytest.raises(model_lib.WeightsError, match="neither a SavedModel nor a checkpoint"):
        model_lib.restore_weights(fresh_model, str(tmp_path))
    # A label map with more classes: the class and box heads have other shapes.
    config = _trainer(run)
    more_classes = LabelMap.from_pairs([(i, f"c{i}") for i in range(1, 6)])
    other = model_lib.build_model(experiment_lib.to_experiment_config(config, more_classes))
    with pytest.raises(model_lib.WeightsError, match="do not fit this model"):
        model_lib.restore_weights(other, run.serving_model_dir)


def _start_without_training(monkeypatch, data, model_dir, base_model):
    """train() up to the point where orbit restores model_dir's checkpoint or initializes the model (warm start
    included), without running the training loop: what a run starts from."""
    from official.core import train_lib as mg_train_lib  # pylint: disable=g-import-not-at-top

    monkeypatch.setattr(mg_train_lib.OrbitExperimentRunner, "run", lambda runner: (runner.trainer.model, {}))
    return train_lib.train(helpers.quick_overrides(), data.train, None, model_dir, label_map=data.label_map,
                           base_model=base_model)


def _trainable(model):
    return {name: v.numpy() for name, v in model_lib.model_parts_variables(model) if v.trainable}


def _assert_same(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_fresh_run_warm_starts_from_the_base_model(run, data, fresh_model, monkeypatch, tmp_path):
    """TFX's base_model (the previous serving model) initializes a run whose model dir is empty."""
    result = _start_without_training(monkeypatch, data, str(tmp_path / "fresh"), run.serving_model_dir)
    model_lib.restore_weights(fresh_model, run.serving_model_dir)
    _assert_same(_trainable(result.model), _trainable(fresh_model))


def test_resuming_run_ignores_the_base_model(run, data, fresh_model, monkeypatch, tmp_path):
    """A run with a checkpoint of its own continues from it; the base model is only for fresh runs."""
    model_dir = tmp_path / "resumed"
    model_dir.mkdir()
    for name in os.listdir(run.model_run_dir):
        if name.startswith("ckpt-2."):
            shutil.copy(os.path.join(run.model_run_dir, name), model_dir / name)
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n')
    result = _start_without_training(monkeypatch, data, str(model_dir), run.serving_model_dir)
    assert result.global_step == 2
    model_lib.restore_weights(fresh_model, str(model_dir / "ckpt-2"))
    at_step_2 = _trainable(fresh_model)
    _assert_same(_trainable(result.model), at_step_2)
    model_lib.restore_weights(fresh_model, run.serving_model_dir)
    assert any(not np.array_equal(at_step_2[k], v) for k, v in _trainable(fresh_model).items())
