"""The Trainer's one typed configuration, and its mapping onto Model Garden's ``ExperimentConfig``.

Everything a user can tune about training, and the serving export's precision, lives in :class:`TrainerConfig`,
a Model Garden ``hyperparams.Config`` dataclass. A configuration is built from a preset (data:
``trainer/presets/<name>.yaml``) and overrides (a dict such as the TFX Trainer's ``custom_config``, or more
YAML), and validated once, where it enters, by
:func:`load_config`; every problem is reported at once, by its dotted name.

The model itself is not described here: :func:`to_experiment_config` maps these knobs onto Model Garden's own
``maskrcnn_resnetfpn_coco`` experiment, whose Mask R-CNN, input parser, losses and training loop are used
unchanged. Knobs that are not listed keep Model Garden's published values.

Example::

    config = load_config("tiny", {"train": {"train_steps": 200}, "model": {"input_size": 256}})
    experiment = to_experiment_config(config, LabelMap.load("label_map.json"))
"""
from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
import tensorflow as tf
import yaml
from official.core import config_definitions as mg_cfg
from official.core import exp_factory
from official.modeling import hyperparams
from official.vision.configs import backbones as mg_backbones

from maskrcnn_tfx.files import is_remote
from maskrcnn_tfx.images import DEFAULT_MAX_IMAGE_PIXELS
from maskrcnn_tfx.label_map import LabelMap

PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
# The Model Garden experiment every configuration starts from.
BASE_EXPERIMENT = "maskrcnn_resnetfpn_coco"

# Our backbone names -> (Model Garden backbone type, model_id).
BACKBONES: Dict[str, tuple] = {
    "resnet18": ("resnet", 18),
    "resnet34": ("resnet", 34),
    "resnet50": ("resnet", 50),
    "resnet101": ("resnet", 101),
    "mobilenet_v2": ("mobilenet", "MobileNetV2"),
    "mobilenet_v3_small": ("mobilenet", "MobileNetV3Small"),
    "mobilenet_v3_large": ("mobilenet", "MobileNetV3Large"),
}
# "auto": several GPUs -> mirrored over all of them, one GPU -> that GPU, none -> the CPU.
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "stepwise", "cosine")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
COMPRESSIONS = ("auto", "gzip", "none")
# Compute precisions of the exported serving model (trainer/export.py builds each one).
SERVING_PRECISIONS = ("float32", "bfloat16")
# What train.init_checkpoint loads (trainer/model.py's INIT_MODES): see TrainConfig.
INIT_CHECKPOINT_MODULES = ("backbone", "backbone_fpn", "all_but_class_layers", "all")
# Model Garden's FPN reads backbone levels up to 5 and adds coarser ones itself; level 1 is not produced.
MIN_FPN_LEVEL, MAX_FPN_LEVEL = 2, 7

# Our precision names -> (Model Garden runtime.mixed_precision_dtype, input pipeline image dtype).
_PRECISION_TO_MG = {
    "float32": ("float32", "float32"),
    "mixed_float16": ("float16", "float16"),
    "mixed_bfloat16": ("bfloat16", "bfloat16"),
}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every problem found."""


# pylint: disable=missing-class-docstring
@dataclasses.dataclass
class ModelConfig(hyperparams.Config):
    """Architecture. Defaults are Model Garden's R50-FPN Mask R-CNN; the head knobs slim it for small data."""

    backbone: str = "resnet50"
    # FPN levels: anchors and RoI pooling use levels min_level..max_level (stride 2**level).
    min_level: int = 2
    max_level: int = 6
    # Square network input, in pixels; images are resized (aspect ratio kept) and padded to it. Must be
    # divisible by 2**max_level so every FPN level has a whole number of cells.
    input_size: int = 1024
    # Anchors: base size in units of the level's stride, scales per octave, aspect ratios.
    anchor_size: float = 8.0
    anchor_num_scales: int = 1
    anchor_aspect_ratios: List[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])
    fpn_filters: int = 256
    rpn_head_convs: int = 1
    rpn_head_filters: int = 256
    detection_head_convs: int = 4
    detection_head_filters: int = 256
    detection_head_fcs: int = 1
    detection_head_fc_dims: int = 1024
    mask_head_convs: int = 4
    mask_head_filters: int = 256
    # RoIs sampled per image to train the box head, and how many of them also train the mask head.
    num_sampled_rois: int = 512
    num_sampled_masks: int = 128
    # Proposals kept after the RPN's NMS, in training and at inference.
    num_proposals: int = 1000
    test_num_proposals: int = 1000
    max_num_detections: int = 100
    # Synchronized batch norm across replicas (only matters with several replicas).
    sync_batch_norm: bool = True


