"""Fine-tuning from a checkpoint the product's Trainer wrote, into a model with another label map.

A tiny model is trained for 2 steps on the shapes set (3 classes, ids 1-3: 4 class outputs); a second shapes
set, relabelled to 2 classes ("round", "polygon": 3 class outputs), starts a fresh run from that checkpoint in
each ``train.init_checkpoint_modules`` mode (up to the first training step: what training starts from). The
loaded variables must equal the checkpoint's, the others must not, and the class layers must have the new
class count. Checkpoints that do not fit must fail naming the checkpoint and the variables.
"""
import json
import os
import re

import numpy as np
import pytest

import _trainer_helpers as helpers
import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
import tensorflow as tf
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx import config as config_lib
from maskrcnn_tfx.trainer import experiment as experiment_lib
from maskrcnn_tfx.trainer import model as model_lib
from maskrcnn_tfx.trainer import train as train_lib

pytestmark = pytest.mark.slow

IMAGE_SIZE = 64
# Shapes' classes (square 1, circle 2, triangle 3) -> the fine-tuning set's.
RELABEL = {1: (2, "polygon"), 2: (1, "round"), 3: (2, "polygon")}
NEW_NUM_CLASSES = 3  # ids 1 and 2, plus the background


def _overrides(**train):
    return {"preset": "finetune", "model": {"input_size": IMAGE_SIZE},
            "data": {"shuffle_buffer_size": 8},
            "train": {"batch_size": 2, "eval_batch_size": 2, "train_steps": 2, "summary_interval": 2,
                      "checkpoint_interval": 2, "eval_steps": 0, "learning_rate": {"warmup_steps": 1}, **train}}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The model dir of a 2-step run of the Trainer's training function on the 3-class shapes set."""
    data = helpers.shapes_data(str(tmp_path_factory.getbasetemp() / "trainer_data"), num_images=8,
                               image_size=IMAGE_SIZE)
    model_dir = str(tmp_path_factory.mktemp("pretrained") / "model_run")
    config = _overrides()
    config["preset"] = "tiny"
    train_lib.train(config, data.train, None, model_dir, label_map=data.label_map)
    assert helpers.checkpoint_steps(model_dir) == [2]
    return model_dir, data.label_map


@pytest.fixture(scope="module")
def relabelled(tmp_path_factory):
    """A shapes set of other images with 2 classes: (train file pattern, label map path)."""
    from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.data.shapes import generate_shapes  # pylint: disable=g-import-not-at-top

    root = tmp_path_factory.mktemp("relabelled")
    annotations = generate_shapes(str(root / "raw"), num_images=4, image_size=IMAGE_SIZE, seed=11)
    with open(annotations, encoding="utf-8") as f:
        coco = json.load(f)
    for annotation in coco["annotations"]:
        annotation["category_id"] = RELABEL[annotation["category_id"]][0]
    coco["categories"] = [{"id": i, "name": n} for i, n in sorted(set(RELABEL.values()))]
    relabelled_file = str(root / "relabelled.json")
    with open(relabelled_file, "w", encoding="utf-8") as f:
        json.dump(coco, f)
    report = convert_coco(relabelled_file, os.path.join(os.path.dirname(annotations), "images"),
                          str(root / "tfrecords"), progress=False)
    assert LabelMap.load(report.label_map_file).num_classes == NEW_NUM_CLASSES
    return report.file_pattern("train"), report.label_map_file


@pytest.fixture(scope="module")
def checkpoint_weights(pretrained):
    """{name: value} of the pretrained checkpoint, read through a model with its own (3) classes."""
    model_dir, label_map = pretrained
    config = config_lib.load_trainer_config(changes=_overrides())
    model = model_lib.build_model(experiment_lib.to_experiment_config(config, LabelMap.load(label_map)))
    model_lib.restore_weights(model, model_dir)
    return {name: v.numpy().copy() for name, v in model_lib.model_parts_variables(model)}


def _start_fine_tuning(monkeypatch, relabelled, model_dir, **train):
    """train() on the relabelled set up to where orbit initializes the fresh model, without training."""
    from official.core import train_lib as mg_train_lib  # pylint: disable=g-import-not-at-top

    monkeypatch.setattr(mg_train_lib.OrbitExperimentRunner, "run", lambda runner: (runner.trainer.model, {}))
    pattern, label_map = relabelled
    return train_lib.train(_overrides(**train), pattern, None, model_dir, label_map=label_map).model


LOADED_PARTS = {"backbone": ("backbone",), "backbone_fpn": ("backbone", "decoder"),
                "all_but_class_layers": model_lib.MODEL_PARTS}


