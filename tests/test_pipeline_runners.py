"""The pipeline configuration, the Beam runner end to end, the Kubeflow V2 compilation and the Dockerfile.

The Beam runner's end-to-end run is the span-2 run of the session's pipeline runs (tests/_pipeline_runs.py).
"""
import json
import os
import re

import pytest

import maskrcnn_tfx  # noqa: F401
from maskrcnn_tfx.testing.data import shapes_tfrecords

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> str:
    return shapes_tfrecords(str(tmp_path_factory.mktemp("shapes_data")), num_images=12, image_size=64, seed=7,
                            eval_fraction=0.25)


# ---------------------------------------------------------------------------------------------------------
# Configuration: YAML + flags, validated once with clear errors


def _args(*argv: str):
    import argparse  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx.pipelines import run_cli  # pylint: disable=g-import-not-at-top

    parser = argparse.ArgumentParser()
    run_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_yaml_and_flags_merge_and_resolve_defaults(tmp_path, shapes_data):
    from maskrcnn_tfx.pipelines import run_cli  # pylint: disable=g-import-not-at-top

    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text("pipeline_name: shapes\n"
                           "trainer: {preset: tiny, train_steps: 50, overrides: {train: {batch_size: 2}}}\n"
                           "evaluation: {min_mask_ap: 0.2, box_num_thresholds: 200}\n")
    config = run_cli.config_from_args(_args("--config", str(config_file), "--data", shapes_data,
                                            "--pipeline-root", str(tmp_path / "root"), "--train-steps", "7",
                                            "--min-box-ap", "0.1"))
    assert config.pipeline_name == "shapes" and config.runner == "local"
    assert config.trainer.train_steps == 7 and config.evaluation.min_mask_ap == 0.2
    assert config.evaluation.min_box_ap == 0.1 and config.evaluation.box_num_thresholds == 200
    assert config.resolved_metadata_path == str(tmp_path / "root" / "metadata.sqlite")
    assert config.resolved_serving_dir == str(tmp_path / "root" / "serving")
    assert config.label_map_path == os.path.join(shapes_data, "label_map.json")
    assert config.resolved_beam_args == ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    custom = config.trainer_custom_config()
    assert custom == {"preset": "tiny", "label_map_path": config.label_map_path, "train": {"batch_size": 2}}


def test_invalid_configuration_lists_every_problem(tmp_path, shapes_data):
    from maskrcnn_tfx.pipelines.config import PipelineConfig, PipelineConfigError  # pylint: disable=g-import-not-at-top

    with pytest.raises(PipelineConfigError, match="unknown field 'trainer.stepz'"):
        PipelineConfig.from_dict({"trainer": {"stepz": 3}})
    with pytest.raises(PipelineConfigError, match="evaluation.min_mask_ap must be float"):
        PipelineConfig.from_dict({"evaluation": {"min_mask_ap": "high"}})
    config = PipelineConfig.from_dict({
        "runner": "spark", "data": {"root": shapes_data, "train_pattern": "span-{SPAN}/train/*"},
        "evaluation": {"min_box_ap": 1.5, "box_metric": "coco"}, "infra_validation": {"mode": "docker-compose"}})
    with pytest.raises(PipelineConfigError) as info:
        config.validate()
    message = str(info.value)
    for expected in ("runner must be one of", "{SPAN}", "evaluation.min_box_ap must be in [-1, 1]",
                     "evaluation.box_metric must be one of pycocotools, tfma, not 'coco'", "infra_validation.mode"):
        assert expected in message, message
    with pytest.raises(PipelineConfigError, match="data.root is required"):
        PipelineConfig().validate()
    with pytest.raises(PipelineConfigError, match="no label map"):
        PipelineConfig.from_dict({"data": {"root": str(tmp_path)}}).validate()
    # The trainer configuration is checked too, before any component runs.
    with pytest.raises(PipelineConfigError, match="trainer:"):
        PipelineConfig.from_dict({"data": {"root": shapes_data},
                                  "trainer": {"overrides": {"train": {"batch_sise": 2}}}}).validate()


def test_cli_reports_configuration_errors(tmp_path, capsys):
    from maskrcnn_tfx import cli  # pylint: disable=g-import-not-at-top

    assert cli.main(["run", "--data", str(tmp_path / "missing")]) == 2
    assert "data.root" in capsys.readouterr().err


