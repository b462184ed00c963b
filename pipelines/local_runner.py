"""Runs the pipeline in this process with TFX's LocalDagRunner (the default runner).

Metadata is a SQLite file under the pipeline root (``config.metadata_path`` to change it); the data components
use in-process Beam unless ``beam_args`` say otherwise.
"""
from __future__ import annotations

import os
from typing import Optional

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
from tfx import v1 as tfx

from maskrcnn_tfx.config import PipelineConfig
from maskrcnn_tfx.pipelines.pipeline import create_pipeline
from maskrcnn_tfx.pipelines.run_output import drop_false_warnings


def run(config: PipelineConfig, pipeline: Optional[tfx.dsl.Pipeline] = None) -> None:
    """Runs every component to completion; a failing component raises. ``pipeline``: the one
    ``create_pipeline(config)`` already built, if the caller has it."""
    drop_false_warnings()
    if config.runner != "local":  # another runner makes another configuration, validated as it is made
        config = config.replace(runner="local")
    # SQLite needs the metadata file's folder to exist.
    os.makedirs(os.path.dirname(config.resolved_metadata_path), exist_ok=True)
    tfx.orchestration.LocalDagRunner().run(pipeline or create_pipeline(config))
