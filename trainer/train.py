"""Training without TFX: Model Garden's training loop (``train_lib.run_experiment``, orbit) on our configuration.

:func:`train_and_export` is what the TFX Trainer's ``run_fn`` calls (see :mod:`maskrcnn_tfx.trainer.task`), and what a
user calls to train outside a pipeline::

    from maskrcnn_tfx import config
    from maskrcnn_tfx.trainer import train
    result = train.train_and_export(config.load_trainer_config("tiny"), "data/train/*", "data/eval/*",
                                    model_dir="runs/1", serving_dir="runs/1/serving",
                                    label_map="data/label_map.json")

What a run leaves in ``model_dir``:

- ``ckpt-<step>.*`` and ``checkpoint``: every ``train.checkpoint_interval`` steps and at the end. A run
  started again with the same ``model_dir`` (after a crash or a kill) continues from the latest one.
- ``train/`` and ``validation/``: TensorBoard events (every loss term of Model Garden's task, the learning
  rate, steps/s; COCO box and mask metrics of each evaluation).
- ``trainer_config.yaml`` (the trainer section, complete: ``maskrcnn_tfx.config.trainer_from_dict`` reads it
  back) and ``params.yaml`` (Model Garden's experiment it maps to).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras
from official.core import train_lib
from official.core import train_utils
from official.modeling import performance

from maskrcnn_tfx import config as config_lib
from maskrcnn_tfx import progress
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx.trainer import experiment as experiment_lib
from maskrcnn_tfx.trainer import input as input_lib
from maskrcnn_tfx.trainer import model as model_lib
from maskrcnn_tfx.trainer import strategy as strategy_lib

logger = logging.getLogger(__name__)

CONFIG_FILE = "trainer_config.yaml"
Files = Union[str, Sequence[str]]


@dataclasses.dataclass
class TrainResult:
    """What a training run produced."""

    model: tf_keras.Model
    global_step: int
    # The last training loop's logs (loss terms, learning_rate) and the last evaluation's metrics.
    train_metrics: Dict[str, float]
    eval_metrics: Dict[str, float]
    model_dir: str
    # The strategy trained with, e.g. "MirroredStrategy", and its number of replicas.
    strategy: str = ""
    num_replicas: int = 1
    # Seconds per training step over the run's loops after the first (which includes tracing); None when the
    # run had a single loop.
    seconds_per_step: Optional[float] = None
    serving_model_dir: Optional[str] = None


class _LastOutput:
    """An orbit action that keeps the latest output (orbit passes every train loop's / evaluation's logs) and
    when each came, at which global step."""

    def __init__(self):
        self.value: Dict[str, float] = {}
        self.marks: List[Tuple[float, int]] = []

    def __call__(self, output: Mapping[str, Any]) -> None:
        self.value = {k: float(np.asarray(v)) for k, v in output.items() if np.asarray(v).size == 1}
        step = tf.summary.experimental.get_step()  # orbit's Controller sets it to its global step.
        self.marks.append((time.monotonic(), int(step.numpy()) if step is not None else -1))


def _seconds_per_step(train_marks: List[Tuple[float, int]], eval_marks: List[Tuple[float, int]]) -> Optional[float]:
    """Mean seconds per training step between consecutive train loops, skipping the first loop (tracing) and
    the intervals that contain an evaluation."""
    eval_times = [t for t, _ in eval_marks]
    seconds, steps = 0.0, 0
    for (t0, s0), (t1, s1) in zip(train_marks, train_marks[1:]):
        if s1 > s0 and not any(t0 < t < t1 for t in eval_times):
            seconds, steps = seconds + (t1 - t0), steps + (s1 - s0)
    return seconds / steps if steps else None


def _as_config(config: Union[config_lib.TrainerConfig, Mapping[str, Any], str]) -> config_lib.TrainerConfig:
    """A private copy of a trainer section (validated where it was made), or one loaded from a preset name or a
    dict of trainer fields (validated there)."""
    if isinstance(config, config_lib.TrainerConfig):
        return copy.deepcopy(config)
    if isinstance(config, str):
        return config_lib.load_trainer_config(config)
    return config_lib.load_trainer_config(changes=config)


def _as_label_map(label_map: Union[None, LabelMap, str]) -> LabelMap:
    if isinstance(label_map, LabelMap):
        return label_map
    if not label_map:
        raise config_lib.ConfigError("no label map: give label_map (a LabelMap or the path of label_map.json)")
    return LabelMap.load(label_map)


@contextlib.contextmanager
def _precision_policy(mg_dtype: str) -> Iterator[None]:
    """Model Garden's global Keras precision policy for the run, restored afterwards."""
    previous = tf_keras.mixed_precision.global_policy()
    performance.set_mixed_precision_policy(mg_dtype)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)


