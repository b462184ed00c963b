"""TF Serving's configuration: the models.config and batching writers, and the deployment files (docker
compose, Kubernetes) checked against them: same model name, paths, ports, flags and image."""
import os

import pytest
import yaml

from maskrcnn_tfx import cli
from maskrcnn_tfx.serving import model_config as mc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING = os.path.join(REPO, "serving")
IMAGE = "tensorflow/serving:2.16.1"


def _load_yaml(*parts):
    with open(os.path.join(SERVING, *parts), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _flags(args):
    """--name=value flags of a tensorflow_model_server command line."""
    flags = {}
    for arg in args:
        assert arg.startswith("--") and "=" in arg, arg
        name, value = arg[2:].split("=", 1)
        flags[name] = value
    return flags


def _default_model():
    return mc.ServedModel(mc.DEFAULT_MODEL_NAME, f"{mc.CONTAINER_MODELS_DIR}/{mc.DEFAULT_MODEL_NAME}")


def test_models_config_round_trips_through_tf_servings_proto(tmp_path):
    models = [mc.ServedModel("maskrcnn", "/models/maskrcnn", mc.VersionPolicy("latest", num_versions=2),
                             {"stable": 1700000000, "canary": 1700000500}),
              mc.ServedModel("maskrcnn-all", "/models/all", mc.VersionPolicy("all")),
              mc.ServedModel("pinned", "/models/pinned", mc.VersionPolicy("specific", versions=(3, 1)),
                             {"stable": 1})]
    path = mc.write_model_config(str(tmp_path / "models.config"), models)
    assert mc.read_model_config(path) == models
    text = open(path, encoding="utf-8").read()
    assert 'model_platform: "tensorflow"' in text
    # Parsed by TF Serving's own proto: the fields are where TF Serving reads them.
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    first = config.model_config_list.config[0]
    assert first.model_version_policy.latest.num_versions == 2
    assert dict(first.version_labels) == {"stable": 1700000000, "canary": 1700000500}
    assert list(config.model_config_list.config[2].model_version_policy.specific.versions) == [1, 3]


def test_version_policies_select_like_tf_serving():
    available = [5, 1, 9, 3]
    assert mc.VersionPolicy().select(available) == [9]
    assert mc.VersionPolicy("latest", num_versions=2).select(available) == [9, 5]
    assert mc.VersionPolicy("all").select(available) == [9, 5, 3, 1]
    assert mc.VersionPolicy("specific", versions=(1, 5, 7)).select(available) == [5, 1]


@pytest.mark.parametrize("make, message", [
    (lambda: mc.ServedModel("bad name", "/m"), "model name"),
    (lambda: mc.ServedModel("m", ""), "no base_path"),
    (lambda: mc.ServedModel("m", "/m", version_labels={"123": 1}), "not only digits"),
    (lambda: mc.ServedModel("m", "/m", mc.VersionPolicy("specific", versions=(1,)), {"stable": 2}),
     "does not serve"),
    (lambda: mc.VersionPolicy("newest"), "not one of"),
    (lambda: mc.VersionPolicy("latest", num_versions=0), "num_versions"),
    (lambda: mc.to_proto([mc.ServedModel("m", "/a"), mc.ServedModel("m", "/b")]), "listed twice"),
    (lambda: mc.BatchingParameters(max_batch_size=8, allowed_batch_sizes=(2, 4)), "end with max_batch_size"),
    (lambda: mc.BatchingParameters(num_batch_threads=0), "num_batch_threads"),
])
def test_configurations_tf_serving_would_refuse_are_refused(make, message):
    with pytest.raises(mc.ModelConfigError, match=message):
        make()


def test_a_broken_models_config_names_the_file(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(mc.ModelConfigError, match="models.config"):
        mc.read_model_config(str(path))


def test_batching_parameters_round_trip():
    params = mc.BatchingParameters(max_batch_size=16, batch_timeout_micros=2000, max_enqueued_batches=100,
                                   num_batch_threads=4, allowed_batch_sizes=(4, 8, 16),
                                   pad_variable_length_inputs=True)
    assert mc.parse_batching_parameters(mc.batching_parameters_text(params)) == params
    with pytest.raises(mc.ModelConfigError, match="unknown batching field"):
        mc.parse_batching_parameters("max_batch_sise { value: 8 }")


def test_committed_config_is_what_the_writer_writes(tmp_path):
    """serving/config/ (mounted by docker compose) and the ConfigMap hold the writer's default output."""
    assert cli.main(["serving-config", "--output", str(tmp_path)]) == 0
    expected_models = (tmp_path / mc.MODELS_CONFIG_FILE).read_text()
    expected_batching = (tmp_path / mc.BATCHING_PARAMETERS_FILE).read_text()
    assert expected_models == mc.model_config_text([_default_model()])
    with open(os.path.join(SERVING, "config", mc.MODELS_CONFIG_FILE), encoding="utf-8") as f:
        assert f.read() == expected_models
    with open(os.path.join(SERVING, "config", mc.BATCHING_PARAMETERS_FILE), encoding="utf-8") as f:
        assert f.read() == expected_batching
    configmap = _load_yaml("k8s", "configmap.yaml")
    assert configmap["data"][mc.MODELS_CONFIG_FILE] == expected_models
    assert configmap["data"][mc.BATCHING_PARAMETERS_FILE] == expected_batching


def _check_server_flags(flags):
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert flags["model_config_file"] == f"{mc.CONTAINER_CONFIG_DIR}/{mc.MODELS_CONFIG_FILE}"
    assert flags["batching_parameters_file"] == f"{mc.CONTAINER_CONFIG_DIR}/{mc.BATCHING_PARAMETERS_FILE}"
    assert flags["enable_batching"] == "true"
    assert int(flags["file_system_poll_wait_seconds"]) > 0  # new versions are picked up


def test_docker_compose_serves_the_configured_model_on_tf_servings_ports():
    service = _load_yaml("docker-compose.yml")["services"]["tf-serving"]
    assert service["image"] == IMAGE
    assert service["entrypoint"] == ["tensorflow_model_server"]
    _check_server_flags(_flags(service["command"]))
    assert sorted(p.rsplit(":", 2)[-1] for p in service["ports"]) == ["8500", "8501"]
    assert all(p.split(":")[-2] == p.split(":")[-1] for p in service["ports"])
    # "SOURCE:TARGET:ro"; SOURCE may hold ":" itself (${MODEL_BASE_DIR:-default}).
    mounts = {target: source for source, target, _ in (v.rsplit(":", 2) for v in service["volumes"])}
    model = _default_model()
    # The base path models.config names is where the Pusher's base directory is mounted.
    assert model.base_path in mounts and "MODEL_BASE_DIR" in mounts[model.base_path]
    # The config folder mounted is the one the writer's files are committed in.
    assert os.path.isfile(os.path.join(SERVING, mounts[mc.CONTAINER_CONFIG_DIR], mc.MODELS_CONFIG_FILE))


def test_kubernetes_manifests_fit_together_and_the_config():
    deployment = _load_yaml("k8s", "deployment.yaml")
    service = _load_yaml("k8s", "service.yaml")
    pvc = _load_yaml("k8s", "pvc.yaml")
    configmap = _load_yaml("k8s", "configmap.yaml")
    model = _default_model()
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["image"] == IMAGE
    _check_server_flags(_flags(container["args"]))
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    assert {p["targetPort"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8500, "http": 8501}
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == 8501 and get["path"].startswith(f"/v1/models/{model.name}")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts[model.base_path]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert volumes[mounts[mc.CONTAINER_CONFIG_DIR]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert pvc["kind"] == "PersistentVolumeClaim" and service["kind"] == "Service"


def test_serve_reads_the_same_models_config(tmp_path):
    from maskrcnn_tfx.serving import serve_cli

    models = [mc.ServedModel("maskrcnn", str(tmp_path / "base"), mc.VersionPolicy("latest", num_versions=2),
                             {"stable": 5})]
    path = mc.write_model_config(str(tmp_path / "models.config"), models)
    parser = cli.build_parser(["serve"])
    assert serve_cli._models(parser.parse_args(["serve", "--model-config-file", path])) == models
    from_flags = serve_cli._models(parser.parse_args(
        ["serve", "--model-base-path", str(tmp_path / "base"), "--num-versions", "2", "--version-label",
         "stable=5"]))
    assert from_flags == models
    with pytest.raises(mc.ModelConfigError, match="not LABEL=VERSION"):
        serve_cli._models(parser.parse_args(["serve", "--model-base-path", "x", "--version-label", "stable"]))


def test_help_and_the_rest_client_load_no_tensorflow():
    """The commands answer --help, and a REST client runs, without TensorFlow (seconds saved, and a client
    machine needs no TensorFlow for REST)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from maskrcnn_tfx import cli\n"
            "for command in ('serve', 'predict', 'serving-config'):\n"
            "    try:\n"
            "        cli.main([command, '--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "import maskrcnn_tfx.serving.client, maskrcnn_tfx.serving.detections, maskrcnn_tfx.serving.rest_codec\n"
            "maskrcnn_tfx.serving.client.connect('http://127.0.0.1:1')\n"
            "print('loaded:', sorted(m for m in ('tensorflow', 'grpc') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip().endswith("loaded: []"), result.stdout[-500:]
