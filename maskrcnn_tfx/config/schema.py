"""The schema of the product's one configuration: every setting, its type, its default and what it means.

A run is described by one :class:`PipelineConfig`. Its ``trainer`` section is the :class:`TrainerConfig` the
TFX Trainer trains with (the same object a training run outside TFX takes); the other sections say where the
data is, where outputs go, when a model is blessed and how the pipeline is compiled and submitted. Every
setting has one home here; :mod:`maskrcnn_tfx.config.loader` reads them (YAML, flags, the Trainer's
``custom_config``) and :mod:`maskrcnn_tfx.config.validation` checks them, once, where they enter.

Plain dataclasses with no TensorFlow import: the CLI, the report and the validator read the configuration
without loading TensorFlow, and ``maskrcnn_tfx.trainer.experiment`` maps the trainer section onto Model
Garden's ``ExperimentConfig`` when training starts.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional

from maskrcnn_tfx import label_map as label_map_lib
from maskrcnn_tfx.images import DEFAULT_MAX_IMAGE_PIXELS


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every field at fault."""


# ------------------------------------------------------------------------------------------------ the trainer

# Backbone names -> (Model Garden backbone type, its model_id).
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
# Training precisions -> (Model Garden's runtime.mixed_precision_dtype, the input pipeline's image dtype).
TRAIN_PRECISIONS: Dict[str, tuple] = {
    "float32": ("float32", "float32"),
    "mixed_float16": ("float16", "float16"),
    "mixed_bfloat16": ("bfloat16", "bfloat16"),
}
COMPRESSIONS = ("auto", "gzip", "none")
# Compute precisions of the exported serving model (maskrcnn_tfx.trainer.export builds each one).
SERVING_PRECISIONS = ("float32", "bfloat16")
# What train.init_checkpoint loads (maskrcnn_tfx.trainer.model's INIT_MODES): see TrainConfig.
INIT_CHECKPOINT_MODULES = ("backbone", "backbone_fpn", "all_but_class_layers", "all")
# Model Garden's FPN reads backbone levels up to 5 and adds coarser ones itself; level 1 is not produced.
MIN_FPN_LEVEL, MAX_FPN_LEVEL = 2, 7
DEFAULT_PRESET = "tiny"


@dataclasses.dataclass
class ModelConfig:
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
class InputConfig:
    """The training input pipeline (Model Garden's decoder and Parser) and augmentation."""

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
class LearningRateConfig:
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
class OptimizerConfig:
    """The optimizer; ``momentum`` is sgd's only."""

    type: str = "sgd"
    momentum: float = 0.9
    # L2 regularization of the weights for sgd/adam; decoupled weight decay for adamw.
    weight_decay: float = 0.00004
    # Clips the global gradient norm; 0 turns clipping off.
    gradient_clip_norm: float = 0.0


@dataclasses.dataclass
class TrainConfig:
    """The training run: batch sizes, steps, the Trainer's own evaluation, checkpoints and optimization."""

    # Global batch sizes (summed over replicas); must be divisible by the number of replicas.
    batch_size: int = 64
    eval_batch_size: int = 8
    train_steps: int = 22500
    # The Trainer's own evaluation (Model Garden's, written to TensorBoard), in batches: -1 the whole eval
    # split, 0 none, N that many batches. In a pipeline the Evaluator computes COCO AP on the eval split and
    # decides the blessing whatever this says.
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
    # base model): a checkpoint prefix (``.../ckpt-N``), a folder (its latest checkpoint) or a SavedModel;
    # "" trains from scratch. init_checkpoint_modules: "backbone" (a Mask R-CNN's or an ImageNet classifier's
    # backbone), "backbone_fpn" (a Mask R-CNN's backbone and FPN), "all_but_class_layers" (a Mask R-CNN of any
    # label map: everything but the class logits, per-class box regression and mask logits, which start
    # fresh), "all" (a Mask R-CNN with the same classes). Every loaded variable must be in the checkpoint with
    # its shape.
    init_checkpoint: str = ""
    init_checkpoint_modules: str = "backbone"
    freeze_backbone: bool = False


