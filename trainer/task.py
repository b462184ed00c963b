"""The TFX Trainer module: ``run_fn(fn_args)`` for the generic Trainer executor.

Use it as the Trainer's ``run_fn`` (``maskrcnn_tfx/pipelines/pipeline.py`` does)::

    tfx.components.Trainer(
        run_fn="maskrcnn_tfx.trainer.task.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        custom_config=maskrcnn_tfx.config.trainer_custom_config(pipeline_config))

``custom_config`` holds the resolved trainer section and the label map path (see
:func:`maskrcnn_tfx.config.trainer_custom_config`); it is validated here, once, as it enters. Every training
setting, the step counts included, has its home there: ``TrainArgs``/``EvalArgs`` are not needed, and a
``num_steps`` that disagrees with the trainer section is an error rather than a second, silent winner. Keys of
TFX's Google Cloud extensions (``ai_platform_*``) are ignored.
"""
from __future__ import annotations

import logging
from typing import Any

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)

from maskrcnn_tfx import config as config_lib
from maskrcnn_tfx.trainer import train as train_lib

logger = logging.getLogger(__name__)


def _check_step_args(fn_args: Any, trainer: config_lib.TrainerConfig) -> None:
    """TrainArgs/EvalArgs may repeat the trainer section's step counts, never contradict them."""
    for arg, field, value in (("TrainArgs", "train_steps", getattr(fn_args, "train_steps", None)),
                              ("EvalArgs", "eval_steps", getattr(fn_args, "eval_steps", None))):
        # TFX passes 0/None for "not set".
        if value and int(value) != getattr(trainer.train, field):
            raise config_lib.ConfigError(
                f"{arg}.num_steps is {value} but the trainer section's train.{field} is "
                f"{getattr(trainer.train, field)}: the steps have one home, custom_config['trainer']['train']"
                f"['{field}'] (maskrcnn-tfx run --{field.replace('_', '-')}); drop {arg} from the Trainer")


def run_fn(fn_args: Any) -> None:
    """Trains Model Garden's Mask R-CNN on the (transformed) examples and writes the serving model.

    Reads ``fn_args.train_files``/``eval_files``, ``custom_config``, ``transform_output`` (may be None),
    ``base_model`` (warm start), and writes checkpoints and TensorBoard summaries to ``model_run_dir`` and the
    SavedModel to ``serving_model_dir``. Restarted with the same ``model_run_dir`` (a retried execution),
    training continues from the latest checkpoint.
    """
    trainer, label_map_path = config_lib.from_trainer_custom_config(fn_args.custom_config)
    _check_step_args(fn_args, trainer)
    result = train_lib.train_and_export(
        trainer,
        train_files=fn_args.train_files,
        eval_files=fn_args.eval_files,
        model_dir=fn_args.model_run_dir,
        serving_dir=fn_args.serving_model_dir,
        label_map=label_map_path,
        tf_transform_output=getattr(fn_args, "transform_output", None) or getattr(fn_args, "transform_graph_path",
                                                                                  None),
        base_model=fn_args.base_model,
    )
    logger.info("Trained to step %d; serving model in %s; eval %s", result.global_step, fn_args.serving_model_dir,
                {k: v for k, v in result.eval_metrics.items() if k in ("AP", "mask_AP")})