@dataclasses.dataclass
class DataConfig(hyperparams.Config):
    """Input pipeline (Model Garden's decoder and Parser) and augmentation."""

    # TFRecord compression of the input files: "auto" reads the first bytes of the first file (TFX Transform
    # writes GZIP, the converter writes uncompressed records).
    compression: str = "auto"
    shuffle_buffer_size: int = 10000
    aug_rand_hflip: bool = True
    aug_scale_min: float = 0.8
    aug_scale_max: float = 1.25
    max_num_instances: int = 100
    # Mask targets are cropped to this size before the mask head's loss.
    mask_crop_size: int = 112


@dataclasses.dataclass
class LearningRateConfig(hyperparams.Config):
    """Schedule after a linear warm-up from ``warmup_start`` to ``base`` over ``warmup_steps``."""

    schedule: str = "stepwise"
    base: float = 0.12
    # stepwise: the rate is multiplied by decay_factor at each boundary (global steps, increasing).
    boundaries: List[int] = dataclasses.field(default_factory=lambda: [15000, 20000])
    decay_factor: float = 0.1
    # cosine: decays from base to base * cosine_alpha over cosine_decay_steps (0: the whole run).
    cosine_alpha: float = 0.0
    cosine_decay_steps: int = 0
    warmup_steps: int = 500
    warmup_start: float = 0.0067


@dataclasses.dataclass
class OptimizerConfig(hyperparams.Config):
    type: str = "sgd"
    # sgd only.
    momentum: float = 0.9
    # L2 regularization of the weights for sgd/adam; decoupled weight decay for adamw.
    weight_decay: float = 0.00004
    # Clips the global gradient norm; 0 turns clipping off.
    gradient_clip_norm: float = 0.0


@dataclasses.dataclass
class TrainConfig(hyperparams.Config):
    """The training run. ``train_steps`` and ``eval_steps`` are overridden by the TFX Trainer's own args."""

    # Global batch sizes (summed over replicas); must be divisible by the number of replicas.
    batch_size: int = 64
    eval_batch_size: int = 8
    train_steps: int = 22500
    # Evaluation batches per evaluation: -1 the whole eval split, 0 no evaluation.
    eval_steps: int = 625
    # Evaluates every eval_interval steps (0: only at the end of training).
    eval_interval: int = 500
    checkpoint_interval: int = 500
    # Training losses and the learning rate are written to TensorBoard every summary_interval steps. It is
    # also the length of one compiled training loop, so checkpoint_interval must be a multiple of it.
    summary_interval: int = 500
    max_checkpoints: int = 5
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    learning_rate: LearningRateConfig = dataclasses.field(default_factory=LearningRateConfig)
    mixed_precision: str = "float32"
    # XLA-compiles the training step (Model Garden applies it on GPUs).
    enable_xla: bool = False
    # Pretrained weights for a fresh run (ignored when resuming from model_run_dir or warm-starting from a
    # base model): a checkpoint prefix (``.../ckpt-N``), a folder (its latest checkpoint) or a SavedModel.
    # init_checkpoint_modules: "backbone" (a Mask R-CNN's or an ImageNet classifier's backbone),
    # "backbone_fpn" (a Mask R-CNN's backbone and FPN), "all_but_class_layers" (a Mask R-CNN of any label map:
    # everything but the class logits, per-class box regression and mask logits, which start fresh), "all"
    # (a Mask R-CNN with the same classes). Every loaded variable must be in the checkpoint with its shape.
    init_checkpoint: str = ""
    init_checkpoint_modules: str = "backbone"
    freeze_backbone: bool = False