@dataclasses.dataclass
class RuntimeConfig:
    """Where training runs (see maskrcnn_tfx.trainer.strategy)."""

    strategy: str = "auto"
    # GPUs to use: -1 every visible GPU (one_device: one of them, if any), 0 none (the CPU), N that many
    # (one_device: at most 1).
    num_gpus: int = -1
    # mirrored: explicit devices (e.g. ["/cpu:0", "/cpu:1"]) instead of the first num_gpus GPUs.
    devices: List[str] = dataclasses.field(default_factory=list)
    # tpu: the TPU's name or grpc:// address ("local" for a TPU VM).
    tpu: str = ""
    # Cross-device all-reduce: "" lets TensorFlow choose; mirrored: nccl | hierarchical_copy;
    # multi_worker_mirrored: ring | nccl.
    all_reduce_alg: str = ""


@dataclasses.dataclass
class ExportConfig:
    """The serving SavedModel written after training (see maskrcnn_tfx.trainer.export). precision and
    jit_compile do not change the signatures or the output dtypes, only how the served network computes;
    max_image_pixels bounds the images both signatures accept."""

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
class TrainerConfig:
    """What the Trainer trains and exports: a preset (data: ``maskrcnn_tfx/config/presets/<name>.yaml``) with
    the fields given beside it applied on top. Loaded, the other fields hold the preset's values, so the
    section is complete and the preset name is a record of where it started."""

    # A preset name (tiny, finetune, coco_r50fpn) or a preset YAML file (local or gs://...).
    preset: str = DEFAULT_PRESET
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: InputConfig = dataclasses.field(default_factory=InputConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


# ----------------------------------------------------------------------------------------------- the pipeline

RUNNERS = ("local", "beam", "kubeflow")
INFRA_VALIDATION_MODES = ("off", "docker", "kubernetes")
BOX_METRICS = ("pycocotools", "tfma")
# The range a lower bound on AP may take: negative lets any defined AP pass, 1 lets nothing pass.
AP_BOUND_RANGE = (-1.0, 1.0)
SPAN_TOKEN = "{SPAN}"
DEFAULT_PIPELINE_NAME = "maskrcnn-tfx"
DEFAULT_IMAGE = "maskrcnn-tfx:latest"


@dataclasses.dataclass
class DataConfig:
    """The input: TFRecords of tf.Examples (the converter's format) and their label map.

    Either explicit split patterns (``train_pattern``/``eval_pattern``, relative to ``root``) or one
    ``pattern`` split into train/eval by hash buckets (``hash_buckets``, e.g. [8, 2]). Patterns may hold
    ``{SPAN}``: ExampleGen then takes the latest span present (and a new span triggers a new run).
    """

    root: str = ""
    train_pattern: str = "train/*"
    eval_pattern: str = "eval/*"
    pattern: str = ""
    hash_buckets: List[int] = dataclasses.field(default_factory=list)
    # Default: <root>/label_map.json, as the converter writes it. The model's classes come from it.
    label_map_path: str = ""
    # A curated schema.pbtxt: ImportSchemaGen replaces SchemaGen, so the schema does not drift with the data.
    schema_path: str = ""

    @property
    def uses_hash_buckets(self) -> bool:
        return bool(self.pattern)


@dataclasses.dataclass
class EvaluationConfig:
    """When the Evaluator blesses a model (thresholds on the overall slice) and how it computes box AP.

    A model is blessed when its overall mask AP is strictly above ``min_mask_ap``, its box AP strictly above
    ``min_box_ap`` and, once there is a blessed model to compare with, neither AP is more than ``max_ap_drop``
    below that model's. With the defaults a model that detects nothing (AP 0.000) is never blessed. See
    maskrcnn_tfx/pipelines/eval_config.py for how the bounds map onto TFMA's thresholds.
    """

    # Strict lower bounds on the overall AP: AP must be above this value. A negative bound lets every model with
    # a defined AP pass (a smoke run that must push whatever it trains); 1.0 lets none pass. null drops the
    # bound, and TFX's Evaluator blesses nothing without any threshold (so a first run, which has no baseline
    # yet, is never blessed or pushed when both bounds are null).
    min_mask_ap: Optional[float] = 0.001
    min_box_ap: Optional[float] = 0.001
    # Against the latest blessed model (when there is one): the candidate's AP may be at most this lower; null:
    # no comparison.
    max_ap_drop: Optional[float] = 0.0
    # "pycocotools" (default): COCO's exact box AP, computed like the mask AP
    # (maskrcnn_tfx.pipelines.metrics.COCOBoxAP); its cost does not grow with classes. "tfma": TFMA's
    # COCOMeanAveragePrecision (maskrcnn_tfx.pipelines.metrics.BoxMeanAveragePrecision), 40 Beam computations
    # per class, seconds per image and class: the pipeline warns before it runs when it would be slow.
    box_metric: str = "pycocotools"
    # Score thresholds of box_metric "tfma" only (its cost grows with them).
    box_num_thresholds: int = 1000
    max_detections: int = 100


@dataclasses.dataclass
class InfraValidationConfig:
    """InfraValidator: loads the model in TF Serving before pushing. Off by default (needs Docker or k8s)."""

    mode: str = "off"
    serving_image: str = "tensorflow/serving"
    serving_tags: List[str] = dataclasses.field(default_factory=lambda: ["2.16.1"])
    num_examples: int = 4


@dataclasses.dataclass
class ScheduleConfig:
    """A recurring run on Kubeflow Pipelines or Vertex AI (see maskrcnn_tfx/pipelines/submit.py); empty: a
    one-off run."""

    # Cron: 5 fields, minute first (Kubeflow also takes its own 6-field form, seconds first) ...
    cron: str = ""
    # ... or an interval (Kubeflow only): 30m, 6h, 1d, 1w or seconds.
    every: str = ""
    start_time: str = ""  # RFC 3339, e.g. 2026-01-05T03:00:00Z; default: now
    end_time: str = ""
    max_concurrency: int = 1  # runs of the schedule that may run at once


@dataclasses.dataclass
class KfpEndpointConfig:
    """A Kubeflow Pipelines endpoint and its credentials (``kfp.Client``'s options)."""

    host: str = ""  # e.g. https://kubeflow.example.com/pipeline; empty: compile only
    ui_host: str = ""  # where the printed links point (default: host)
    namespace: str = ""  # multi-user deployments: the profile namespace
    experiment: str = ""  # default: the pipeline name
    service_account: str = ""  # the Kubernetes service account the run uses
    # Credentials: a bearer token read from a file (e.g. a projected service account token), a cookie
    # header read from a file (Dex / oauth2-proxy sessions), or an IAP OAuth client id (Google auth).
    token_file: str = ""
    cookies_file: str = ""
    client_id: str = ""
    ssl_ca_cert: str = ""
    verify_ssl: bool = True


@dataclasses.dataclass
class VertexConfig:
    """Vertex AI Pipelines (``google.cloud.aiplatform``)."""

    project: str = ""  # empty: compile only
    region: str = "us-central1"
    service_account: str = ""  # the service account the run's components act as
    network: str = ""  # projects/NUMBER/global/networks/NAME to peer with
    # Credentials: Application Default Credentials unless an OAuth access token file is given
    # (e.g. `gcloud auth print-access-token > token`).
    token_file: str = ""
    labels: Dict[str, str] = dataclasses.field(default_factory=dict)
    # Default: REGION-aiplatform.googleapis.com; e.g. a Private Service Connect endpoint.
    api_endpoint: str = ""


@dataclasses.dataclass
class KubeflowConfig:
    """KFP v2 / Vertex AI compilation, and submission to a Kubeflow Pipelines endpoint or Vertex AI."""

    image: str = DEFAULT_IMAGE
    # Default: ./<pipeline_name>.json (<pipeline_root>/<pipeline_name>.json when the root is a mounted folder).
    output_file: str = ""
    # Folders every pod mounts at the same path (a PVC, an NFS share): local paths under them are accepted.
    mounted_paths: List[str] = dataclasses.field(default_factory=list)
    run_name: str = ""  # default: <pipeline_name>-<UTC time>
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    kfp: KfpEndpointConfig = dataclasses.field(default_factory=KfpEndpointConfig)
    vertex: VertexConfig = dataclasses.field(default_factory=VertexConfig)


@dataclasses.dataclass
class PipelineConfig:
    """One run of the pipeline: everything :func:`maskrcnn_tfx.pipelines.pipeline.create_pipeline` needs.

    Obtain it from :func:`maskrcnn_tfx.config.load` or :func:`maskrcnn_tfx.config.from_dict`, which validate
    it; :meth:`replace` returns a validated copy with some fields changed. A YAML file mirrors the sections::

        pipeline_name: maskrcnn-shapes
        pipeline_root: outputs/pipeline
        data:
          root: outputs/shapes/tfrecords       # converter output: train/, eval/, label_map.json
          train_pattern: train/*                # or span-{SPAN}/train/* for spans
          eval_pattern: eval/*
        serving_dir: outputs/serving           # the Pusher writes <serving_dir>/<unix seconds>/
        trainer:                               # a preset, and any trainer field on top of it
          preset: tiny
          train: {batch_size: 4, train_steps: 200}
        evaluation: {min_mask_ap: 0.1, min_box_ap: 0.1, max_ap_drop: 0.0}   # bless: AP above 0.1, no worse
        runner: local
        kubeflow:                              # --runner kubeflow: compile, and submit (pipelines/submit.py)
          image: gcr.io/me/maskrcnn-tfx:0.1.0
          schedule: {cron: "0 3 * * 1", max_concurrency: 1}
          kfp: {host: https://kubeflow.example.com/pipeline, experiment: weekly, token_file: /var/run/kfp/token}

    Empty paths take the defaults noted beside them (the ``resolved_*`` properties); relative local paths are
    made absolute when the configuration is validated, because TFX components may run in another directory.
    """

    pipeline_name: str = DEFAULT_PIPELINE_NAME
    # Default: ./outputs/pipeline.
    pipeline_root: str = ""
    # Default: <pipeline_root>/metadata.sqlite (local and Beam runners).
    metadata_path: str = ""
    # Default: <pipeline_root>/serving.
    serving_dir: str = ""
    runner: str = "local"
    # Beam options of the data components; default: in-process for local, multi-processing for beam.
    beam_args: List[str] = dataclasses.field(default_factory=list)
    enable_cache: bool = True
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    infra_validation: InfraValidationConfig = dataclasses.field(default_factory=InfraValidationConfig)
    kubeflow: KubeflowConfig = dataclasses.field(default_factory=KubeflowConfig)

    @property
    def label_map_path(self) -> str:
        return self.data.label_map_path or os.path.join(self.data.root, label_map_lib.FILE_NAME)

    @property
    def resolved_metadata_path(self) -> str:
        return self.metadata_path or os.path.join(self.pipeline_root, "metadata.sqlite")

    @property
    def resolved_serving_dir(self) -> str:
        return self.serving_dir or os.path.join(self.pipeline_root, "serving")

    @property
    def resolved_beam_args(self) -> List[str]:
        if self.beam_args:
            return list(self.beam_args)
        if self.runner == "beam":
            # Beam's DirectRunner in worker processes: uses every core, the shape a cluster runner has.
            return ["--direct_running_mode=multi_processing", f"--direct_num_workers={os.cpu_count() or 1}"]
        return list(LOCAL_BEAM_ARGS)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "PipelineConfig":
        """A validated copy with some fields changed; sections given as dicts are merged into the current ones."""
        from maskrcnn_tfx.config import loader  # pylint: disable=g-import-not-at-top  (the loader imports this)

        values = self.to_dict()
        new_preset = (changes.get("trainer") or {}).get("preset") if isinstance(changes.get("trainer"), dict) else None
        if new_preset and new_preset != self.trainer.preset:
            values["trainer"] = {}  # another preset starts the trainer section afresh, under the changes
        return loader.from_dict(loader.merged(values, changes))


# The local runner's Beam: Beam's defaults (DirectRunner in memory, one worker), because starting worker
# processes costs more than small runs spend computing (benchmarks/README.md). Given as no flags at all: given
# any, every TFX Beam executor first packages TFX for remote workers (tfx/utils/dependency_utils.py: a copy of
# TFX in a temporary folder and a setup.py run, seconds per Beam component), which in-process Beam never reads.
LOCAL_BEAM_ARGS: tuple = ()
