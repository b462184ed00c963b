"""The trainer section: presets, changes over them, validation, the mapping onto Model Garden, strategies."""
import json
import math

import pytest
import yaml

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
from maskrcnn_tfx import config as config_lib
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx.trainer import experiment as experiment_lib
from maskrcnn_tfx.trainer import strategy as strategy_lib

SHAPES = LabelMap.from_pairs([(1, "square"), (2, "circle"), (3, "triangle")])
# COCO-like: ids with gaps, largest 90.
COCO_LIKE = LabelMap.from_pairs([(i, f"c{i}") for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69,
                                                                                   71, 83)])


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _problems(excinfo) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------------------------------------- presets

def test_presets_are_listed_and_valid():
    assert {"tiny", "coco_r50fpn"} <= set(config_lib.preset_names())
    for name in config_lib.preset_names():
        config_lib.load_trainer_config(name)  # Validates.


def test_tiny_preset_is_the_slim_cpu_model():
    config = config_lib.load_trainer_config("tiny")
    m = config.model
    assert m.backbone in ("resnet18", "resnet34") or m.backbone.startswith("mobilenet")
    assert m.input_size in (128, 256)
    assert (m.fpn_filters, m.rpn_head_filters) == (64, 64)
    assert (m.detection_head_convs, m.detection_head_fcs, m.detection_head_fc_dims) == (0, 2, 256)
    assert (m.mask_head_convs, m.mask_head_filters) == (2, 64)
    assert (m.num_sampled_rois, m.num_sampled_masks) == (64, 16)
    assert (m.num_proposals, m.test_num_proposals) == (200, 100)
    assert m.sync_batch_norm is False
    assert config.train.mixed_precision == "float32" and config.train.enable_xla is False
    assert config.train.init_checkpoint == ""  # Trains from scratch, offline.


def test_coco_preset_reproduces_model_gardens_published_recipe():
    from official.core import exp_factory  # pylint: disable=g-import-not-at-top

    ours = experiment_lib.to_experiment_config(config_lib.load_trainer_config("coco_r50fpn"), COCO_LIKE)
    published = exp_factory.get_exp_config("maskrcnn_resnetfpn_coco")
    ours_flat, published_flat = _flatten(ours.as_dict()), _flatten(published.as_dict())
    # Data locations are the run's own; the COCO JSON is rebuilt from the eval split by Model Garden.
    expected_differences = {"task.train_data.input_path", "task.validation_data.input_path",
                            "task.annotation_file"}
    differences = {k for k in set(ours_flat) | set(published_flat) if ours_flat.get(k) != published_flat.get(k)}
    assert differences == expected_differences
    assert ours.task.model.num_classes == 91
    assert ours.trainer.train_steps == 22500 and ours.task.train_data.global_batch_size == 64


# ---------------------------------------------------------------------------------------- overrides and YAML

def test_dict_overrides_apply_in_order_over_the_preset():
    config = config_lib.load_trainer_config("tiny", [{"model": {"input_size": 256}, "train": {"batch_size": 8}},
                                             {"train": {"batch_size": 16}}])
    assert config.model.input_size == 256
    assert config.train.batch_size == 16
    assert config.model.backbone == config_lib.load_trainer_config("tiny").model.backbone  # Untouched fields stay.


def test_preset_can_be_named_inside_the_override_dict():
    config = config_lib.load_trainer_config(changes={"preset": "tiny", "train": {"train_steps": 7}})
    assert config.train.train_steps == 7 and config.model.fpn_filters == 64
    with pytest.raises(config_lib.ConfigError, match="unknown preset 'nope'"):
        config_lib.load_trainer_config(changes={"preset": "nope"})


def test_yaml_file_as_preset_and_numbers_yaml_reads_as_strings(tmp_path):
    path = tmp_path / "mine.yaml"
    # PyYAML reads 1e-4 (no dot) as a string; the configuration still takes it as a number.
    path.write_text("model:\n  backbone: resnet34\ntrain:\n  learning_rate:\n    base: 1e-4\n")
    config = config_lib.load_trainer_config(str(path), {"train": {"batch_size": 2}})
    assert config.model.backbone == "resnet34"
    assert config.train.learning_rate.base == pytest.approx(1e-4)
    assert config.train.batch_size == 2