def test_factory_wires_every_component(tmp_path, shapes_data):
    from maskrcnn_tfx.pipelines.config import PipelineConfig  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines.pipeline import create_pipeline  # pylint: disable=g-import-not-at-top

    base = {"pipeline_root": str(tmp_path), "data": {"root": shapes_data}}
    ids = {c.id for c in create_pipeline(PipelineConfig.from_dict(base)).components}
    assert ids == {"ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "AnomaliesGate",
                   "AnnotationValidator", "Transform", "Trainer", "latest_blessed_model_resolver", "Evaluator",
                   "Pusher"}
    with_infra = create_pipeline(PipelineConfig.from_dict(dict(base, infra_validation={"mode": "docker"})))
    components = {c.id: c for c in with_infra.components}
    assert "InfraValidator" in components
    assert "infra_blessing" in components["Pusher"].inputs
    transform_upstream = {n.id for n in components["Transform"].upstream_nodes}
    assert {"AnomaliesGate", "AnnotationValidator"} <= transform_upstream

    # One pattern split into train and eval by hash buckets instead of two patterns.
    hashed = create_pipeline(PipelineConfig.from_dict(dict(base, data={"root": shapes_data, "pattern": "*/*",
                                                                       "hash_buckets": [3, 1]})))
    example_gen = next(c for c in hashed.components if c.id == "ImportExampleGen")
    input_config = json.loads(example_gen.exec_properties["input_config"])
    output_config = json.loads(example_gen.exec_properties["output_config"])
    assert [s["pattern"] for s in input_config["splits"]] == ["*/*"]
    assert {s["name"]: s["hash_buckets"] for s in output_config["split_config"]["splits"]} == {"train": 3, "eval": 1}


def test_trainer_evaluates_only_when_asked(tmp_path, shapes_data):
    """The Evaluator computes COCO AP on the eval split: by default the Trainer does not repeat it."""
    from maskrcnn_tfx.pipelines.config import PipelineConfig  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines.pipeline import create_pipeline  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.trainer import task  # pylint: disable=g-import-not-at-top

    def trainer_of(**fields):
        config = PipelineConfig.from_dict(dict({"pipeline_root": str(tmp_path), "data": {"root": shapes_data}},
                                               **fields))
        trainer = next(c for c in create_pipeline(config).components if c.id == "Trainer")
        # The step counts have one home, the custom_config: no TrainArgs/EvalArgs to outrank it.
        for args in ("train_args", "eval_args"):
            assert not json.loads(trainer.exec_properties[args] or "{}").get("num_steps"), args
        train = task.config_from_custom_config(json.loads(trainer.exec_properties["custom_config"])).train
        return train.eval_steps, train.train_steps

    preset_steps = task.config_from_custom_config({"preset": "tiny"}).train.train_steps
    assert trainer_of() == (0, preset_steps)
    assert trainer_of(trainer={"eval_steps": -1, "train_steps": 7}) == (-1, 7)
    assert trainer_of(trainer={"overrides": {"train": {"eval_steps": 5, "train_steps": 9}}}) == (5, 9)
    # The flag (trainer.train_steps) is the more specific setting and wins over the overrides.
    assert trainer_of(trainer={"train_steps": 3, "overrides": {"train": {"train_steps": 9}}}) == (0, 3)


def test_default_thresholds_let_a_first_run_be_blessed(tmp_path, shapes_data):
    """TFX's Evaluator validates (and so can bless) only when thresholds remain once the baseline's are dropped."""
    import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
    from tfx.utils import proto_utils  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx.pipelines.config import PipelineConfig  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines.pipeline import create_pipeline  # pylint: disable=g-import-not-at-top

    def first_run_thresholds(evaluation):
        config = PipelineConfig.from_dict({"pipeline_root": str(tmp_path), "data": {"root": shapes_data},
                                           "evaluation": evaluation})
        evaluator = next(c for c in create_pipeline(config).components if c.id == "Evaluator")
        eval_config = proto_utils.json_to_proto(evaluator.exec_properties["eval_config"], tfma.EvalConfig())
        # What the Evaluator does on a first run (no blessed model to compare with).
        eval_config = tfma.utils.update_eval_config_with_defaults(eval_config, has_baseline=False,
                                                                  rubber_stamp=True)
        return tfma.metrics.metric_thresholds_from_metrics_specs(eval_config.metrics_specs, eval_config=eval_config)

    defaults = first_run_thresholds({})
    assert {key.name for key in defaults} == {"mask_ap", "box_ap"}
    # The default bounds are strict: AP must be above 0.001, so a model that detects nothing is not blessed.
    from maskrcnn_tfx.pipelines import eval_config as eval_config_lib  # pylint: disable=g-import-not-at-top
    for pairs in defaults.values():
        assert {threshold.lower_bound.value for _, threshold in pairs} == {
            eval_config_lib.strict_lower_bound(eval_config_lib.DEFAULT_MIN_AP)}
    # Without lower bounds only the change thresholds are left, which a first run drops: nothing would bless.
    assert not first_run_thresholds({"min_mask_ap": None, "min_box_ap": None})


def _beam_args_by_component(pipeline):
    from tfx.dsl.components.base import executor_spec  # pylint: disable=g-import-not-at-top

    return {c.id: list(c.executor_spec.beam_pipeline_args) for c in pipeline.components
            if isinstance(getattr(c, "executor_spec", None), executor_spec.BeamExecutorSpec)}


