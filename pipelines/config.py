"""The pipeline's one typed configuration: where the data is, where outputs go, how to train, when to bless.

Every runner (local, Beam, Kubeflow) builds its pipeline from a :class:`PipelineConfig`, loaded from a YAML file
and/or command-line flags and validated once by :meth:`PipelineConfig.validate`, so a mistake is reported before
any component runs. A YAML file mirrors the dataclasses::

    pipeline_name: maskrcnn-shapes
    pipeline_root: outputs/pipeline
    data:
      root: outputs/shapes/tfrecords       # converter output: train/, eval/, label_map.json
      train_pattern: train/*                # or span-{SPAN}/train/* for spans
      eval_pattern: eval/*
    serving_dir: outputs/serving           # the Pusher writes <serving_dir>/<unix seconds>/
    trainer:
      preset: tiny
      overrides: {train: {batch_size: 4}}
      train_steps: 200
    evaluation: {min_mask_ap: 0.1, min_box_ap: 0.1, max_ap_drop: 0.0}   # bless: AP above 0.1, no worse
    runner: local
    kubeflow:                              # --runner kubeflow: compile, and submit (pipelines/submit.py)
      image: gcr.io/me/maskrcnn-tfx:0.1.0
      schedule: {cron: "0 3 * * 1", max_concurrency: 1}
      kfp: {host: https://kubeflow.example.com/pipeline, experiment: weekly, token_file: /var/run/kfp/token}

Relative paths are resolved against the current directory when the configuration is validated, because TFX
components may run in another working directory.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

from maskrcnn_tfx import label_map as label_map_lib
from maskrcnn_tfx.files import is_remote

RUNNERS = ("local", "beam", "kubeflow")
INFRA_VALIDATION_MODES = ("off", "docker", "kubernetes")
BOX_METRICS = ("pycocotools", "tfma")
# What trainer.init_checkpoint loads (trainer/config.py's INIT_CHECKPOINT_MODULES; kept here so the CLI does not
# import TensorFlow to list them).
INIT_CHECKPOINT_MODULES = ("backbone", "backbone_fpn", "all_but_class_layers", "all")
SPAN_TOKEN = "{SPAN}"
DEFAULT_PIPELINE_NAME = "maskrcnn-tfx"
DEFAULT_IMAGE = "maskrcnn-tfx:latest"
# In-process Beam: starting worker processes costs more than small runs spend computing (benchmarks/README.md).
LOCAL_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


class PipelineConfigError(ValueError):
    """The pipeline configuration is invalid; the message lists every problem found."""


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
    # Default: <root>/label_map.json, as the converter writes it.
    label_map_path: str = ""
    # A curated schema.pbtxt: ImportSchemaGen replaces SchemaGen, so the schema does not drift with the data.
    schema_path: str = ""

    @property
    def uses_hash_buckets(self) -> bool:
        return bool(self.pattern)


@dataclasses.dataclass
class TrainerSettings:
    """The Trainer: a preset of ``trainer/presets`` plus overrides (the Trainer's ``custom_config``)."""

    preset: str = "tiny"
    overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # train_steps 0: the configuration's train.train_steps. eval_steps: the Trainer's own evaluation (-1 = the
    # whole eval split); 0: none unless overrides set train.eval_steps (the Evaluator computes the same COCO AP).
    train_steps: int = 0
    eval_steps: int = 0
    # Fine-tuning: the Trainer's train.init_checkpoint (a checkpoint prefix, a folder of checkpoints or a
    # SavedModel; local paths are made absolute and checked) and train.init_checkpoint_modules ("backbone",
    # "backbone_fpn", "all_but_class_layers", "all"); "" keeps the preset's (and overrides') values.
    init_checkpoint: str = ""
    init_checkpoint_modules: str = ""


@dataclasses.dataclass
class EvaluationConfig:
    """When the Evaluator blesses a model (thresholds on the overall slice) and how it computes box AP.

    A model is blessed when its overall mask AP is strictly above ``min_mask_ap``, its box AP strictly above
    ``min_box_ap`` and, once there is a blessed model to compare with, neither AP is more than ``max_ap_drop``
    below that model's. With the defaults a model that detects nothing (AP 0.000) is never blessed. See
    pipelines/eval_config.py for how the bounds map onto TFMA's thresholds.
    """

    # Strict lower bounds on the overall AP: AP must be above this value. A negative bound lets every model with
    # a defined AP pass (a smoke run that must push whatever it trains); 1.0 lets none pass. None drops the
    # bound, and TFX's Evaluator blesses nothing without any threshold (so a first run, which has no baseline
    # yet, is never blessed or pushed when both bounds are None).
    min_mask_ap: Optional[float] = 0.001
    min_box_ap: Optional[float] = 0.001
    # Against the latest blessed model (when there is one): the candidate's AP may be at most this lower.
    max_ap_drop: Optional[float] = 0.0
    # "pycocotools" (default): COCO's exact box AP, computed like the mask AP
    # (maskrcnn_tfx.pipelines.metrics.COCOBoxAP); its cost does not grow with classes. "tfma": TFMA's
    # COCOMeanAveragePrecision (maskrcnn_tfx.pipelines.metrics.BoxMeanAveragePrecision), 40 Beam computations per class,
    # seconds per image and class: validate() warns when it would be slow. See pipelines/eval_config.py.
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
    """A recurring run on Kubeflow Pipelines or Vertex AI (see pipelines/submit.py); empty: a one-off run."""

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
    """Everything :func:`maskrcnn_tfx.pipelines.pipeline.create_pipeline` needs (see the module docstring)."""

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
    trainer: TrainerSettings = dataclasses.field(default_factory=TrainerSettings)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    infra_validation: InfraValidationConfig = dataclasses.field(default_factory=InfraValidationConfig)
    kubeflow: KubeflowConfig = dataclasses.field(default_factory=KubeflowConfig)

    # -- construction --------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "configuration") -> "PipelineConfig":
        """Builds a configuration from nested dicts; unknown keys and wrong types are errors."""
        problems: List[str] = []
        config = _build(cls, values, "", problems)
        if problems:
            raise PipelineConfigError(f"{source}: " + "; ".join(problems))
        return config

    @classmethod
    def from_yaml(cls, path: str) -> "PipelineConfig":
        try:
            with open(path, encoding="utf-8") as f:
                body = yaml.safe_load(f)
        except OSError as e:
            raise PipelineConfigError(f"cannot read the configuration file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise PipelineConfigError(f"{path}: not valid YAML ({e})") from None
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise PipelineConfigError(f"{path}: expected a mapping of configuration fields")
        return cls.from_dict(body, source=path)

    def replace(self, **changes: Any) -> "PipelineConfig":
        """A copy with some fields changed; nested sections given as dicts are merged into the current ones."""
        values = self.to_dict()
        _merge(values, changes)
        return PipelineConfig.from_dict(values)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    # -- derived values ------------------------------------------------------------------------------------

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

    def trainer_custom_config(self) -> Dict[str, Any]:
        """The Trainer's ``custom_config``: the trainer configuration dict of ``maskrcnn_tfx.trainer.task``."""
        custom = {"preset": self.trainer.preset, "label_map_path": self.label_map_path}
        _merge(custom, self.trainer.overrides)
        init = {key: getattr(self.trainer, key) for key in ("init_checkpoint", "init_checkpoint_modules")
                if getattr(self.trainer, key)}
        if init:
            _merge(custom, {"train": init})
        return custom

    # -- validation ----------------------------------------------------------------------------------------

    def validate(self, *, check_files: bool = True) -> "PipelineConfig":
        """Fills defaults, makes local paths absolute and checks every field; returns a validated copy.

        Raises :class:`PipelineConfigError` listing every problem. ``check_files`` also checks that the data
        and label map exist (not possible for remote paths at compile time on another machine).
        """
        c = PipelineConfig.from_dict(self.to_dict())
        problems: List[str] = []

        def need(condition: bool, message: str) -> None:
            if not condition:
                problems.append(message)

        need(bool(c.pipeline_name) and all(ch.isalnum() or ch in "-_." for ch in c.pipeline_name),
             f"pipeline_name must be non-empty letters, digits, '-', '_' or '.', not {c.pipeline_name!r}")
        need(c.runner in RUNNERS, f"runner must be one of {', '.join(RUNNERS)}, not {c.runner!r}")
        c.pipeline_root = _absolute(c.pipeline_root or os.path.join("outputs", "pipeline"))
        c.metadata_path = _absolute(c.metadata_path) if c.metadata_path else ""
        c.serving_dir = _absolute(c.serving_dir) if c.serving_dir else ""

        d = c.data
        need(bool(d.root), "data.root is required (--data DIR): the converter's output directory")
        d.root = _absolute(d.root) if d.root else d.root
        d.label_map_path = _absolute(d.label_map_path) if d.label_map_path else ""
        d.schema_path = _absolute(d.schema_path) if d.schema_path else ""
        if d.uses_hash_buckets:
            need(len(d.hash_buckets) == 2 and all(isinstance(b, int) and b > 0 for b in d.hash_buckets),
                 f"data.hash_buckets must be two positive integers (train, eval) with data.pattern, "
                 f"not {d.hash_buckets}")
            patterns = [d.pattern]
        else:
            need(not d.hash_buckets, "data.hash_buckets needs data.pattern (one pattern split by hash)")
            need(bool(d.train_pattern) and bool(d.eval_pattern), "data.train_pattern and data.eval_pattern "
                                                                  "are required without data.pattern")
            patterns = [d.train_pattern, d.eval_pattern]
        spans = [SPAN_TOKEN in p for p in patterns]
        need(all(spans) or not any(spans), f"either every pattern holds {SPAN_TOKEN} or none does: {patterns}")
        need(all(not os.path.isabs(p) for p in patterns), f"data patterns are relative to data.root: {patterns}")
        if check_files and d.root and not is_remote(d.root):
            need(os.path.isdir(d.root), f"data.root {d.root} is not a directory")
            need(os.path.isfile(c.label_map_path),
                 f"no label map at {c.label_map_path} (set data.label_map_path, or convert the data with "
                 f"maskrcnn-tfx convert-coco, which writes it)")
            if d.schema_path:
                need(os.path.isfile(d.schema_path), f"data.schema_path {d.schema_path} is not a file")

        t = c.trainer
        need(t.train_steps >= 0, f"trainer.train_steps must be >= 0 (0: the preset's), not {t.train_steps}")
        need(t.eval_steps >= -1, f"trainer.eval_steps must be >= -1, not {t.eval_steps}")
        need(isinstance(t.overrides, dict), "trainer.overrides must be a mapping of trainer fields")
        # Components may run in another working directory: a local checkpoint path is made absolute.
        if t.init_checkpoint and not is_remote(t.init_checkpoint):
            t.init_checkpoint = _checkpoint_path(t.init_checkpoint)
        train_overrides = t.overrides.get("train") if isinstance(t.overrides, dict) else None
        if isinstance(train_overrides, dict) and isinstance(train_overrides.get("init_checkpoint"), str) \
                and train_overrides["init_checkpoint"] and not is_remote(train_overrides["init_checkpoint"]):
            train_overrides["init_checkpoint"] = _checkpoint_path(train_overrides["init_checkpoint"])
        if not problems:
            # The Trainer would fail only after Transform: check the trainer configuration now.
            from maskrcnn_tfx.trainer import config as trainer_config  # pylint: disable=g-import-not-at-top
            try:
                init_checkpoint = trainer_config.load_config(
                    overrides=c.trainer_custom_config()).train.init_checkpoint
            except trainer_config.ConfigError as e:
                problems.append(f"trainer: {e}")
            else:
                # The Trainer would only find a missing checkpoint after Transform: check it now.
                if check_files and init_checkpoint and not is_remote(init_checkpoint):
                    problem = _checkpoint_problem(init_checkpoint)
                    need(problem is None, f"trainer.init_checkpoint: {problem}")

        e = c.evaluation
        for name in ("min_mask_ap", "min_box_ap"):
            value = getattr(e, name)
            need(value is None or -1.0 <= value <= 1.0,
                 f"evaluation.{name} must be in [-1, 1] (AP must be strictly above it), not {value}")
        need(e.max_ap_drop is None or 0.0 <= e.max_ap_drop <= 1.0,
             f"evaluation.max_ap_drop must be in [0, 1], not {e.max_ap_drop}")
        need(e.box_metric in BOX_METRICS,
             f"evaluation.box_metric must be one of {', '.join(BOX_METRICS)}, not {e.box_metric!r}")
        need(e.box_num_thresholds >= 2, f"evaluation.box_num_thresholds must be >= 2, not {e.box_num_thresholds}")
        need(e.max_detections >= 1, f"evaluation.max_detections must be >= 1, not {e.max_detections}")
        if e.box_metric == "tfma" and not problems:
            _warn_if_slow_tfma_box_metric(c)

        iv = c.infra_validation
        need(iv.mode in INFRA_VALIDATION_MODES,
             f"infra_validation.mode must be one of {', '.join(INFRA_VALIDATION_MODES)}, not {iv.mode!r}")
        need(bool(iv.serving_tags), "infra_validation.serving_tags must name at least one image tag")
        need(iv.num_examples >= 1, f"infra_validation.num_examples must be >= 1, not {iv.num_examples}")
        need(bool(c.kubeflow.image), "kubeflow.image is required")
        if c.runner == "kubeflow":
            # Kept in pipelines/submit.py: what a cluster's pods can read, and the submission options.
            from maskrcnn_tfx.pipelines import submit  # pylint: disable=g-import-not-at-top
            problems.extend(submit.config_problems(c))
        if problems:
            raise PipelineConfigError("invalid pipeline configuration:\n  " + "\n  ".join(problems))
        return c


# ---------------------------------------------------------------------------------------------------------


_WARNED: set = set()


def _warn_if_slow_tfma_box_metric(config: PipelineConfig) -> None:
    """Logs the expected cost of TFMA's box metric before anything runs, when it would be slow."""
    from maskrcnn_tfx.pipelines import eval_config  # pylint: disable=g-import-not-at-top  (TFMA: only when it is used)

    path = config.label_map_path
    try:
        if is_remote(path) or not os.path.isfile(path):
            raise OSError("not a local file")
        num_classes = len(label_map_lib.LabelMap.load(path))
    except (OSError, ValueError) as e:  # remote or not yet written: the classes are unknown
        logging.getLogger(__name__).warning("evaluation.box_metric 'tfma': its cost grows with classes x score "
                                            "thresholds (40 Beam computations per class, seconds per eval image "
                                            "and class); cannot read the label map %s to estimate it: %s", path, e)
        return
    cost = eval_config.tfma_box_metric_cost(num_classes, config.evaluation.box_num_thresholds)
    # Once per label map and thresholds: a run validates its configuration more than once.
    key = (path, cost.num_classes, cost.num_thresholds)
    if cost.slow and key not in _WARNED:
        _WARNED.add(key)
        logging.getLogger(__name__).warning("%s", cost.message())


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if not is_remote(path) else path


def _checkpoint_path(path: str) -> str:
    """An absolute checkpoint path; a checkpoint's ``.index`` file names its prefix."""
    path = _absolute(path)
    return path[:-len(".index")] if path.endswith(".index") else path


def _checkpoint_problem(path: str) -> Optional[str]:
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
        problem = _checkpoint_problem(prefix) if prefix != path else None
        return f"the latest checkpoint of {path}: {problem}" if problem else None
    if not os.path.isfile(path + ".index"):
        return (f"{path} does not exist: give a checkpoint prefix (e.g. .../ckpt-1000, whose .index and .data files "
                f"exist), a folder of checkpoints or a SavedModel folder")
    directory, name = os.path.split(path)
    if not any(f.startswith(name + ".data-") for f in os.listdir(directory or ".")):
        return f"the checkpoint {path} has an .index file but no .data files"
    return None


def _merge(base: Dict[str, Any], changes: Mapping[str, Any]) -> None:
    """Deep-merges ``changes`` into ``base`` (dicts merge, other values replace)."""
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


_SCALAR_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _build(cls, values: Mapping[str, Any], prefix: str, problems: List[str]):
    if not isinstance(values, Mapping):
        problems.append(f"{prefix.rstrip('.') or 'configuration'} must be a mapping, not {values!r}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: Dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in fields:
            problems.append(f"unknown field {name!r} (known: {', '.join(sorted(fields))})")
            continue
        default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING \
            else fields[key].default
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value or {}, f"{name}.", problems)
        else:
            kwargs[key] = _coerce(str(fields[key].type), value, name, problems)
    return cls(**kwargs)


def _coerce(type_name: str, value: Any, name: str, problems: List[str]) -> Any:
    """Checks a leaf's type from its annotation (``from __future__ import annotations`` makes it a string)."""
    optional = type_name.startswith("Optional[")
    inner = type_name[len("Optional["):-1] if optional else type_name
    if value is None:
        if not optional:
            problems.append(f"{name} may not be empty")
        return value
    if inner in _SCALAR_TYPES:
        tp = _SCALAR_TYPES[inner]
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            problems.append(f"{name} must be {inner}, not {value!r}")
        return value
    if inner.startswith("List["):
        if isinstance(value, str):
            value = value.split() if inner == "List[str]" else [value]
        if not isinstance(value, Sequence):
            problems.append(f"{name} must be a list, not {value!r}")
            return []
        item = inner[len("List["):-1]
        return [_coerce(item, v, f"{name}[{i}]", problems) for i, v in enumerate(value)]
    if inner.startswith("Dict["):
        if not isinstance(value, Mapping):
            problems.append(f"{name} must be a mapping, not {value!r}")
            return {}
        return dict(value)
    return value
