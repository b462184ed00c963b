"""The trainer configuration mapped onto Model Garden's ``ExperimentConfig``: the build, apart from the settings.

The settings live in :mod:`maskrcnn_tfx.config` (the trainer section, validated where it enters); this module
turns them into Model Garden's own ``maskrcnn_resnetfpn_coco`` experiment, whose Mask R-CNN, input parser,
losses and training loop are used unchanged. Knobs the trainer section does not list keep Model Garden's
published values::

    trainer = maskrcnn_tfx.config.load_trainer_config("tiny", {"model": {"input_size": 256}})
    experiment = to_experiment_config(trainer, LabelMap.load("label_map.json"))
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Union

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
from official.core import config_definitions as mg_cfg
from official.core import exp_factory
from official.vision.configs import backbones as mg_backbones

from maskrcnn_tfx.config import schema
from maskrcnn_tfx.config.schema import ConfigError, TrainerConfig
from maskrcnn_tfx.label_map import LabelMap

# The Model Garden experiment every configuration starts from.
BASE_EXPERIMENT = "maskrcnn_resnetfpn_coco"


def learning_rate_values(lr: schema.LearningRateConfig) -> List[float]:
    """The stepwise schedule's rate in each interval between boundaries."""
    # Rounded so that 0.12 * 0.1**2 reads 0.0012, as in the published recipes.
    return [float(f"{lr.base * lr.decay_factor ** i:.12g}") for i in range(len(lr.boundaries) + 1)]


def _optimization_config(t: schema.TrainConfig) -> Dict[str, Any]:
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
    mg_precision, image_dtype = schema.TRAIN_PRECISIONS[t.mixed_precision]
    exp.runtime.mixed_precision_dtype = mg_precision
    exp.runtime.loss_scale = "dynamic" if t.mixed_precision == "mixed_float16" else None
    exp.runtime.enable_xla = t.enable_xla
    # The Trainer builds its own strategy (maskrcnn_tfx/trainer/strategy.py), and sets the GPUs it uses here
    # (Model Garden applies enable_xla only with runtime.num_gpus > 0).
    exp.runtime.num_gpus = max(r.num_gpus, 0)
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
    backbone_type, model_id = schema.BACKBONES[m.backbone]
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