def test_beam_args_reach_every_beam_component(tmp_path, shapes_data):
    from maskrcnn_tfx.pipelines import run_cli  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines.pipeline import create_pipeline  # pylint: disable=g-import-not-at-top

    common = ("--data", shapes_data, "--pipeline-root", str(tmp_path / "root"))
    # The Beam runner's default: Beam's DirectRunner in one worker process per core.
    by_component = _beam_args_by_component(create_pipeline(run_cli.config_from_args(_args("--runner", "beam",
                                                                                          *common))))
    assert {"ImportExampleGen", "StatisticsGen", "AnnotationValidator", "Transform", "Evaluator"} <= set(by_component)
    for component_id, args in by_component.items():
        assert "--direct_running_mode=multi_processing" in args, (component_id, args)
        assert f"--direct_num_workers={os.cpu_count()}" in args, (component_id, args)
    # Given Beam arguments replace the defaults and pass through unchanged, e.g. for Flink.
    flink = ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--environment_type=LOOPBACK"]
    config = run_cli.config_from_args(_args("--runner", "beam", *common, *(f"--beam-arg={a}" for a in flink)))
    for component_id, args in _beam_args_by_component(create_pipeline(config)).items():
        assert args == flink, (component_id, args)


# ---------------------------------------------------------------------------------------------------------
# Beam runner


@pytest.mark.slow
def test_beam_runner_end_to_end(local_pipeline):
    """The session's span-2 run (tests/_pipeline_runs.py) is the Beam runner's: every component executes."""
    run = local_pipeline.runs["span2"]
    assert run.config.runner == "beam"
    assert "--direct_running_mode=multi_processing" in run.config.resolved_beam_args
    summary = run.summary
    assert set(summary.executions) >= {"ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                                       "AnomaliesGate", "AnnotationValidator", "Transform", "Trainer",
                                       "Evaluator", "Pusher"}
    assert {e.state for e in summary.executions.values()} == {"COMPLETE"}, summary.lines()
    assert summary.blessed and summary.pushed
    assert os.path.isfile(os.path.join(summary.pushed_model_path, "saved_model.pb"))
    assert summary.pushed_version.isdigit() and summary.pushed_version == run.versions[-1]


# ---------------------------------------------------------------------------------------------------------
# Kubeflow V2 compilation and its image


def test_kubeflow_compile_names_components_image_and_parameters(tmp_path, shapes_data, capsys):
    from maskrcnn_tfx import cli  # pylint: disable=g-import-not-at-top

    output = tmp_path / "kfp" / "pipeline.json"
    image = "gcr.io/example/maskrcnn-tfx:0.1.0"
    # The data on a volume every pod mounts (a local path is refused otherwise: tests/test_submit.py).
    code = cli.main(["run", "--runner", "kubeflow", "--data", shapes_data, "--mounted-path",
                     os.path.dirname(shapes_data), "--pipeline-root", "gs://bucket/root",
                     "--serving-dir", "gs://bucket/serving", "--image", image, "--output-file", str(output),
                     "--train-steps", "1234", "--min-mask-ap", "0.375"])
    assert code == 0
    assert str(output) in capsys.readouterr().out
    spec = json.loads(output.read_text())["pipelineSpec"]
    tasks = set(spec["root"]["dag"]["tasks"])
    for component_id in ("ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "AnomaliesGate",
                         "AnnotationValidator", "Transform", "Trainer", "Evaluator", "Pusher"):
        assert component_id in tasks, tasks
    assert any(t.startswith("latest_blessed_model_resolver") for t in tasks)
    # Both validators gate Transform on the cluster too.
    assert {"AnomaliesGate", "AnnotationValidator"} <= set(spec["root"]["dag"]["tasks"]["Transform"]["dependentTasks"])
    # The custom artifact type compiles to KFP's generic schema titled with its importable class path.
    anomalies_type = spec["components"]["AnnotationValidator"]["outputDefinitions"]["artifacts"]["anomalies"]
    assert "title: components.InstanceAnomalies" in anomalies_type["artifactType"]["instanceSchema"]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e}
    assert images == {image}
    text = output.read_text()
    assert '\\"train_steps\\": 1234' in text  # in the Trainer's custom_config, its one home
    assert '\\"lower_bound\\": 0.375' in text
    assert "gs://bucket/serving" in text and "maskrcnn_tfx.trainer.task.run_fn" in text


def test_dockerfile_builds_on_tfx_with_the_constraints():
    with open(os.path.join(REPO, "Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    assert re.search(r"^FROM tensorflow/tfx:1\.16\.0$", dockerfile, re.M)
    assert "-c requirements/constraints.txt" in dockerfile
    for package in ("maskrcnn_tfx", "components", "pipelines", "trainer"):
        assert f"COPY {package} {package}" in dockerfile