@pytest.mark.parametrize("mode", list(LOADED_PARTS))
def test_each_mode_loads_its_parts_and_leaves_the_rest(mode, pretrained, relabelled, checkpoint_weights,
                                                      monkeypatch, tmp_path):
    model_dir, _ = pretrained
    # The Trainer's model dir: its latest checkpoint.
    model = _start_fine_tuning(monkeypatch, relabelled, str(tmp_path / "finetune"), init_checkpoint=model_dir,
                               init_checkpoint_modules=mode)
    loaded, fresh, class_layers = [], [], []
    for name, variable in model_lib.model_parts_variables(model):
        value, saved = variable.numpy(), checkpoint_weights[name]
        if model_lib.is_class_layer_variable(variable):
            class_layers.append(variable)
            assert value.shape[-1] != saved.shape[-1], name  # Sized by the new label map.
        elif name.split("/", 1)[0] in LOADED_PARTS[mode]:
            np.testing.assert_array_equal(value, saved, err_msg=f"{name} was not loaded from the checkpoint")
            loaded.append(name)
        else:
            fresh.append(not np.array_equal(value, saved))
    assert loaded
    if mode == "all_but_class_layers":
        assert not fresh
    else:
        # Initialized afresh: different from the trained values (allowing for the odd untouched zero bias).
        assert len(fresh) > 20 and sum(fresh) > 0.9 * len(fresh), (sum(fresh), len(fresh))
    # The class logits, per-class boxes and per-class masks, all with the new class count.
    shapes = {v.name.split("/")[-2]: v.shape for v in class_layers if v.name.endswith("kernel:0")}
    assert shapes["detection-scores"][-1] == NEW_NUM_CLASSES
    assert shapes["detection-boxes"][-1] == 4 * NEW_NUM_CLASSES
    assert shapes["mask-logits"][-1] == NEW_NUM_CLASSES


def test_checkpoints_that_do_not_fit_fail_naming_checkpoint_and_variables(pretrained, relabelled, tmp_path):
    model_dir, label_map = pretrained
    prefix = tf.train.latest_checkpoint(model_dir)
    new_labels = LabelMap.load(relabelled[1])
    # Another FPN width: the FPN's and every head's input layers have other shapes.
    config = config_lib.load_trainer_config(changes=_overrides())
    config.model.fpn_filters = 32
    experiment = experiment_lib.to_experiment_config(config, new_labels)
    task = model_lib.build_task(experiment)
    model = task.build_model()
    with pytest.raises(model_lib.WeightsError, match=rf"(?s)checkpoint {re.escape(prefix)} do not fit .*incompatible "
                                                     rf"tensor with shape .* and name \S+"):
        model_lib.restore_parts(model, model_dir, ("backbone", "decoder"))
    with pytest.raises(model_lib.WeightsError, match=rf"(?s)all but the class layers: .*{re.escape(prefix)}.*do not "
                                                     rf"fit.* name \S+"):
        model_lib.restore_all_but_class_layers(model, model_dir, task.build_model_with_classes)
    # "all": the folder and the checkpoint read from it are both named.
    with pytest.raises(model_lib.WeightsError, match=rf"(?s){re.escape(model_dir)} \(checkpoint {re.escape(prefix)}\) "
                                                     rf"do not fit .* name \S+"):
        model_lib.restore_weights(model, model_dir)
    # A checkpoint of the backbone alone has no FPN (missing variables) and is no whole Mask R-CNN.
    full = config_lib.load_trainer_config(changes=_overrides())
    source = model_lib.build_model(experiment_lib.to_experiment_config(full, LabelMap.load(label_map)))
    backbone_only = str(tmp_path / "backbone" / "ckpt-1")
    tf.train.Checkpoint(backbone=source.backbone).write(backbone_only)
    with pytest.raises(model_lib.WeightsError, match=rf"{re.escape(backbone_only)} holds no backbone and decoder"):
        model_lib.restore_parts(source, backbone_only, ("backbone", "decoder"))
    with pytest.raises(model_lib.WeightsError, match=rf"{re.escape(backbone_only)} holds no Mask R-CNN model"):
        model_lib.restore_all_but_class_layers(source, backbone_only, task.build_model_with_classes)
    model_lib.restore_parts(source, backbone_only, ("backbone",))  # What it does hold loads.
    # A deeper backbone misses variables the checkpoint does not have.
    deeper = config_lib.load_trainer_config(changes=_overrides())
    deeper.model.backbone = "resnet34"
    other = model_lib.build_model(experiment_lib.to_experiment_config(deeper, LabelMap.load(label_map)))
    with pytest.raises(model_lib.WeightsError, match=rf"(?s)backbone weights of the checkpoint "
                                                     rf"{re.escape(backbone_only)} do not fit.*(shape|not bound)"):
        model_lib.restore_parts(other, backbone_only, ("backbone",))
