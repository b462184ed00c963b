"""The one pipeline factory: :func:`create_pipeline` builds the TFX pipeline every runner executes.

ImportExampleGen -> StatisticsGen -> SchemaGen (or ImportSchemaGen with a curated schema) -> ExampleValidator
(-> AnomaliesGate) and AnnotationValidator -> Transform -> Trainer -> Resolver (latest blessed model) ->
Evaluator -> [InfraValidator] -> Pusher.

Both validators gate Transform (and so training): an error found by either stops the run before any
training, with a report (TFDV's anomalies by feature, the AnnotationValidator's by record).
"""
from __future__ import annotations

from typing import List, Optional

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
from tfx import v1 as tfx
from tfx.dsl.components.base import base_node

from maskrcnn_tfx import config as config_lib
from maskrcnn_tfx.components.annotation_validator import AnnotationValidator
from maskrcnn_tfx.components.anomalies_gate import AnomaliesGate
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx.pipelines import component_ids as ids
from maskrcnn_tfx.pipelines import eval_config as eval_config_lib
from maskrcnn_tfx.config import PipelineConfig

PREPROCESSING_FN = "maskrcnn_tfx.trainer.preprocessing.preprocessing_fn"
RUN_FN = "maskrcnn_tfx.trainer.task.run_fn"
SERVING_SIGNATURE = eval_config_lib.DEFAULT_SIGNATURE


def _input_config(config: PipelineConfig) -> tfx.proto.Input:
    data = config.data
    if data.uses_hash_buckets:
        return tfx.proto.Input(splits=[tfx.proto.Input.Split(name="single_split", pattern=data.pattern)])
    return tfx.proto.Input(splits=[tfx.proto.Input.Split(name="train", pattern=data.train_pattern),
                                   tfx.proto.Input.Split(name="eval", pattern=data.eval_pattern)])


def _output_config(config: PipelineConfig) -> Optional[tfx.proto.Output]:
    if not config.data.uses_hash_buckets:
        return None
    train, eval_ = config.data.hash_buckets
    return tfx.proto.Output(split_config=tfx.proto.SplitConfig(splits=[
        tfx.proto.SplitConfig.Split(name="train", hash_buckets=train),
        tfx.proto.SplitConfig.Split(name="eval", hash_buckets=eval_)]))


def _infra_validator(config: PipelineConfig, examples, model) -> Optional[tfx.components.InfraValidator]:
    iv = config.infra_validation
    if iv.mode == "off":
        return None
    serving = tfx.proto.TensorFlowServing(image_name=iv.serving_image, tags=list(iv.serving_tags))
    if iv.mode == "docker":
        serving_spec = tfx.proto.ServingSpec(tensorflow_serving=serving, local_docker=tfx.proto.LocalDockerConfig())
    else:
        serving_spec = tfx.proto.ServingSpec(tensorflow_serving=serving, kubernetes=tfx.proto.KubernetesConfig())
    # A few real requests through the tf.Example signature: the model must load AND answer.
    request_spec = tfx.proto.RequestSpec(
        tensorflow_serving=tfx.proto.TensorFlowServingRequestSpec(signature_names=[SERVING_SIGNATURE]),
        num_examples=iv.num_examples, split_name="eval")
    return tfx.components.InfraValidator(model=model, examples=examples, serving_spec=serving_spec,
                                         request_spec=request_spec).with_id(ids.INFRA_VALIDATOR)


def create_pipeline(config: PipelineConfig) -> tfx.dsl.Pipeline:
    """The TFX pipeline of ``config`` (from :func:`maskrcnn_tfx.config.load`, validated there), for any runner.

    The metadata connection is SQLite under the pipeline root for the local and Beam runners; Kubeflow
    provides its own.
    """
    label_map = LabelMap.load(config.label_map_path)
    # Before anything runs: TFMA's box metric on many classes would keep the Evaluator busy for hours.
    eval_config_lib.warn_if_slow_box_metric(config.evaluation, label_map)

    example_gen = tfx.components.ImportExampleGen(
        input_base=config.data.root, input_config=_input_config(config),
        output_config=_output_config(config)).with_id(ids.EXAMPLE_GEN)
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"]).with_id(ids.STATISTICS_GEN)
    if config.data.schema_path:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=config.data.schema_path).with_id(ids.IMPORT_SCHEMA_GEN)
    else:
        # Per-instance features vary in length; a shape inferred from a few images would reject new data.
        schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                              infer_feature_shape=False).with_id(ids.SCHEMA_GEN)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"]).with_id(ids.EXAMPLE_VALIDATOR)
    anomalies_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"]).with_id(ids.ANOMALIES_GATE)
    # Training data is held to the served model's image size limit.
    annotation_validator = AnnotationValidator(
        examples=example_gen.outputs["examples"], label_map_path=config.label_map_path,
        max_image_pixels=config.trainer.export.max_image_pixels).with_id(ids.ANNOTATION_VALIDATOR)

    # No TFDV statistics of its own: before the transform they are StatisticsGen's on the same examples, after
    # it the same features plus two constant ones. No analyzer cache: nothing feeds it back (it pays off
    # only with analyzer_cache wired from an earlier span), and writing it is a pass of its own.
    transform = tfx.components.Transform(examples=example_gen.outputs["examples"],
                                         schema=schema_gen.outputs["schema"], preprocessing_fn=PREPROCESSING_FN,
                                         disable_statistics=True, disable_analyzer_cache=True).with_id(ids.TRANSFORM)
    # Both validators gate the first costly step: nothing is transformed or trained on data that failed.
    transform.add_upstream_node(anomalies_gate)
    transform.add_upstream_node(annotation_validator)

    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        # Every training setting, the steps included: no TrainArgs/EvalArgs (maskrcnn_tfx/trainer/task.py).
        custom_config=config_lib.trainer_custom_config(config)).with_id(ids.TRAINER)

    # The model to beat: the latest one the Evaluator blessed (none on the first run: no comparison then).
    baseline_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing)).with_id(ids.RESOLVER)

    ev = config.evaluation
    eval_config = eval_config_lib.build_eval_config(
        label_map, signature_name=SERVING_SIGNATURE, min_mask_ap=ev.min_mask_ap, min_box_ap=ev.min_box_ap,
        max_ap_drop=ev.max_ap_drop, with_baseline=True, box_metric=ev.box_metric,
        box_num_thresholds=ev.box_num_thresholds, max_detections=ev.max_detections)
    # Raw examples: the model's tf.Example signature applies the Transform graph itself.
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=baseline_resolver.outputs["model"], eval_config=eval_config,
        module_path=eval_config_lib.EVALUATOR_MODULE_PATH).with_id(ids.EVALUATOR)

    infra_validator = _infra_validator(config, example_gen.outputs["examples"], trainer.outputs["model"])
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        infra_blessing=infra_validator.outputs["blessing"] if infra_validator else None,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.resolved_serving_dir))
    ).with_id(ids.PUSHER)

    components: List[base_node.BaseNode] = [
        example_gen, statistics_gen, schema_gen, example_validator, anomalies_gate, annotation_validator,
        transform, trainer, baseline_resolver, evaluator]
    components += [infra_validator] if infra_validator else []
    components.append(pusher)

    metadata = None
    if config.runner != "kubeflow":
        metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(config.resolved_metadata_path)
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata,
        beam_pipeline_args=config.resolved_beam_args)