@dataclasses.dataclass
class RuntimeConfig(hyperparams.Config):
    """Where training runs (see trainer/strategy.py)."""

    strategy: str = "auto"
    # GPUs to use: one_device 0 (CPU) or 1; mirrored and auto 0 means all visible GPUs.
    num_gpus: int = 0
    # mirrored: explicit devices (e.g. ["/cpu:0", "/cpu:1"]) instead of the first num_gpus GPUs.
    devices: List[str] = dataclasses.field(default_factory=list)
    # tpu: the TPU's name or grpc:// address ("local" for a TPU VM).
    tpu: str = ""
    # Cross-device all-reduce: "" lets TensorFlow choose; mirrored: nccl | hierarchical_copy;
    # multi_worker_mirrored: ring | nccl.
    all_reduce_alg: str = ""


@dataclasses.dataclass
class ExportConfig(hyperparams.Config):
    """The serving SavedModel written after training (see trainer/export.py). precision and jit_compile do not
    change the signatures or the output dtypes, only how the served network computes; max_image_pixels bounds
    the images both signatures accept."""

    # "float32", or "bfloat16": the backbone, FPN and the heads' hidden layers compute in bfloat16 (weights
    # stay float32; the heads' final predictions, box decoding, NMS and RoI cropping stay float32). Faster
    # where the hardware has bfloat16 arithmetic (CPUs with AVX512-BF16 or AMX, Ampere+ GPUs, TPUs), slower
    # where it is emulated. Independent of train.mixed_precision.
    precision: str = "float32"
    # XLA-compiles the served network (preprocessing stays outside); meant for GPUs and TPUs; on CPUs oneDNN's
    # convolutions are faster than XLA's.
    jit_compile: bool = False
    # The most pixels an image may declare in its header (JPEG frame header, PNG IHDR): both served signatures
    # refuse larger ones with INVALID_ARGUMENT before decoding, and the converter and the annotation validator
    # hold training data to the same limit. The default, 2**26 (8192x8192), takes 48- and 64-megapixel phone
    # photos and keeps one request under about 1 GB (the arithmetic is at maskrcnn_tfx.images.
    # DEFAULT_MAX_IMAGE_PIXELS).
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclasses.dataclass
class TrainerConfig(hyperparams.Config):
    """The whole Trainer configuration (what ``custom_config`` of the TFX Trainer holds)."""

    # The data set's label map (maskrcnn_tfx.label_map): the model's class count comes from it.
    label_map_path: str = ""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
# pylint: enable=missing-class-docstring


# --------------------------------------------------------------------------------------------------- loading

# The key of an override dict that names the preset to start from (not a configuration field).
PRESET_KEY = "preset"


def preset_names() -> List[str]:
    return sorted(f[:-len(".yaml")] for f in os.listdir(PRESETS_DIR) if f.endswith(".yaml"))