def test_config_round_trips_through_yaml(tmp_path):
    config = config_lib.load_trainer_config("tiny", {"runtime": {"strategy": "mirrored", "devices": ["/cpu:0"]}})
    path = tmp_path / "saved.yaml"
    path.write_text(config_lib.to_yaml(config))
    # The whole section, preset name included, reads back as it was.
    assert config_lib.trainer_from_dict(yaml.safe_load(path.read_text())) == config
    # A preset file is data without a preset of its own: presets do not chain.
    with pytest.raises(config_lib.ConfigError, match="presets do not chain"):
        config_lib.load_trainer_config(str(path))


def test_a_resolved_section_is_read_without_its_preset_file(tmp_path, monkeypatch):
    """The Trainer's pod reads the compiled custom_config; a preset file of the compiling machine is not there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("train: {batch_size: 3}\n")
    config = config_lib.load_trainer_config("mine.yaml")
    assert config.preset == str(tmp_path / "mine.yaml") and config.train.batch_size == 3  # recorded absolute
    custom = {"trainer": config_lib.to_dict(config), "label_map_path": "/data/label_map.json"}
    (tmp_path / "mine.yaml").unlink()
    assert config_lib.from_trainer_custom_config(custom)[0] == config
    # An incomplete section still needs its preset, and says which one is missing.
    with pytest.raises(config_lib.ConfigError, match="mine.yaml"):
        config_lib.trainer_from_dict({"preset": str(tmp_path / "mine.yaml"), "train": {"batch_size": 2}})


def test_unknown_field_is_named_with_its_path():
    with pytest.raises(config_lib.ConfigError, match=r"unknown field 'train.optimizer.lr'"):
        config_lib.load_trainer_config("tiny", {"train": {"optimizer": {"lr": 0.1}}})


def test_wrong_type_is_named():
    with pytest.raises(config_lib.ConfigError, match=r"model.input_size must be an integer, got 'big'"):
        config_lib.load_trainer_config("tiny", {"model": {"input_size": "big"}})
    with pytest.raises(config_lib.ConfigError, match=r"train.freeze_backbone must be true or false"):
        config_lib.load_trainer_config("tiny", {"train": {"freeze_backbone": "yes"}})


# ------------------------------------------------------------------------------------------------ validation

def test_input_size_must_be_divisible_by_the_coarsest_level():
    with pytest.raises(config_lib.ConfigError) as excinfo:
        config_lib.load_trainer_config("tiny", {"model": {"input_size": 100, "max_level": 5}})
    assert "model.input_size (100) must be a positive multiple of 2**max_level = 32" in _problems(excinfo)
    config_lib.load_trainer_config("tiny", {"model": {"input_size": 96, "max_level": 5}})  # 96 = 3 * 32 is fine.


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(config_lib.ConfigError, match=r"model.backbone must be one of resnet18, .*, not 'resnet9000'"):
        config_lib.load_trainer_config("tiny", {"model": {"backbone": "resnet9000"}})


def test_bad_strategy_and_tpu_without_address():
    with pytest.raises(config_lib.ConfigError, match=r"runtime.strategy must be one of .*, not 'parameter_server'"):
        config_lib.load_trainer_config("tiny", {"runtime": {"strategy": "parameter_server"}})
    with pytest.raises(config_lib.ConfigError, match=r"runtime.tpu .* is required"):
        config_lib.load_trainer_config("tiny", {"runtime": {"strategy": "tpu"}})
    with pytest.raises(config_lib.ConfigError, match=r"runtime.devices is only used by runtime.strategy mirrored"):
        config_lib.load_trainer_config("tiny", {"runtime": {"strategy": "one_device", "devices": ["/gpu:0"]}})


def test_every_problem_is_reported_at_once():
    with pytest.raises(config_lib.ConfigError) as excinfo:
        config_lib.load_trainer_config("tiny", {
            "model": {"backbone": "vgg16"},
            "train": {"optimizer": {"type": "lion"}, "mixed_precision": "float8", "checkpoint_interval": 30,
                      "summary_interval": 20, "init_checkpoint_modules": "decoder",
                      "learning_rate": {"schedule": "stepwise", "boundaries": [200, 100]}}})
    message = _problems(excinfo)
    for expected in ("not 'vgg16'", "not 'lion'", "not 'float8'",
                     "train.checkpoint_interval (30) must be a multiple of train.summary_interval (20)",
                     "train.init_checkpoint_modules must be one of", "boundaries must be increasing"):
        assert expected in message


def test_batch_size_must_split_over_replicas():
    config = config_lib.load_trainer_config("tiny", {"train": {"batch_size": 6, "eval_batch_size": 4}})
    config_lib.check_replicas(config, 2)
    with pytest.raises(config_lib.ConfigError, match=r"train.batch_size \(6\) must be divisible .* \(4\)"):
        config_lib.check_replicas(config, 4)


# ------------------------------------------------------------------------------------ Model Garden mapping

def test_mapping_onto_model_garden():
    config = config_lib.load_trainer_config("tiny", {"model": {"backbone": "mobilenet_v3_small", "min_level": 3},
                                             "train": {"freeze_backbone": True, "mixed_precision": "mixed_float16",
                                                       "init_checkpoint": "/ckpt", "init_checkpoint_modules": "all"}})
    exp = experiment_lib.to_experiment_config(config, SHAPES, train_input=["a/*", "b/*"], eval_input="c/*",
                                          file_type="tfrecord_compressed")
    model = exp.task.model
    assert model.num_classes == SHAPES.num_classes == 4  # Largest id + background.
    assert model.input_size == [128, 128, 3]
    assert (model.min_level, model.max_level) == (3, 5)
    assert model.backbone.type == "mobilenet" and model.backbone.mobilenet.model_id == "MobileNetV3Small"
    assert model.decoder.fpn.num_filters == 64 and model.norm_activation.use_sync_bn is False
    assert model.detection_head.num_convs == 0 and model.detection_head.fc_dims == 256
    assert model.mask_head.num_convs == 2 and model.mask_sampler.num_sampled_masks == 16
    assert model.roi_generator.num_proposals == 200 and model.roi_generator.test_num_proposals == 100
    assert exp.task.train_data.input_path == ["a/*", "b/*"] and exp.task.validation_data.input_path == "c/*"
    assert exp.task.train_data.file_type == exp.task.validation_data.file_type == "tfrecord_compressed"
    assert exp.task.train_data.dtype == "float16" and exp.runtime.mixed_precision_dtype == "float16"
    assert exp.runtime.loss_scale == "dynamic"
    assert exp.task.freeze_backbone is True
    assert (exp.task.init_checkpoint, exp.task.init_checkpoint_modules) == ("/ckpt", "all")
    # One orbit loop per summary; checkpoints on loop boundaries.
    assert exp.trainer.steps_per_loop == exp.trainer.summary_interval == config.train.summary_interval
    assert exp.trainer.checkpoint_interval == config.train.checkpoint_interval


def test_resnet_depths_map_to_model_ids():
    for name, depth in (("resnet18", 18), ("resnet34", 34), ("resnet50", 50), ("resnet101", 101)):
        exp = experiment_lib.to_experiment_config(
            config_lib.load_trainer_config("tiny", {"model": {"backbone": name}}), SHAPES)
        assert exp.task.model.backbone.type == "resnet" and exp.task.model.backbone.resnet.model_id == depth


def _learning_rate_fn(overrides):
    from official.modeling import optimization  # pylint: disable=g-import-not-at-top

    exp = experiment_lib.to_experiment_config(config_lib.load_trainer_config("tiny", overrides), SHAPES)
    schedule = optimization.OptimizerFactory(exp.trainer.optimizer_config).build_learning_rate()
    return lambda step: float(schedule(step)) if callable(schedule) else float(schedule)


def test_learning_rate_schedules_with_warmup():
    stepwise = _learning_rate_fn({"train": {"train_steps": 100, "learning_rate": {
        "schedule": "stepwise", "base": 0.1, "boundaries": [50, 80], "decay_factor": 0.1, "warmup_steps": 10,
        "warmup_start": 0.01}}})
    assert stepwise(0) == pytest.approx(0.01)
    assert stepwise(5) == pytest.approx(0.055)  # Linear warm-up.
    assert stepwise(10) == pytest.approx(0.1)
    assert stepwise(60) == pytest.approx(0.01)
    assert stepwise(90) == pytest.approx(0.001)

    cosine = _learning_rate_fn({"train": {"train_steps": 110, "learning_rate": {
        "schedule": "cosine", "base": 0.2, "cosine_alpha": 0.1, "warmup_steps": 10, "warmup_start": 0.0}}})
    assert cosine(10) == pytest.approx(0.2)  # Decay starts after the warm-up ...
    assert cosine(60) == pytest.approx(0.2 * (0.1 + 0.9 * 0.5), rel=1e-4)  # ... half way ...
    assert cosine(110) == pytest.approx(0.02, rel=1e-4)  # ... and ends at base * alpha.

    constant = _learning_rate_fn({"train": {"learning_rate": {"schedule": "constant", "base": 0.3,
                                                               "warmup_steps": 0}}})
    assert constant(0) == constant(1000) == pytest.approx(0.3)


@pytest.mark.parametrize("optimizer, expected_class", [("sgd", "SGD"), ("adam", "Adam"),
                                                        ("adamw", "AdamWeightDecay")])
def test_optimizers_are_built_by_model_garden(optimizer, expected_class):
    from official.modeling import optimization  # pylint: disable=g-import-not-at-top

    config = config_lib.load_trainer_config("tiny", {"train": {"optimizer": {"type": optimizer, "weight_decay": 0.01}}})
    exp = experiment_lib.to_experiment_config(config, SHAPES)
    factory = optimization.OptimizerFactory(exp.trainer.optimizer_config)
    built = factory.build_optimizer(factory.build_learning_rate())
    assert type(built).__name__ == expected_class
    # Weight decay: L2 regularization of the weights, or AdamW's own decoupled decay.
    if optimizer == "adamw":
        assert exp.task.losses.l2_weight_decay == 0.0
        assert exp.trainer.optimizer_config.optimizer.adamw.weight_decay_rate == 0.01
    else:
        assert exp.task.losses.l2_weight_decay == 0.01


def test_num_classes_follows_the_label_map():
    exp = experiment_lib.to_experiment_config(config_lib.load_trainer_config("tiny"),
                                              LabelMap.from_pairs([(1, "a"), (7, "b")]))
    assert exp.task.model.num_classes == 8  # Ids are the data set's own: 7 needs 8 outputs.
    with pytest.raises(config_lib.ConfigError, match="no class"):
        experiment_lib.to_experiment_config(config_lib.load_trainer_config("tiny"), LabelMap.from_pairs([]))


# -------------------------------------------------------------------------------------- TFX custom_config

def _custom_config(**trainer):
    return {"trainer": dict(trainer, preset="tiny"), "label_map_path": "/data/label_map.json"}


def test_custom_config_ignores_the_cloud_extensions_keys():
    config, label_map_path = config_lib.from_trainer_custom_config(
        dict(_custom_config(train={"train_steps": 3}), ai_platform_training_args={"project": "p"},
             ai_platform_enable_vertex=True))
    assert config.train.train_steps == 3 and label_map_path == "/data/label_map.json"
    with pytest.raises(config_lib.ConfigError, match="unknown field 'trainer.trian'"):
        config_lib.from_trainer_custom_config(_custom_config(trian={}))


def test_export_precision_is_configured_from_yaml_and_custom_config(tmp_path):
    for name in config_lib.preset_names():
        export = config_lib.load_trainer_config(name).export
        assert (export.precision, export.jit_compile) == ("float32", False)
    from_custom_config, _ = config_lib.from_trainer_custom_config(
        _custom_config(export={"precision": "bfloat16", "jit_compile": True}))
    assert (from_custom_config.export.precision, from_custom_config.export.jit_compile) == ("bfloat16", True)
    path = tmp_path / "serve_bf16.yaml"
    path.write_text("export:\n  precision: bfloat16\n")
    assert config_lib.load_trainer_config(str(path)).export.precision == "bfloat16"
    with pytest.raises(config_lib.ConfigError,
                       match=r"export.precision must be one of float32, bfloat16, not 'float16'"):
        config_lib.load_trainer_config("tiny", {"export": {"precision": "float16"}})
    with pytest.raises(config_lib.ConfigError, match=r"export.jit_compile must be true or false"):
        config_lib.load_trainer_config("tiny", {"export": {"jit_compile": "fast"}})


# ------------------------------------------------------------------------------------------------ strategies

def _runtime(**values):
    return config_lib.load_trainer_config("tiny", {"runtime": values}).runtime


def test_auto_strategy_choice(monkeypatch):
    monkeypatch.delenv(strategy_lib.TF_CONFIG, raising=False)
    assert strategy_lib.resolve_kind(_runtime(), num_visible_gpus=0) == "one_device"
    assert strategy_lib.resolve_kind(_runtime(), num_visible_gpus=1) == "one_device"
    assert strategy_lib.resolve_kind(_runtime(), num_visible_gpus=4) == "mirrored"
    # num_gpus: -1 (the default) every visible GPU, 0 none, N that many.
    assert strategy_lib.resolve_kind(_runtime(num_gpus=0), num_visible_gpus=4) == "one_device"
    assert strategy_lib.resolve_kind(_runtime(num_gpus=1), num_visible_gpus=4) == "one_device"
    assert strategy_lib.resolve_kind(_runtime(num_gpus=2), num_visible_gpus=4) == "mirrored"
    with pytest.raises(config_lib.ConfigError, match="runtime.num_gpus must be -1"):
        _runtime(num_gpus=-2)
    monkeypatch.setenv(strategy_lib.TF_CONFIG, json.dumps(
        {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}))
    assert strategy_lib.resolve_kind(_runtime(), num_visible_gpus=0) == "multi_worker_mirrored"
    assert strategy_lib.resolve_kind(_runtime(strategy="one_device"), num_visible_gpus=0) == "one_device"


def test_one_device_and_mirrored_strategies_on_cpu():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    one = strategy_lib.build_strategy(_runtime(strategy="one_device"))
    assert isinstance(one, tf.distribute.OneDeviceStrategy) and one.num_replicas_in_sync == 1
    mirrored = strategy_lib.build_strategy(_runtime(strategy="mirrored", devices=["/cpu:0"]))
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert strategy_lib.is_chief(mirrored)


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv(strategy_lib.TF_CONFIG, raising=False)
    with pytest.raises(config_lib.ConfigError, match="TF_CONFIG"):
        strategy_lib.build_strategy(_runtime(strategy="multi_worker_mirrored"))
    monkeypatch.setenv(strategy_lib.TF_CONFIG, "{not json")
    with pytest.raises(config_lib.ConfigError, match="not valid JSON"):
        strategy_lib.build_strategy(_runtime(strategy="multi_worker_mirrored"))
    monkeypatch.setenv(strategy_lib.TF_CONFIG, json.dumps({"cluster": {"worker": ["a:1"]}}))
    with pytest.raises(config_lib.ConfigError, match="must define"):
        strategy_lib.build_strategy(_runtime(strategy="multi_worker_mirrored"))


def test_learning_rate_values_are_the_published_ones():
    lr = config_lib.load_trainer_config("coco_r50fpn").train.learning_rate
    assert experiment_lib.learning_rate_values(lr) == [0.12, 0.012, 0.0012]
    assert all(math.isfinite(v) for v in experiment_lib.learning_rate_values(lr))
