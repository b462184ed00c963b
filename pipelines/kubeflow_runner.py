"""Compiles the pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines (a pipeline JSON; nothing runs here).

Every component runs in ``config.kubeflow.image`` (built from this repository's Dockerfile), which must hold
this project so that the custom components, ``maskrcnn_tfx.trainer.*`` and ``maskrcnn_tfx.pipelines.metrics`` import.
``pipelines/submit.py`` submits the JSON to a Kubeflow Pipelines endpoint or to Vertex AI. Paths in the
configuration (data, pipeline root, serving dir, trainer files) must be readable by the cluster: the
configuration's validation refuses paths on this machine's disk (see ``maskrcnn_tfx/config/submission.py``).
"""
from __future__ import annotations

import os

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
from tfx import v1 as tfx

from maskrcnn_tfx.files import is_remote
from maskrcnn_tfx.config import PipelineConfig
from maskrcnn_tfx.pipelines.pipeline import create_pipeline


def output_file(config: PipelineConfig) -> str:
    """Where the pipeline JSON goes: ``kubeflow.output_file``, else ``<pipeline_name>.json`` under the pipeline
    root when it is a mounted local folder, or the current directory when the root is remote."""
    if config.kubeflow.output_file:
        return os.path.abspath(config.kubeflow.output_file)
    folder = os.getcwd() if is_remote(config.pipeline_root) else config.pipeline_root
    return os.path.join(folder, f"{config.pipeline_name}.json")


def compile_pipeline(config: PipelineConfig) -> str:
    """Writes the KFP v2 pipeline JSON; returns its path."""
    if config.runner != "kubeflow":  # another runner makes another configuration, validated as it is made
        config = config.replace(runner="kubeflow")
    path = output_file(config)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=config.kubeflow.image),
        output_dir=os.path.dirname(path), output_filename=os.path.basename(path))
    runner.run(create_pipeline(config))
    return path
