"""The configuration's one validator: every check of every section, reported together, by dotted field name.

:mod:`maskrcnn_tfx.config.loader` calls it where a configuration enters (the CLI's flags and YAML file, the
Trainer's ``custom_config``, a library caller's dict), so a mistake is reported before anything runs and
later code trusts what it is given. Model Garden would reject some of these values only after the data
components ran, and some not at all.
"""
from __future__ import annotations

import copy
import os
from typing import List, Optional, Sequence

from maskrcnn_tfx.config import schema
from maskrcnn_tfx.config import submission
from maskrcnn_tfx.config.schema import ConfigError, PipelineConfig, TrainerConfig
from maskrcnn_tfx.files import is_remote


def validate(config: PipelineConfig, *, check_files: bool = True, source: str = "configuration") -> PipelineConfig:
    """A checked copy of ``config`` with local paths made absolute; raises one :class:`ConfigError` listing
    every problem. ``check_files`` also checks that local data, label map, schema and checkpoint exist (a
    pipeline compiled for a cluster reads them elsewhere)."""
    c = copy.deepcopy(config)
    problems: List[str] = []

    def need(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    need(bool(c.pipeline_name) and all(ch.isalnum() or ch in "-_." for ch in c.pipeline_name),
         f"pipeline_name must be non-empty letters, digits, '-', '_' or '.', not {c.pipeline_name!r}")
    need(c.runner in schema.RUNNERS, f"runner must be one of {', '.join(schema.RUNNERS)}, not {c.runner!r}")
    c.pipeline_root = _absolute(c.pipeline_root or os.path.join("outputs", "pipeline"))
    c.metadata_path = _absolute(c.metadata_path) if c.metadata_path else ""
    c.serving_dir = _absolute(c.serving_dir) if c.serving_dir else ""

    d = c.data
    need(bool(d.root), "data.root is required (--data DIR): the converter's output directory")
    d.root = _absolute(d.root) if d.root else d.root
    d.label_map_path = _absolute(d.label_map_path) if d.label_map_path else ""
    d.schema_path = _absolute(d.schema_path) if d.schema_path else ""
    if d.uses_hash_buckets:
        need(len(d.hash_buckets) == 2 and all(b > 0 for b in d.hash_buckets),
             f"data.hash_buckets must be two positive integers (train, eval) with data.pattern, "
             f"not {d.hash_buckets}")
        patterns = [d.pattern]
    else:
        need(not d.hash_buckets, "data.hash_buckets needs data.pattern (one pattern split by hash)")
        need(bool(d.train_pattern) and bool(d.eval_pattern), "data.train_pattern and data.eval_pattern "
                                                              "are required without data.pattern")
        patterns = [d.train_pattern, d.eval_pattern]
    spans = [schema.SPAN_TOKEN in p for p in patterns]
    need(all(spans) or not any(spans), f"either every pattern holds {schema.SPAN_TOKEN} or none does: {patterns}")
    need(all(not os.path.isabs(p) for p in patterns), f"data patterns are relative to data.root: {patterns}")
    if check_files and d.root and not is_remote(d.root):
        need(os.path.isdir(d.root), f"data.root {d.root} is not a directory")
        need(os.path.isfile(c.label_map_path),
             f"no label map at {c.label_map_path} (set data.label_map_path, or convert the data with "
             f"maskrcnn-tfx convert-coco, which writes it)")
        if d.schema_path:
            need(os.path.isfile(d.schema_path), f"data.schema_path {d.schema_path} is not a file")

    t = c.trainer.train
    # Components may run in another working directory: a local checkpoint path is made absolute.
    if t.init_checkpoint and not is_remote(t.init_checkpoint):
        t.init_checkpoint = _checkpoint_path(t.init_checkpoint)
    problems.extend(trainer_problems(c.trainer, "trainer."))
    if check_files and t.init_checkpoint and not is_remote(t.init_checkpoint):
        problem = checkpoint_problem(t.init_checkpoint)
        need(problem is None, f"trainer.train.init_checkpoint: {problem}")

    e = c.evaluation
    low, high = schema.AP_BOUND_RANGE
    for name in ("min_mask_ap", "min_box_ap"):
        value = getattr(e, name)
        need(value is None or low <= value <= high,
             f"evaluation.{name} must be in [{low:g}, {high:g}] (AP must be strictly above it), not {value}")
    need(e.max_ap_drop is None or 0.0 <= e.max_ap_drop <= 1.0,
         f"evaluation.max_ap_drop must be in [0, 1], not {e.max_ap_drop}")
    _one_of(problems, "evaluation.box_metric", e.box_metric, schema.BOX_METRICS)
    need(e.box_num_thresholds >= 2, f"evaluation.box_num_thresholds must be >= 2, not {e.box_num_thresholds}")
    need(e.max_detections >= 1, f"evaluation.max_detections must be >= 1, not {e.max_detections}")

    iv = c.infra_validation
    _one_of(problems, "infra_validation.mode", iv.mode, schema.INFRA_VALIDATION_MODES)
    need(bool(iv.serving_tags), "infra_validation.serving_tags must name at least one image tag")
    need(iv.num_examples >= 1, f"infra_validation.num_examples must be >= 1, not {iv.num_examples}")
    need(bool(c.kubeflow.image), "kubeflow.image is required")
    if c.runner == "kubeflow":
        problems.extend(submission.problems(c))
    if problems:
        raise ConfigError(message(source, problems))
    return c


def validate_trainer(trainer: TrainerConfig, *, source: str = "trainer configuration",
                     prefix: str = "") -> TrainerConfig:
    """``trainer`` itself when every check passes; raises one :class:`ConfigError` otherwise."""
    problems = trainer_problems(trainer, prefix)
    if problems:
        raise ConfigError(message(source, problems))
    return trainer


def trainer_problems(config: TrainerConfig, prefix: str = "") -> List[str]:
    """Every problem of a trainer section, named ``<prefix><section>.<field>``."""
    problems: List[str] = []

    def need(condition: bool, message: str) -> None:
        if not condition:
            problems.append(prefix + message)

    def one_of(name: str, value: str, allowed: Sequence[str]) -> None:
        _one_of(problems, prefix + name, value, allowed)

    m, d, t, r = config.model, config.data, config.train, config.runtime
    one_of("model.backbone", m.backbone, tuple(schema.BACKBONES))
    lo, hi = schema.MIN_FPN_LEVEL, schema.MAX_FPN_LEVEL
    need(lo <= m.min_level < m.max_level <= hi,
         f"model.min_level ({m.min_level}) and model.max_level ({m.max_level}) must satisfy "
         f"{lo} <= min_level < max_level <= {hi}")
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

    one_of("data.compression", d.compression, schema.COMPRESSIONS)
    need(d.shuffle_buffer_size >= 1, f"data.shuffle_buffer_size must be >= 1, got {d.shuffle_buffer_size}")
    need(0 < d.aug_scale_min <= d.aug_scale_max,
         f"data.aug_scale_min ({d.aug_scale_min}) and aug_scale_max ({d.aug_scale_max}) must satisfy "
         f"0 < min <= max")
    need(d.max_num_instances >= 1, f"data.max_num_instances must be >= 1, got {d.max_num_instances}")
    need(d.mask_crop_size >= 1, f"data.mask_crop_size must be >= 1, got {d.mask_crop_size}")

    for name in ("batch_size", "eval_batch_size", "train_steps", "checkpoint_interval", "summary_interval",
                 "max_checkpoints"):
        need(getattr(t, name) >= 1, f"train.{name} must be >= 1, got {getattr(t, name)}")
    need(t.eval_steps >= -1, f"train.eval_steps must be -1 (the whole eval split), 0 (none) or a number of "
                             f"batches, got {t.eval_steps}")
    need(t.eval_interval >= 0, f"train.eval_interval must be >= 0, got {t.eval_interval}")
    if t.summary_interval >= 1 and t.checkpoint_interval >= 1:
        need(t.checkpoint_interval % t.summary_interval == 0,
             f"train.checkpoint_interval ({t.checkpoint_interval}) must be a multiple of "
             f"train.summary_interval ({t.summary_interval})")
    one_of("train.mixed_precision", t.mixed_precision, tuple(schema.TRAIN_PRECISIONS))
    one_of("train.init_checkpoint_modules", t.init_checkpoint_modules, schema.INIT_CHECKPOINT_MODULES)
    o = t.optimizer
    one_of("train.optimizer.type", o.type, schema.OPTIMIZERS)
    need(o.weight_decay >= 0, f"train.optimizer.weight_decay must be >= 0, got {o.weight_decay}")
    need(0 <= o.momentum < 1, f"train.optimizer.momentum must be in [0, 1), got {o.momentum}")
    need(o.gradient_clip_norm >= 0, f"train.optimizer.gradient_clip_norm must be >= 0, got "
                                    f"{o.gradient_clip_norm}")
    lr = t.learning_rate
    one_of("train.learning_rate.schedule", lr.schedule, schema.LR_SCHEDULES)
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

    one_of("runtime.strategy", r.strategy, schema.STRATEGIES)
    need(r.num_gpus >= -1, f"runtime.num_gpus must be -1 (every visible GPU), 0 (none) or more, got {r.num_gpus}")
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

    one_of("export.precision", config.export.precision, schema.SERVING_PRECISIONS)
    need(config.export.max_image_pixels >= 1,
         f"export.max_image_pixels must be a positive integer, got {config.export.max_image_pixels!r}")
    return problems


def check_replicas(config: TrainerConfig, num_replicas: int) -> None:
    """Batch sizes must split evenly over the replicas (checked once the strategy is known, at training)."""
    t = config.train
    bad = [f"train.{n} ({getattr(t, n)})" for n in ("batch_size", "eval_batch_size")
           if getattr(t, n) % num_replicas]
    if bad:
        raise ConfigError(f"{' and '.join(bad)} must be divisible by the number of replicas ({num_replicas})")


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` is no checkpoint the Trainer can read (None when it is one): a checkpoint prefix whose
    ``.index`` and ``.data-*`` files exist, a folder with a ``checkpoint`` state file naming an existing
    checkpoint (its latest), or a SavedModel folder."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return None
        state = os.path.join(path, "checkpoint")
        if not os.path.isfile(state):
            return (f"{path} is a folder without checkpoints (no 'checkpoint' file) and is no SavedModel; give "
                    f"a checkpoint prefix such as {os.path.join(path, 'ckpt-1000')} or the folder a Trainer wrote")
        with open(state, encoding="utf-8") as f:
            latest = next((line.split(":", 1)[1].strip().strip('"') for line in f
                           if line.startswith("model_checkpoint_path:")), "")
        if not latest:
            return f"{state} names no checkpoint"
        prefix = latest if os.path.isabs(latest) else os.path.join(path, latest)
        problem = checkpoint_problem(prefix) if prefix != path else None
        return f"the latest checkpoint of {path}: {problem}" if problem else None
    if not os.path.isfile(path + ".index"):
        return (f"{path} does not exist: give a checkpoint prefix (e.g. .../ckpt-1000, whose .index and .data files "
                f"exist), a folder of checkpoints or a SavedModel folder")
    directory, name = os.path.split(path)
    if not any(f.startswith(name + ".data-") for f in os.listdir(directory or ".")):
        return f"the checkpoint {path} has an .index file but no .data files"
    return None


def _one_of(problems: List[str], name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        problems.append(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


def message(source: str, problems: List[str]) -> str:
    return f"invalid configuration ({source}):\n  - " + "\n  - ".join(problems)


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if not is_remote(path) else path


def _checkpoint_path(path: str) -> str:
    """An absolute checkpoint path; a checkpoint's ``.index`` file names its prefix."""
    path = _absolute(path)
    return path[:-len(".index")] if path.endswith(".index") else path
