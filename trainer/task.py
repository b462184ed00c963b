"""The TFX Trainer module: ``run_fn(fn_args)`` for the generic Trainer executor.

Use it as the Trainer's ``module_file`` (or ``run_fn="maskrcnn_tfx.trainer.task.run_fn"``)::

    tfx.components.Trainer(
        run_fn="maskrcnn_tfx.trainer.task.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        train_args=tfx.proto.TrainArgs(num_steps=800),
        eval_args=tfx.proto.EvalArgs(num_steps=-1),  # or leave out: the configuration's train.eval_steps
        custom_config={"preset": "tiny", "label_map_path": ".../label_map.json",
                       "train": {"batch_size": 8}})

``custom_config`` is the Trainer configuration as a dict (see :mod:`maskrcnn_tfx.trainer.config`), optionally naming the
preset it starts from under ``"preset"``; its ``export`` section sets the serving model's precision (e.g.
``{"export": {"precision": "bfloat16"}}``). Keys of TFX's Google Cloud extensions (``ai_platform_*``) are
ignored. ``TrainArgs.num_steps`` / ``EvalArgs.num_steps``, when set, override ``train.train_steps`` /
``train.eval_steps`` (EvalArgs' -1: the whole eval split).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)

from maskrcnn_tfx.trainer import config as config_lib
from maskrcnn_tfx.trainer import train as train_lib

logger = logging.getLogger(__name__)

# custom_config keys that TFX's Google Cloud (Vertex AI) Trainer extension adds for itself.
_PLATFORM_KEY_PREFIX = "ai_platform_"


def config_from_custom_config(custom_config: Optional[Mapping[str, Any]]) -> config_lib.TrainerConfig:
    """The validated Trainer configuration held by a TFX Trainer's ``custom_config``."""
    values: Dict[str, Any] = {k: v for k, v in (custom_config or {}).items()
                              if not str(k).startswith(_PLATFORM_KEY_PREFIX)}
    return config_lib.load_config(overrides=values)


def run_fn(fn_args: Any) -> None:
    """Trains Model Garden's Mask R-CNN on the (transformed) examples and writes the serving model.

    Reads ``fn_args.train_files``/``eval_files``, ``custom_config``, ``transform_output`` (may be None),
    ``train_steps``/``eval_steps``, ``base_model`` (warm start), and writes checkpoints and TensorBoard
    summaries to ``model_run_dir`` and the SavedModel to ``serving_model_dir``. Restarted with the same
    ``model_run_dir`` (a retried execution), training continues from the latest checkpoint.
    """
    config = config_from_custom_config(fn_args.custom_config)
    # TFX passes 0/None for "not set"; EvalArgs(num_steps=-1) is not a TFX value but is accepted here too.
    eval_steps = fn_args.eval_steps if fn_args.eval_steps else None
    result = train_lib.train_and_export(
        config,
        train_files=fn_args.train_files,
        eval_files=fn_args.eval_files,
        model_dir=fn_args.model_run_dir,
        serving_dir=fn_args.serving_model_dir,
        tf_transform_output=getattr(fn_args, "transform_output", None) or getattr(fn_args, "transform_graph_path",
                                                                                  None),
        base_model=fn_args.base_model,
        train_steps=fn_args.train_steps or None,
        eval_steps=eval_steps,
    )
    logger.info("Trained to step %d; serving model in %s; eval %s", result.global_step, fn_args.serving_model_dir,
                {k: v for k, v in result.eval_metrics.items() if k in ("AP", "mask_AP")})
