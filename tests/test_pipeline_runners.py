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
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines import run_cli  # pylint: disable=g-import-not-at-top

    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text("pipeline_name: shapes\n"
                           "trainer: {preset: tiny, train: {train_steps: 50, batch_size: 2}}\n"
                           "evaluation: {min_mask_ap: 0.2, box_num_thresholds: 200}\n")
    config = run_cli.config_from_args(_args("--config", str(config_file), "--data", shapes_data,
                                            "--pipeline-root", str(tmp_path / "root"), "--train-steps", "7",
                                            "--min-box-ap", "0.1"))
    assert config.pipeline_name == "shapes" and config.runner == "local"
    assert config.trainer.train.train_steps == 7 and config.evaluation.min_mask_ap == 0.2
    assert config.evaluation.min_box_ap == 0.1 and config.evaluation.box_num_thresholds == 200
    assert config.resolved_metadata_path == str(tmp_path / "root" / "metadata.sqlite")
    assert config.resolved_serving_dir == str(tmp_path / "root" / "serving")
    assert config.label_map_path == os.path.join(shapes_data, "label_map.json")
    # The local runner's Beam is Beam's own default (in memory, one worker), asked for with no flags at all.
    assert config.resolved_beam_args == []
    # The trainer section is resolved from its preset: the file's and the flags' fields over the preset's.
    tiny = config_lib.load_trainer_config("tiny")
    assert config.trainer.train.batch_size == 2 and config.trainer.model == tiny.model
    custom = config_lib.trainer_custom_config(config)
    assert custom == {"trainer": config_lib.to_dict(config.trainer), "label_map_path": config.label_map_path}
    # A preset given by flag applies under the file's trainer fields.
    finetune = run_cli.config_from_args(_args("--config", str(config_file), "--data", shapes_data,
                                              "--preset", "finetune"))
    assert finetune.trainer.preset == "finetune" and finetune.trainer.train.batch_size == 2
    assert finetune.trainer.train.learning_rate == config_lib.load_trainer_config("finetune").train.learning_rate


def test_invalid_configuration_lists_every_problem(tmp_path, shapes_data):
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.config import ConfigError  # pylint: disable=g-import-not-at-top

    with pytest.raises(ConfigError, match="unknown field 'trainer.stepz'"):
        config_lib.from_dict({"trainer": {"stepz": 3}})
    with pytest.raises(ConfigError, match="evaluation.min_mask_ap must be a number or null"):
        config_lib.from_dict({"evaluation": {"min_mask_ap": "high"}})
    with pytest.raises(ConfigError) as info:
        config_lib.from_dict({
            "runner": "spark", "data": {"root": shapes_data, "train_pattern": "span-{SPAN}/train/*"},
            "evaluation": {"min_box_ap": 1.5, "box_metric": "coco"}, "infra_validation": {"mode": "docker-compose"},
            "trainer": {"model": {"input_size": 100}}})
    message = str(info.value)
    for expected in ("runner must be one of", "{SPAN}", "evaluation.min_box_ap must be in [-1, 1]",
                     "evaluation.box_metric must be one of pycocotools, tfma, not 'coco'", "infra_validation.mode",
                     # The trainer section is checked with the rest, before any component runs.
                     "trainer.model.input_size (100) must be a positive multiple of 2**max_level = 32"):
        assert expected in message, message
    with pytest.raises(ConfigError, match="data.root is required"):
        config_lib.from_dict({})
    with pytest.raises(ConfigError, match="no label map"):
        config_lib.from_dict({"data": {"root": str(tmp_path)}})
    with pytest.raises(ConfigError, match="unknown field 'trainer.train.batch_sise'"):
        config_lib.from_dict({"data": {"root": shapes_data}, "trainer": {"train": {"batch_sise": 2}}})
    with pytest.raises(ConfigError, match="unknown preset 'tinny'"):
        config_lib.from_dict({"data": {"root": shapes_data}, "trainer": {"preset": "tinny"}})


def test_configuration_of_an_older_release_says_how_to_write_it_now(shapes_data):
    """trainer.overrides and the trainer's own step and checkpoint fields are refused with the section rewritten."""
    import yaml  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top

    older = {"preset": "finetune", "train_steps": 200, "eval_steps": -1, "init_checkpoint": "/ckpt/ckpt-5",
             "overrides": {"train": {"batch_size": 4}, "model": {"input_size": 256}}}
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.from_dict({"data": {"root": shapes_data}, "trainer": older})
    message = str(info.value)
    assert "trainer.overrides, trainer.train_steps, trainer.eval_steps, trainer.init_checkpoint" in message
    rewritten = yaml.safe_load(message.split("Write it as:\n", 1)[1])
    assert rewritten == {"trainer": {"preset": "finetune", "train": {"batch_size": 4, "train_steps": 200,
                                                                     "eval_steps": -1,
                                                                     "init_checkpoint": "/ckpt/ckpt-5"},
                                     "model": {"input_size": 256}}}
    # What the message says to write is accepted, and means what the older section meant.
    now = config_lib.from_dict({"data": {"root": shapes_data}, "trainer": rewritten["trainer"]}, check_files=False)
    assert (now.trainer.train.train_steps, now.trainer.train.eval_steps, now.trainer.model.input_size) == (200, -1, 256)


