"""Runs the pipeline with TFX's BeamDagRunner: components are orchestrated as a Beam pipeline.

By default Beam's DirectRunner runs the data components in worker processes (one per core). ``beam_args`` pass
through to every Beam step, so the same pipeline runs on Flink, Spark or Dataflow, e.g.::

    maskrcnn-tfx run --runner beam --data gs://bucket/data --pipeline-root gs://bucket/root \\
        --beam-arg=--runner=DataflowRunner --beam-arg=--project=my-project --beam-arg=--region=us-central1
"""
from __future__ import annotations

import os
from typing import Optional

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
from tfx import v1 as tfx
# Not exported under tfx.v1 in TFX 1.16; this is the IR-based runner (the same MLMD layout as LocalDagRunner).
from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

from maskrcnn_tfx.config import PipelineConfig
from maskrcnn_tfx.files import is_remote
from maskrcnn_tfx.pipelines.pipeline import create_pipeline
from maskrcnn_tfx.pipelines.run_output import drop_false_warnings


def run(config: PipelineConfig, pipeline: Optional[tfx.dsl.Pipeline] = None) -> None:
    """Runs the pipeline with BeamDagRunner; a failing component raises. ``pipeline``: the one
    ``create_pipeline(config)`` already built, if the caller has it."""
    drop_false_warnings()
    if config.runner != "beam":  # another runner makes another configuration, validated as it is made
        config = config.replace(runner="beam")
    if not is_remote(config.resolved_metadata_path):
        os.makedirs(os.path.dirname(config.resolved_metadata_path), exist_ok=True)
    BeamDagRunner().run(pipeline or create_pipeline(config))