def preset_path(name_or_path: str) -> str:
    """A preset's YAML file: a name from ``trainer/presets``, or a path (local or gs://...) to a YAML file."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path or is_remote(name_or_path):
        exists = (tf.io.gfile.exists(name_or_path) if is_remote(name_or_path) else os.path.isfile(name_or_path))
        if not exists:
            raise ConfigError(f"config file {name_or_path!r} does not exist")
        return name_or_path
    path = os.path.join(PRESETS_DIR, name_or_path + ".yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"unknown preset {name_or_path!r}; presets: {', '.join(preset_names())}")
    return path


def _read_yaml(path: str) -> Dict[str, Any]:
    with (tf.io.gfile.GFile(path, "r") if is_remote(path) else open(path, encoding="utf-8")) as f:
        try:
            body = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration fields, got {type(body).__name__}")
    return body


def load_config(preset: Optional[str] = None,
                overrides: Union[None, Mapping[str, Any], Sequence[Mapping[str, Any]]] = None,
                *, validate: bool = True) -> TrainerConfig:
    """Builds and validates a configuration: defaults, then the preset, then each override in order.

    Args:
      preset: a preset name (``tiny``, ``coco_r50fpn``) or a YAML file path; ``None`` keeps the defaults
        (Model Garden's R50-FPN recipe) unless an override names one under the key ``"preset"``.
      overrides: a nested dict (or several) of fields to change, e.g. the TFX Trainer's ``custom_config``.
        A ``"preset"`` key in the first override selects the preset when ``preset`` is not given.
      validate: checks the result (see :func:`validate_config`).

    Raises:
      ConfigError: unknown preset or field, wrong type, or a value that fails validation.
    """
    if overrides is None:
        override_list: List[Mapping[str, Any]] = []
    elif isinstance(overrides, Mapping):
        override_list = [overrides]
    else:
        override_list = list(overrides)
    override_list = [dict(o) for o in override_list]
    for i, override in enumerate(override_list):
        named = override.pop(PRESET_KEY, None)
        if named is not None:
            if i != 0 or preset is not None:
                raise ConfigError(f"{PRESET_KEY!r} may be given once, first (got {named!r} as well as "
                                  f"{preset!r})")
            preset = named
    config = TrainerConfig()
    sources = ([(preset_path(preset), _read_yaml(preset_path(preset)))] if preset else [])
    sources += [(f"override {i + 1}", o) for i, o in enumerate(override_list)]
    for source, values in sources:
        override_config(config, values, source=source)
    if validate:
        validate_config(config)
    return config


def override_config(config: TrainerConfig, values: Mapping[str, Any], *, source: str = "override") -> None:
    """Applies a nested dict to ``config`` in place, strictly: unknown fields and wrong types are errors."""
    problems: List[str] = []
    _check_override(type(config), values, "", problems)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    config.override(_coerce(type(config), values), is_strict=True)


def _field_types(cls) -> Dict[str, Any]:
    return {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}


def _is_config_class(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, hyperparams.Config)


def _check_override(cls, values: Mapping[str, Any], prefix: str, problems: List[str]) -> None:
    if not isinstance(values, Mapping):
        problems.append(f"{prefix.rstrip('.') or 'the configuration'} must be a mapping, got {values!r}")
        return
    types = _field_types(cls)
    for key, value in values.items():
        name = prefix + str(key)
        if key not in types:
            problems.append(f"unknown field {name!r} (known: {', '.join(sorted(types))})")
            continue
        tp = types[key]
        if _is_config_class(tp):
            _check_override(tp, value, name + ".", problems)
        elif _coerce_leaf(tp, value) is _INVALID:
            problems.append(f"{name} must be {_type_name(tp)}, got {value!r}")


_INVALID = object()


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (list, List):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce_leaf(tp, value):
    """``value`` converted to the field type ``tp``, or ``_INVALID``. YAML reads ``1e-4`` as a string."""
    origin = typing.get_origin(tp)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            return _INVALID
        items = [_coerce_leaf(typing.get_args(tp)[0], v) for v in value]
        return _INVALID if any(i is _INVALID for i in items) else items
    if tp is bool:
        return value if isinstance(value, bool) else _INVALID
    if tp is int:
        if isinstance(value, bool):
            return _INVALID
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _INVALID
    if tp is float:
        if isinstance(value, bool):
            return _INVALID
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return _INVALID
        return _INVALID
    if tp is str:
        return value if isinstance(value, str) else _INVALID
    return value


def _coerce(cls, values: Mapping[str, Any]) -> Dict[str, Any]:
    types = _field_types(cls)
    out = {}
    for key, value in values.items():
        tp = types[key]
        out[key] = _coerce(tp, value) if _is_config_class(tp) else _coerce_leaf(tp, value)
    return out


# ------------------------------------------------------------------------------------------------ validation

def validate_config(config: TrainerConfig) -> None:
    """Checks the values that Model Garden would reject late (or not at all); raises one ConfigError."""
    problems: List[str] = []

    def need(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    def one_of(name: str, value: str, allowed: Sequence[str]) -> None:
        need(value in allowed, f"{name} {value!r} is not one of {', '.join(allowed)}")

    m, d, t, r = config.model, config.data, config.train, config.runtime
    one_of("model.backbone", m.backbone, tuple(BACKBONES))
    need(MIN_FPN_LEVEL <= m.min_level < m.max_level <= MAX_FPN_LEVEL,
         f"model.min_level ({m.min_level}) and model.max_level ({m.max_level}) must satisfy "
         f"{MIN_FPN_LEVEL} <= min_level < max_level <= {MAX_FPN_LEVEL}")
    stride = 2 ** m.max_level
    need(m.input_size > 0 and m.input_size % stride == 0,
         f"model.input_size ({m.input_size}) must be a positive multiple of 2**max_level = {stride} "
         f"(e.g. {max(stride, round(m.input_size / stride) * stride)})")
    for name in ("fpn_filters", "rpn_head_convs", "rpn_head_filters", "detection_head_filters",
                 "detection_head_fcs", "detection_head_fc_dims", "mask_head_filters", "num_sampled_rois",
                 "num_sampled_masks", "num_proposals", "test_num_proposals", "max_num_detections",
                 "anchor_num_scales"):
        need(getattr(m, name) >= 1, f"model.{name} must be >= 1, got {getattr(m, name)}")
    for name in ("detection_head_convs", "mask_head_convs"):
        need(getattr(m, name) >= 0, f"model.{name} must be >= 0, got {getattr(m, name)}")
    need(m.anchor_size > 0, f"model.anchor_size must be > 0, got {m.anchor_size}")
    need(bool(m.anchor_aspect_ratios) and all(a > 0 for a in m.anchor_aspect_ratios),
         f"model.anchor_aspect_ratios must be positive numbers, got {m.anchor_aspect_ratios}")
    need(m.num_sampled_masks <= m.num_sampled_rois,
         f"model.num_sampled_masks ({m.num_sampled_masks}) cannot exceed model.num_sampled_rois "
         f"({m.num_sampled_rois})")

    one_of("data.compression", d.compression, COMPRESSIONS)
    need(d.shuffle_buffer_size >= 1, f"data.shuffle_buffer_size must be >= 1, got {d.shuffle_buffer_size}")
    need(0 < d.aug_scale_min <= d.aug_scale_max,
         f"data.aug_scale_min ({d.aug_scale_min}) and aug_scale_max ({d.aug_scale_max}) must satisfy "
         f"0 < min <= max")
    need(d.max_num_instances >= 1, f"data.max_num_instances must be >= 1, got {d.max_num_instances}")
    need(d.mask_crop_size >= 1, f"data.mask_crop_size must be >= 1, got {d.mask_crop_size}")

    for name in ("batch_size", "eval_batch_size", "train_steps", "checkpoint_interval", "summary_interval",
                 "max_checkpoints"):
        need(getattr(t, name) >= 1, f"train.{name} must be >= 1, got {getattr(t, name)}")
    need(t.eval_steps >= -1, f"train.eval_steps must be -1 (whole eval split), 0 (none) or more, got "
                             f"{t.eval_steps}")
    need(t.eval_interval >= 0, f"train.eval_interval must be >= 0, got {t.eval_interval}")
    if t.summary_interval >= 1 and t.checkpoint_interval >= 1:
        need(t.checkpoint_interval % t.summary_interval == 0,
             f"train.checkpoint_interval ({t.checkpoint_interval}) must be a multiple of "
             f"train.summary_interval ({t.summary_interval})")
    one_of("train.mixed_precision", t.mixed_precision, PRECISIONS)
    one_of("train.init_checkpoint_modules", t.init_checkpoint_modules, INIT_CHECKPOINT_MODULES)
    o = t.optimizer
    one_of("train.optimizer.type", o.type, OPTIMIZERS)
    need(o.weight_decay >= 0, f"train.optimizer.weight_decay must be >= 0, got {o.weight_decay}")
    need(0 <= o.momentum < 1, f"train.optimizer.momentum must be in [0, 1), got {o.momentum}")
    need(o.gradient_clip_norm >= 0, f"train.optimizer.gradient_clip_norm must be >= 0, got "
                                    f"{o.gradient_clip_norm}")
    lr = t.learning_rate
    one_of("train.learning_rate.schedule", lr.schedule, LR_SCHEDULES)
    need(lr.base > 0, f"train.learning_rate.base must be > 0, got {lr.base}")
    need(lr.warmup_steps >= 0, f"train.learning_rate.warmup_steps must be >= 0, got {lr.warmup_steps}")
    need(lr.warmup_start >= 0, f"train.learning_rate.warmup_start must be >= 0, got {lr.warmup_start}")
    if lr.schedule == "stepwise":
        need(all(b > 0 for b in lr.boundaries) and list(lr.boundaries) == sorted(set(lr.boundaries)),
             f"train.learning_rate.boundaries must be increasing positive steps, got {lr.boundaries}")
        need(0 < lr.decay_factor <= 1, f"train.learning_rate.decay_factor must be in (0, 1], got "
                                       f"{lr.decay_factor}")
    if lr.schedule == "cosine":
        need(0 <= lr.cosine_alpha <= 1, f"train.learning_rate.cosine_alpha must be in [0, 1], got "
                                        f"{lr.cosine_alpha}")
        need(lr.cosine_decay_steps >= 0, f"train.learning_rate.cosine_decay_steps must be >= 0, got "
                                         f"{lr.cosine_decay_steps}")

    one_of("runtime.strategy", r.strategy, STRATEGIES)
    need(r.num_gpus >= 0, f"runtime.num_gpus must be >= 0, got {r.num_gpus}")
    if r.strategy == "tpu":
        need(bool(r.tpu), "runtime.tpu (the TPU name or grpc:// address, or \"local\") is required with "
                          "runtime.strategy tpu")
    if r.strategy == "one_device":
        need(r.num_gpus <= 1, f"runtime.strategy one_device uses at most one GPU, got runtime.num_gpus "
                              f"{r.num_gpus}")
    if r.devices:
        need(r.strategy == "mirrored", f"runtime.devices is only used by runtime.strategy mirrored (got "
                                       f"{r.strategy!r})")
    allowed_reduce = {"mirrored": ("", "nccl", "hierarchical_copy"), "multi_worker_mirrored": ("", "ring", "nccl")}
    if r.strategy in allowed_reduce:
        need(r.all_reduce_alg in allowed_reduce[r.strategy],
             f"runtime.all_reduce_alg {r.all_reduce_alg!r} is not one of "
             f"{', '.join(repr(a) for a in allowed_reduce[r.strategy])} for {r.strategy}")

    one_of("export.precision", config.export.precision, SERVING_PRECISIONS)
    need(isinstance(config.export.max_image_pixels, int) and config.export.max_image_pixels >= 1,
         f"export.max_image_pixels must be a positive integer, got {config.export.max_image_pixels!r}")
    if problems:
        raise ConfigError("invalid trainer configuration:\n  - " + "\n  - ".join(problems))


def check_replicas(config: TrainerConfig, num_replicas: int) -> None:
    """Batch sizes must split evenly over the replicas (called once the strategy is known)."""
    t = config.train
    bad = [f"train.{n} ({getattr(t, n)})" for n in ("batch_size", "eval_batch_size")
           if getattr(t, n) % num_replicas]
    if bad:
        raise ConfigError(f"{' and '.join(bad)} must be divisible by the number of replicas ({num_replicas})")


# ----------------------------------------------------------------------------------------- Model Garden mapping

def learning_rate_values(lr: LearningRateConfig) -> List[float]:
    """The stepwise schedule's rate in each interval between boundaries."""
    # Rounded so that 0.12 * 0.1**2 reads 0.0012, as in the published recipes.
    return [float(f"{lr.base * lr.decay_factor ** i:.12g}") for i in range(len(lr.boundaries) + 1)]


def _optimization_config(t: TrainConfig) -> Dict[str, Any]:
    o, lr = t.optimizer, t.learning_rate
    optimizer: Dict[str, Any] = {"type": o.type}
    if o.type == "sgd":
        optimizer["sgd"] = {"momentum": o.momentum}
    elif o.type == "adam":
        optimizer["adam"] = {}
    else:
        optimizer["adamw"] = {"weight_decay_rate": o.weight_decay,
                              # Model Garden's convention: no decay on normalization parameters and biases.
                              "exclude_from_weight_decay": ["batch_normalization", "bias"],
                              # AdamWeightDecay clips by itself (default 1.0); 0 turns it off.
                              "gradient_clip_norm": o.gradient_clip_norm}
    if o.gradient_clip_norm > 0 and o.type != "adamw":
        optimizer[o.type]["global_clipnorm"] = o.gradient_clip_norm

    if lr.schedule == "constant":
        learning_rate = {"type": "constant", "constant": {"learning_rate": lr.base}}
    elif lr.schedule == "stepwise":
        learning_rate = {"type": "stepwise", "stepwise": {"boundaries": list(lr.boundaries),
                                                          "values": learning_rate_values(lr)}}
    else:
        decay_steps = lr.cosine_decay_steps or max(t.train_steps - lr.warmup_steps, 1)
        learning_rate = {"type": "cosine", "cosine": {"initial_learning_rate": lr.base,
                                                      "decay_steps": decay_steps, "alpha": lr.cosine_alpha,
                                                      # Starts decaying after the warm-up.
                                                      "offset": lr.warmup_steps}}
    config: Dict[str, Any] = {"optimizer": optimizer, "learning_rate": learning_rate}
    if lr.warmup_steps > 0:
        config["warmup"] = {"type": "linear", "linear": {"warmup_steps": lr.warmup_steps,
                                                         "warmup_learning_rate": lr.warmup_start}}
    else:
        config["warmup"] = {"type": None}
    return config


def to_experiment_config(config: TrainerConfig, label_map: LabelMap, *,
                         train_input: Union[str, Sequence[str]] = "",
                         eval_input: Union[str, Sequence[str]] = "",
                         file_type: str = "tfrecord") -> mg_cfg.ExperimentConfig:
    """Maps our configuration onto Model Garden's ``maskrcnn_resnetfpn_coco`` experiment.

    Args:
      config: a validated configuration.
      label_map: the data set's classes; ``num_classes`` is its largest id + 1 (ids are the data set's own).
      train_input, eval_input: file patterns of the training and evaluation TFRecords.
      file_type: Model Garden's ``tfrecord`` or ``tfrecord_compressed`` (GZIP).
    """
    if label_map.num_classes < 2:
        raise ConfigError("the label map lists no class")
    m, d, t, r = config.model, config.data, config.train, config.runtime
    exp = exp_factory.get_exp_config(BASE_EXPERIMENT)
    mg_precision, image_dtype = _PRECISION_TO_MG[t.mixed_precision]
    exp.runtime.mixed_precision_dtype = mg_precision
    exp.runtime.loss_scale = "dynamic" if t.mixed_precision == "mixed_float16" else None
    exp.runtime.enable_xla = t.enable_xla
    exp.runtime.num_gpus = r.num_gpus
    exp.runtime.tpu = r.tpu or None
    exp.runtime.all_reduce_alg = r.all_reduce_alg or None

    task = exp.task
    task.init_checkpoint = t.init_checkpoint or None
    task.init_checkpoint_modules = t.init_checkpoint_modules
    task.freeze_backbone = t.freeze_backbone
    # Built from the eval data by Model Garden (include_mask needs COCO JSON ground truth).
    task.annotation_file = None
    task.losses.l2_weight_decay = 0.0 if t.optimizer.type == "adamw" else t.optimizer.weight_decay

    model = task.model
    model.num_classes = label_map.num_classes
    model.input_size = [m.input_size, m.input_size, 3]
    model.min_level, model.max_level = m.min_level, m.max_level
    model.anchor.anchor_size = m.anchor_size
    model.anchor.num_scales = m.anchor_num_scales
    model.anchor.aspect_ratios = list(m.anchor_aspect_ratios)
    backbone_type, model_id = BACKBONES[m.backbone]
    if backbone_type == "resnet":
        model.backbone = mg_backbones.Backbone(type="resnet", resnet=mg_backbones.ResNet(model_id=model_id))
    else:
        model.backbone = mg_backbones.Backbone(type="mobilenet",
                                               mobilenet=mg_backbones.MobileNet(model_id=model_id))
    model.decoder.fpn.num_filters = m.fpn_filters
    model.rpn_head.num_convs = m.rpn_head_convs
    model.rpn_head.num_filters = m.rpn_head_filters
    model.detection_head.num_convs = m.detection_head_convs
    model.detection_head.num_filters = m.detection_head_filters
    model.detection_head.num_fcs = m.detection_head_fcs
    model.detection_head.fc_dims = m.detection_head_fc_dims
    model.mask_head.num_convs = m.mask_head_convs
    model.mask_head.num_filters = m.mask_head_filters
    model.roi_sampler.num_sampled_rois = m.num_sampled_rois
    model.mask_sampler.num_sampled_masks = m.num_sampled_masks
    model.roi_generator.num_proposals = m.num_proposals
    model.roi_generator.test_num_proposals = m.test_num_proposals
    # Pre-NMS candidates must not be fewer than the proposals kept after NMS.
    model.roi_generator.pre_nms_top_k = max(model.roi_generator.pre_nms_top_k, m.num_proposals)
    model.roi_generator.test_pre_nms_top_k = max(model.roi_generator.test_pre_nms_top_k, m.test_num_proposals)
    model.detection_generator.max_num_detections = m.max_num_detections
    model.norm_activation.use_sync_bn = m.sync_batch_norm

    for data, pattern, batch, training in ((task.train_data, train_input, t.batch_size, True),
                                           (task.validation_data, eval_input, t.eval_batch_size, False)):
        data.input_path = list(pattern) if isinstance(pattern, (list, tuple)) else pattern
        data.file_type = file_type
        data.global_batch_size = batch
        data.dtype = image_dtype
        data.shuffle_buffer_size = d.shuffle_buffer_size
        data.parser.max_num_instances = d.max_num_instances
        data.parser.mask_crop_size = d.mask_crop_size
        if training:
            data.parser.aug_rand_hflip = d.aug_rand_hflip
            data.parser.aug_scale_min = d.aug_scale_min
            data.parser.aug_scale_max = d.aug_scale_max

    trainer = exp.trainer
    trainer.train_steps = t.train_steps
    trainer.validation_steps = t.eval_steps if t.eval_steps != 0 else -1
    trainer.validation_interval = t.eval_interval or t.train_steps
    trainer.steps_per_loop = t.summary_interval
    trainer.summary_interval = t.summary_interval
    trainer.checkpoint_interval = t.checkpoint_interval
    trainer.max_to_keep = t.max_checkpoints
    trainer.optimizer_config = trainer.optimizer_config.replace(**_optimization_config(t))
    exp.validate()
    return exp


def config_to_yaml(config: TrainerConfig) -> str:
    """The full configuration as YAML (written beside checkpoints, so a run records what it trained)."""
    return yaml.safe_dump(config.as_dict(), sort_keys=False)


def clone(config: TrainerConfig) -> TrainerConfig:
    """An unlocked deep copy (Model Garden configs are mutable; callers must not change ours in place)."""
    return config.replace()


__all__ = [
    "BACKBONES", "ConfigError", "DataConfig", "ExportConfig", "LearningRateConfig", "ModelConfig",
    "OptimizerConfig", "RuntimeConfig", "SERVING_PRECISIONS", "TrainConfig", "TrainerConfig", "check_replicas",
    "clone", "config_to_yaml", "learning_rate_values", "load_config", "override_config", "preset_names",
    "preset_path", "to_experiment_config", "validate_config",
]