def test_cli_reports_configuration_errors(tmp_path, capsys):
    from maskrcnn_tfx import cli  # pylint: disable=g-import-not-at-top

    assert cli.main(["run", "--data", str(tmp_path / "missing")]) == 2
    assert "data.root" in capsys.readouterr().err


def test_factory_wires_every_component(tmp_path, shapes_data):
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines.pipeline import create_pipeline  # pylint: disable=g-import-not-at-top

    base = {"pipeline_root": str(tmp_path), "data": {"root": shapes_data}}
    ids = {c.id for c in create_pipeline(config_lib.from_dict(base)).components}
    assert ids == {"ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "AnomaliesGate",
                   "AnnotationValidator", "Transform", "Trainer", "latest_blessed_model_resolver", "Evaluator",
                   "Pusher"}
    with_infra = create_pipeline(config_lib.from_dict(dict(base, infra_validation={"mode": "docker"})))
    components = {c.id: c for c in with_infra.components}
    assert "InfraValidator" in components
    assert "infra_blessing" in components["Pusher"].inputs
    transform_upstream = {n.id for n in components["Transform"].upstream_nodes}
    assert {"AnomaliesGate", "AnnotationValidator"} <= transform_upstream

    # One pattern split into train and eval by hash buckets instead of two patterns.
    hashed = create_pipeline(config_lib.from_dict(dict(base, data={"root": shapes_data, "pattern": "*/*",
                                                                       "hash_buckets": [3, 1]})))
    example_gen = next(c for c in hashed.components if c.id == "ImportExampleGen")
    input_config = json.loads(example_gen.exec_properties["input_config"])
    output_config = json.loads(example_gen.exec_properties["output_config"])
    assert [s["pattern"] for s in input_config["splits"]] == ["*/*"]
    assert {s["name"]: s["hash_buckets"] for s in output_config["split_config"]["splits"]} == {"train": 3, "eval": 1}


def test_trainer_custom_config_is_the_steps_one_home(tmp_path, shapes_data):
    """The Trainer gets the resolved trainer section, steps included; by default it does not evaluate (the
    Evaluator computes COCO AP on the eval split)."""
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines.pipeline import create_pipeline  # pylint: disable=g-import-not-at-top

    def trainer_of(**fields):
        config = config_lib.from_dict(dict({"pipeline_root": str(tmp_path), "data": {"root": shapes_data}},
                                           **fields))
        trainer = next(c for c in create_pipeline(config).components if c.id == "Trainer")
        # The step counts have one home, the custom_config: no TrainArgs/EvalArgs beside it.
        for args in ("train_args", "eval_args"):
            assert not json.loads(trainer.exec_properties[args] or "{}").get("num_steps"), args
        custom = json.loads(trainer.exec_properties["custom_config"])
        train, label_map_path = config_lib.from_trainer_custom_config(custom)
        assert label_map_path == config.label_map_path and train == config.trainer
        return train.train.eval_steps, train.train.train_steps

    preset = config_lib.load_trainer_config("tiny").train
    assert (preset.eval_steps, preset.train_steps) == (0, 800)
    assert trainer_of() == (0, 800)
    assert trainer_of(trainer={"train": {"eval_steps": -1, "train_steps": 7}}) == (-1, 7)


def test_trainer_refuses_step_args_that_contradict_its_configuration(shapes_data):
    """TrainArgs/EvalArgs of a hand-written pipeline may repeat the trainer section's steps, never override them."""
    import types  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.trainer import task  # pylint: disable=g-import-not-at-top

    trainer = config_lib.load_trainer_config("tiny", {"train": {"train_steps": 30}})
    check = task._check_step_args  # pylint: disable=protected-access
    check(types.SimpleNamespace(train_steps=30, eval_steps=0), trainer)
    with pytest.raises(config_lib.ConfigError, match=r"TrainArgs.num_steps is 50 .* train.train_steps is 30"):
        check(types.SimpleNamespace(train_steps=50, eval_steps=None), trainer)
    # A custom_config written by an older release (the trainer fields at the top level) is refused by name.
    with pytest.raises(config_lib.ConfigError, match="compiled by an older release"):
        config_lib.from_trainer_custom_config({"preset": "tiny", "label_map_path": "x", "train": {}})


def test_default_thresholds_let_a_first_run_be_blessed(tmp_path, shapes_data):
    """TFX's Evaluator validates (and so can bless) only when thresholds remain once the baseline's are dropped."""
    import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
    from tfx.utils import proto_utils  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines.pipeline import create_pipeline  # pylint: disable=g-import-not-at-top

    def first_run_thresholds(evaluation):
        config = config_lib.from_dict({"pipeline_root": str(tmp_path), "data": {"root": shapes_data},
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
    # The local runner passes none, so TFX does not package itself for remote workers at each Beam component.
    local = _beam_args_by_component(create_pipeline(run_cli.config_from_args(_args(*common))))
    assert local and all(args == [] for args in local.values()), local
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