def _write_run_config(config: config_lib.TrainerConfig, experiment, model_dir: str) -> None:
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE), "w") as f:
        f.write(config_lib.to_yaml(config))
    train_utils.serialize_config(experiment, model_dir)


def _create_optimizer_weights(trainer) -> None:
    """Creates the optimizer's variables (Adam's moments, its hyperparameters) before the first training step.

    Keras creates them at the first ``apply_gradients``, inside the traced training loop, and a tf.function that
    creates variables on its first call is traced twice: tracing Mask R-CNN's training step is the largest fixed
    cost of a short run, and this saves the second one. The variables, their values (zeros) and their restoring
    from a checkpoint (deferred until they exist, as before) are the same.
    """
    optimizer, variables = trainer.optimizer, trainer.model.trainable_variables
    if hasattr(optimizer, "_create_all_weights"):  # Keras' legacy optimizers (Model Garden's default)
        optimizer._create_all_weights(variables)  # pylint: disable=protected-access  (what apply_gradients calls)
    elif hasattr(optimizer, "build"):  # Keras' new optimizers
        optimizer.build(variables)


def latest_step(model_dir: str) -> int:
    """The global step of the latest checkpoint in ``model_dir`` (0 when there is none)."""
    latest = tf.train.latest_checkpoint(model_dir)
    return int(latest.rsplit("-", 1)[-1]) if latest else 0


def train(config: Union[config_lib.TrainerConfig, Mapping[str, Any], str], train_files: Files,
          eval_files: Optional[Files], model_dir: str, *,
          label_map: Union[None, LabelMap, str] = None,
          tf_transform_output: Any = None,
          base_model: Optional[str] = None,
          strategy: Optional[tf.distribute.Strategy] = None) -> TrainResult:
    """Trains Model Garden's Mask R-CNN with Model Garden's loop; resumes from ``model_dir`` if it has a checkpoint.

    Args:
      config: a :class:`~maskrcnn_tfx.config.TrainerConfig`, a preset name, or a dict of trainer fields (may
        name a ``preset``); its ``train.train_steps`` and ``train.eval_steps`` are the run's steps.
      train_files, eval_files: TFRecord file patterns (GZIP or plain, see ``data.compression``). Without eval
        files (or with ``train.eval_steps`` 0) there is no evaluation.
      model_dir: checkpoints and TensorBoard summaries.
      label_map: a LabelMap or the path of its ``label_map.json`` (required).
      tf_transform_output: the Transform output (``TFTransformOutput`` or folder). When given, images are
        normalized with the data set's statistics carried by the examples; otherwise with ImageNet's.
      base_model: warm start for a fresh run: a previous SavedModel or checkpoint (ignored when resuming).
      strategy: a strategy to use instead of building ``config.runtime``'s.
    """
    cfg = _as_config(config)
    # A multi-worker strategy must exist before TensorFlow runs anything else: build it first.
    strategy = strategy or strategy_lib.build_strategy(cfg.runtime)
    chief = strategy_lib.is_chief(strategy)
    config_lib.check_replicas(cfg, strategy.num_replicas_in_sync)
    labels = _as_label_map(label_map)

    # Missing splits fail here, by name, rather than deep inside the input pipeline.
    input_lib.match_files(train_files)
    file_type = input_lib.resolve_file_type(cfg.data.compression, train_files)
    has_eval = bool(eval_files) and bool(input_lib.as_patterns(eval_files)) and cfg.train.eval_steps != 0
    if has_eval:
        input_lib.match_files(eval_files)
    eval_file_type = input_lib.resolve_file_type(cfg.data.compression, eval_files) if has_eval else file_type
    statistics_from_examples = tf_transform_output not in (None, "")
    has_statistics = input_lib.examples_have_pixel_statistics(train_files, file_type)
    if statistics_from_examples and not has_statistics:
        raise input_lib.InputError(
            f"a Transform output was given but the training examples ({input_lib.as_patterns(train_files)}) carry "
            f"no pixel statistics features; train on the Transform's transformed examples")
    if has_statistics and not statistics_from_examples:
        logger.warning("The examples carry the Transform's pixel statistics but no Transform output was given: "
                       "images are normalized with ImageNet's statistics, as the exported model will do.")

    experiment = experiment_lib.to_experiment_config(
        cfg, labels, train_input=input_lib.as_patterns(train_files),
        eval_input=input_lib.as_patterns(eval_files) if has_eval else "", file_type=file_type)
    experiment.task.validation_data.file_type = eval_file_type
    experiment.runtime.num_gpus = strategy_lib.num_gpu_replicas(strategy)
    logger.info("Training %s on %s (%s; %s files; %d classes)", cfg.model.backbone, strategy_lib.describe(strategy),
                "data set statistics" if statistics_from_examples else "ImageNet statistics", file_type,
                labels.num_classes)

    # Non-chief workers keep their (identical) copies out of the model dir.
    scratch_dir = None if chief else tempfile.mkdtemp(prefix="maskrcnn_tfx_worker_")
    try:
        logging_dir = model_dir if chief else scratch_dir
        if chief:
            _write_run_config(cfg, experiment, model_dir)
        else:
            tf.io.gfile.makedirs(logging_dir)
        last_train, last_eval = _LastOutput(), _LastOutput()
        with _precision_policy(experiment.runtime.mixed_precision_dtype):
            with strategy.scope():
                task = model_lib.build_task(experiment, logging_dir=logging_dir,
                                            statistics_from_examples=statistics_from_examples,
                                            warm_start_from=base_model)
            # Model Garden's runner: orbit Controller, CheckpointManager (restores the latest checkpoint of
            # model_dir, else calls task.initialize), summaries, periodic evaluation.
            runner = train_lib.OrbitExperimentRunner(
                distribution_strategy=strategy, task=task,
                mode="train_and_eval" if has_eval else "train",
                params=experiment, model_dir=model_dir, save_summary=chief,
                train_actions=[last_train], eval_actions=[last_eval])
            with strategy.scope():
                _create_optimizer_weights(runner.trainer)
            # The console's progress line and a log line every N steps (global step read from a thread).
            with progress.watch_steps(
                    "Trainer", lambda: runner.trainer.global_step.numpy(), cfg.train.train_steps,
                    loss=lambda: last_train.value.get("training_loss", last_train.value.get("total_loss")),
                    after="evaluating and exporting" if has_eval else "exporting", enabled=chief):
                model, _ = runner.run()
            global_step = int(runner.trainer.global_step.numpy())
    finally:
        if scratch_dir:
            shutil.rmtree(scratch_dir, ignore_errors=True)
    for name, value in last_train.value.items():
        if not math.isfinite(value):
            logger.warning("Training ended with a non-finite %s (%s)", name, value)
    return TrainResult(model=model, global_step=global_step, train_metrics=last_train.value,
                       eval_metrics=last_eval.value, model_dir=model_dir, strategy=type(strategy).__name__,
                       num_replicas=strategy.num_replicas_in_sync,
                       seconds_per_step=_seconds_per_step(last_train.marks, last_eval.marks))


def export(result: TrainResult, config: config_lib.TrainerConfig, label_map: LabelMap, serving_dir: str, *,
           tf_transform_output: Any = None, strategy: Optional[tf.distribute.Strategy] = None) -> str:
    """Writes the serving model (``maskrcnn_tfx.trainer.export``, in ``config.export``'s precision); non-chief workers
    write a scratch copy."""
    from maskrcnn_tfx.trainer import export as export_lib  # pylint: disable=g-import-not-at-top  (heavy; only at the end)

    chief = strategy_lib.is_chief(strategy)
    target = serving_dir if chief else tempfile.mkdtemp(prefix="maskrcnn_tfx_export_")
    try:
        export_lib.export_serving_model(result.model, config, label_map, target,
                                        tf_transform_output=tf_transform_output,
                                        precision=config.export.precision, jit_compile=config.export.jit_compile)
    finally:
        if not chief:
            shutil.rmtree(target, ignore_errors=True)
    return serving_dir


def _load_transform_output(tf_transform_output: Any) -> Any:
    """A ``TFTransformOutput`` from a folder path (the export needs the object)."""
    if isinstance(tf_transform_output, str) and tf_transform_output:
        import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top

        return tft.TFTransformOutput(tf_transform_output)
    return tf_transform_output or None


def train_and_export(config: Union[config_lib.TrainerConfig, Mapping[str, Any], str], train_files: Files,
                     eval_files: Optional[Files], model_dir: str, serving_dir: str, *,
                     label_map: Union[None, LabelMap, str] = None,
                     tf_transform_output: Any = None,
                     base_model: Optional[str] = None,
                     strategy: Optional[tf.distribute.Strategy] = None) -> TrainResult:
    """:func:`train`, then the serving model into ``serving_dir``. Arguments as for :func:`train`."""
    cfg = _as_config(config)
    strategy = strategy or strategy_lib.build_strategy(cfg.runtime)
    labels = _as_label_map(label_map)
    transform_output = _load_transform_output(tf_transform_output)
    result = train(cfg, train_files, eval_files, model_dir, label_map=labels, tf_transform_output=transform_output,
                   base_model=base_model, strategy=strategy)
    export(result, cfg, labels, serving_dir, tf_transform_output=transform_output, strategy=strategy)
    result.serving_model_dir = serving_dir
    return result
