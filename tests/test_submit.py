"""Submitting the compiled pipeline to Kubeflow Pipelines and Vertex AI, against stand-in servers on 127.0.0.1.

The stand-ins are not clusters: they check each request against the public API's schema and record it.
Kubeflow: every JSON body is checked field by field against the ``kfp_server_api`` 2.0.5 models (the KFP v2
API's OpenAPI types: no unknown field, every value of its declared type, enums among their values) and the
pipeline spec must parse as KFP's ``PipelineSpec`` proto. Vertex AI: each REST body must parse strictly
(unknown fields rejected) as the ``google.cloud.aiplatform_v1`` request type of its URL. The tests then assert
that the uploaded pipeline spec is the compiled one, the schedule and options are as given and the credentials
were sent as configured.
"""
import contextlib
import http.server
import json
import os
import threading
import urllib.parse

import pytest

import maskrcnn_tfx  # noqa: F401

TOKEN = "kfp-token-7f3a"
COOKIE = "authservice_session=abc123"
VERTEX_TOKEN = "ya29.vertex-token-55"


# ---------------------------------------------------------------------------------------------------------
# Stand-in servers


class _StandIn(http.server.ThreadingHTTPServer):
    """Answers with ``route(method, path, query, body) -> (status, json)``; records every request."""

    def __init__(self, route):
        self.route = route
        self.requests = []
        self.problems = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def _serve(self):
        parsed = urllib.parse.urlparse(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw) if raw else None
        record = {"method": self.command, "path": parsed.path, "query": urllib.parse.parse_qs(parsed.query),
                  "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        self.server.requests.append(record)
        try:
            status, answer = self.server.route(self.command, parsed.path, record["query"], body)
        except AssertionError as e:  # a request outside the API's schema
            self.server.problems.append(f"{self.command} {parsed.path}: {e}")
            status, answer = 400, {"error": str(e), "code": 3, "message": str(e)}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def _serving(route):
    server = _StandIn(route)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------------------
# Kubeflow Pipelines: the kfp_server_api models


def check_model(value, type_name: str, where: str = "body") -> None:
    """Asserts ``value`` (decoded JSON) conforms to the kfp_server_api OpenAPI type ``type_name``."""
    import kfp_server_api  # pylint: disable=g-import-not-at-top

    if value is None:
        return
    if type_name == "str":
        assert isinstance(value, str), f"{where}: expected a string, got {value!r}"
    elif type_name == "int":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an integer"
    elif type_name == "bool":
        assert isinstance(value, bool), f"{where}: expected a boolean, got {value!r}"
    elif type_name == "datetime":
        import datetime  # pylint: disable=g-import-not-at-top
        assert isinstance(value, str), f"{where}: expected an RFC 3339 time"
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif type_name == "object":
        assert isinstance(value, dict), f"{where}: expected an object"
    elif type_name.startswith("dict("):
        assert isinstance(value, dict), f"{where}: expected a map"
        inner = type_name[type_name.index(",") + 1:-1].strip()
        for key, item in value.items():
            check_model(item, inner, f"{where}.{key}")
    elif type_name.startswith("list["):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, item in enumerate(value):
            check_model(item, type_name[5:-1], f"{where}[{i}]")
    else:
        model = getattr(kfp_server_api.models, type_name)
        if not model.openapi_types:  # an enum
            assert value in model.allowable_values, f"{where}: {value!r} is not one of {model.allowable_values}"
            return
        assert isinstance(value, dict), f"{where}: expected a {type_name} object, got {value!r}"
        by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
        for key, item in value.items():
            assert key in by_json, f"{where}: {key!r} is not a field of {type_name} ({sorted(by_json)})"
            check_model(item, model.openapi_types[by_json[key]], f"{where}.{key}")


def check_pipeline_spec(spec) -> None:
    from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
    from kfp.pipeline_spec import pipeline_spec_pb2  # pylint: disable=g-import-not-at-top

    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # unknown fields raise


def kfp_route(method, path, query, body):
    """KFP v2 API (kfp_server_api 2.0.5's paths and models)."""
    if (method, path) == ("GET", "/apis/v2beta1/healthz"):
        return 200, {"multi_user": False}
    if (method, path) == ("GET", "/apis/v2beta1/experiments"):
        assert "filter" in query, "an experiment is looked up by a filter on its name"
        return 200, {}  # none yet: the client creates it
    if (method, path) == ("POST", "/apis/v2beta1/experiments"):
        check_model(body, "V2beta1Experiment")
        assert body.get("display_name"), "an experiment needs a display_name"
        return 200, dict(body, experiment_id="exp-0001")
    if (method, path) == ("POST", "/apis/v2beta1/runs"):
        check_model(body, "V2beta1Run")
        check_pipeline_spec(body["pipeline_spec"])
        return 200, dict(body, run_id="run-0001", state="PENDING")
    if (method, path) == ("POST", "/apis/v2beta1/recurringruns"):
        check_model(body, "V2beta1RecurringRun")
        check_pipeline_spec(body["pipeline_spec"])
        trigger = body["trigger"]
        assert len(trigger) == 1, f"a trigger is cron_schedule or periodic_schedule: {trigger}"
        return 200, dict(body, recurring_run_id="rr-0001", status="ENABLED")
    raise AssertionError("not a path of the KFP v2 API")


# ---------------------------------------------------------------------------------------------------------
# Vertex AI: the aiplatform_v1 request types


def vertex_route(method, path, query, body):
    from google.cloud import aiplatform_v1  # pylint: disable=g-import-not-at-top
    from google.protobuf import json_format  # pylint: disable=g-import-not-at-top

    parts = path.strip("/").split("/")
    assert parts[:1] == ["v1"] and parts[1:2] == ["projects"] and parts[3:4] == ["locations"], \
        f"not a Vertex AI v1 resource path: {path}"
    parent = "/".join(parts[1:5])
    if method == "POST" and parts[5:] == ["pipelineJobs"]:
        job = aiplatform_v1.PipelineJob()
        json_format.ParseDict(body, job._pb)  # pylint: disable=protected-access  (strict: unknown fields raise)
        job_id = query.get("pipelineJobId", [""])[0]
        assert job_id, "pipelineJobId is given"
        answer = aiplatform_v1.PipelineJob(job, name=f"{parent}/pipelineJobs/{job_id}",
                                           state=aiplatform_v1.PipelineState.PIPELINE_STATE_PENDING)
        return 200, json_format.MessageToDict(answer._pb)  # pylint: disable=protected-access
    if method == "POST" and parts[5:] == ["schedules"]:
        schedule = aiplatform_v1.Schedule()
        json_format.ParseDict(body, schedule._pb)  # pylint: disable=protected-access
        assert schedule.cron, "the schedule has a cron expression"
        request = schedule.create_pipeline_job_request
        assert request.parent == parent, f"the schedule's job request names {request.parent}, not {parent}"
        answer = aiplatform_v1.Schedule(schedule, name=f"{parent}/schedules/4242",
                                        state=aiplatform_v1.Schedule.State.ACTIVE)
        return 200, json_format.MessageToDict(answer._pb)  # pylint: disable=protected-access
    raise AssertionError(f"not a Vertex AI call this client makes: {method} {path}")


# ---------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.data.shapes import generate_shapes  # pylint: disable=g-import-not-at-top

    root = str(tmp_path_factory.mktemp("volume"))
    annotations = generate_shapes(os.path.join(root, "raw"), num_images=8, image_size=64, seed=1)
    output = os.path.join(root, "data")
    convert_coco(annotations, os.path.join(root, "raw", "coco", "images"), output, eval_fraction=0.5,
                 progress=False)
    return output


def _volume(data: str) -> str:
    return os.path.dirname(data)


def _kfp_argv(data: str, output: str, *extra: str):
    return ["run", "--runner", "kubeflow", "--data", data, "--mounted-path", _volume(data),
            "--pipeline-root", "s3://ml-bucket/pipelines", "--serving-dir", os.path.join(_volume(data), "serving"),
            "--image", "registry.example.com/maskrcnn-tfx:0.1.0", "--output-file", output,
            "--pipeline-name", "maskrcnn-weekly", "--train-steps", "321", *extra]


def _compiled_spec(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["pipelineSpec"]


# ---------------------------------------------------------------------------------------------------------
# Kubeflow Pipelines


def test_kfp_recurring_run_with_token(tmp_path, data, capsys):
    from maskrcnn_tfx import cli  # pylint: disable=g-import-not-at-top

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    output = tmp_path / "pipeline.json"
    with _serving(kfp_route) as server:
        code = cli.main(_kfp_argv(data, str(output), "--kfp-host", server.url, "--kfp-token-file", str(token_file),
                                  "--experiment", "weekly-retrain", "--schedule", "0 3 * * 1",
                                  "--start-time", "2026-01-05T03:00:00Z", "--max-concurrency", "1",
                                  "--kfp-service-account", "pipeline-runner", "--run-name", "maskrcnn-weekly"))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert not server.problems, server.problems
    # Every request carries the configured token.
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in server.requests), \
        [r["headers"].get("authorization") for r in server.requests]
    created = {(r["method"], r["path"]): r["body"] for r in server.requests if r["method"] == "POST"}
    assert created[("POST", "/apis/v2beta1/experiments")]["display_name"] == "weekly-retrain"
    job = created[("POST", "/apis/v2beta1/recurringruns")]
    # The uploaded spec is the compiled one, unchanged.
    assert job["pipeline_spec"] == _compiled_spec(str(output))
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1", "start_time": "2026-01-05T03:00:00Z"}}
    assert job["max_concurrency"] == "1" and job["no_catchup"] is True and job["mode"] == "ENABLE"
    assert job["experiment_id"] == "exp-0001" and job["display_name"] == "maskrcnn-weekly"
    assert job["service_account"] == "pipeline-runner"
    assert job["runtime_config"] == {"parameters": {}, "pipeline_root": "s3://ml-bucket/pipelines"}
    # The run the schedule starts is the compiled pipeline (its steps, image and arguments).
    spec_text = json.dumps(job["pipeline_spec"])
    assert "registry.example.com/maskrcnn-tfx:0.1.0" in spec_text and '\\"train_steps\\": 321' in spec_text
    assert "Kubeflow Pipelines recurring run: rr-0001" in out.out
    assert f"watch it at: {server.url}/#/recurringrun/details/rr-0001" in out.out


def test_kfp_one_off_run_every_interval_and_cookies(tmp_path, data, capsys):
    from maskrcnn_tfx import cli  # pylint: disable=g-import-not-at-top

    cookies = tmp_path / "cookies"
    cookies.write_text(COOKIE)
    output = tmp_path / "pipeline.json"
    with _serving(kfp_route) as server:
        assert cli.main(_kfp_argv(data, str(output), "--kfp-host", server.url, "--kfp-cookies-file", str(cookies),
                                  "--kfp-ui-host", "https://kubeflow.example.com/pipeline",
                                  "--kfp-namespace", "team-vision")) == 0
        lookup = next(r for r in server.requests if r["path"] == "/apis/v2beta1/experiments")
        assert lookup["query"]["namespace"] == ["team-vision"]  # a multi-user Kubeflow's profile
        run = next(r for r in server.requests if r["path"] == "/apis/v2beta1/runs")
        assert run["body"]["pipeline_spec"] == _compiled_spec(str(output))
        assert run["body"]["experiment_id"] == "exp-0001"
        experiment = next(r for r in server.requests if r["path"] == "/apis/v2beta1/experiments"
                          and r["method"] == "POST")
        assert experiment["body"]["display_name"] == "maskrcnn-weekly"  # default: the pipeline's name
        assert experiment["body"]["namespace"] == "team-vision"
        assert all(r["headers"].get("cookie") == COOKIE and "authorization" not in r["headers"]
                   for r in server.requests)
        out = capsys.readouterr().out
        assert "Kubeflow Pipelines run: run-0001" in out
        assert "watch it at: https://kubeflow.example.com/pipeline/#/runs/details/run-0001" in out

        # --every: a periodic schedule in seconds (int64 as a string, as the API types it).
        assert cli.main(_kfp_argv(data, str(output), "--kfp-host", server.url, "--every", "1w",
                                  "--max-concurrency", "2")) == 0
        job = next(r for r in server.requests if r["path"] == "/apis/v2beta1/recurringruns")["body"]
        assert job["trigger"] == {"periodic_schedule": {"interval_second": str(7 * 24 * 3600)}}
        assert job["max_concurrency"] == "2"
        assert not server.problems, server.problems


def test_kfp_refusal_is_reported(tmp_path, data, capsys):
    """An endpoint answering 4xx: the command fails with the request's error, not a traceback."""
    from maskrcnn_tfx import cli  # pylint: disable=g-import-not-at-top

    def refuse_runs(method, path, query, body):
        if path == "/apis/v2beta1/runs":
            return 403, {"error": "user is not allowed to create runs in namespace kubeflow", "code": 7}
        return kfp_route(method, path, query, body)

    with _serving(refuse_runs) as server:
        assert cli.main(_kfp_argv(data, str(tmp_path / "p.json"), "--kfp-host", server.url)) == 1
    err = capsys.readouterr().err
    assert "refused the request: HTTP 403" in err and "not allowed to create runs" in err

    # Nothing listening: a clear error naming the endpoint.
    with _serving(kfp_route) as server:
        closed = server.url
    assert cli.main(_kfp_argv(data, str(tmp_path / "p.json"), "--kfp-host", closed)) == 1
    assert f"cannot reach Kubeflow Pipelines at {closed}" in capsys.readouterr().err


def test_vertex_unreachable_is_reported(tmp_path, data, compiled, vertex_state):
    from maskrcnn_tfx.pipelines import submit  # pylint: disable=g-import-not-at-top

    with _serving(vertex_route) as server:
        config = _vertex_config(server, tmp_path, data)
    with pytest.raises(submit.SubmissionError, match="cannot reach Vertex AI"):
        submit.submit(config, compiled)


# ---------------------------------------------------------------------------------------------------------
# Local paths are refused for a cluster


def test_local_paths_are_refused_with_what_to_use(tmp_path, data, capsys):
    from maskrcnn_tfx import cli  # pylint: disable=g-import-not-at-top

    # A preset file is read here, into the trainer section the Trainer receives: the pods never need it. The
    # checkpoint to fine-tune from is read by the Trainer's pod.
    preset = tmp_path / "preset.yaml"
    preset.write_text("train: {batch_size: 2}\n")
    code = cli.main(["run", "--runner", "kubeflow", "--data", data, "--pipeline-root", str(tmp_path / "root"),
                     "--serving-dir", str(tmp_path / "serving"), "--preset", str(preset),
                     "--init-checkpoint", str(tmp_path / "pretrained" / "ckpt-5")])
    err = capsys.readouterr().err
    assert code == 2
    for field in ("pipeline_root", "data.root", "serving_dir", "data.label_map_path",
                  "trainer.train.init_checkpoint"):
        assert f"{field}" in err, (field, err)
    assert "trainer.preset" not in err
    assert "pods cannot read" in err and "gs:// or s3://" in err and "--mounted-path" in err

    # Vertex AI reads Cloud Storage only: a mounted path does not help there.
    code = cli.main(["run", "--runner", "kubeflow", "--data", data, "--mounted-path", _volume(data),
                     "--pipeline-root", "gs://bucket/root", "--serving-dir", "gs://bucket/serving",
                     "--vertex-project", "my-project", "--every", "1d"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"data.root {data} is not in Cloud Storage" in err and "gs://" in err
    assert "Vertex AI schedules take a cron expression" in err
    assert "serving_dir" not in err and "pipeline_root" not in err


def test_schedule_options_are_checked(tmp_path, data):
    from maskrcnn_tfx.pipelines import submit  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.config import submission  # pylint: disable=g-import-not-at-top

    def problems(**kubeflow):
        try:
            config_lib.from_dict({"runner": "kubeflow", "pipeline_root": "gs://b/root",
                                  "serving_dir": "gs://b/serving",
                                  "data": {"root": "gs://b/data"}, "kubeflow": kubeflow})
        except config_lib.ConfigError as e:
            return str(e)
        return ""

    kfp = {"host": "http://127.0.0.1:1"}
    assert problems(kfp=kfp, schedule={"cron": "0 3 * * 1"}) == ""
    assert problems(kfp=kfp, schedule={"cron": "0 0 3 * * 1"}) == ""  # KFP's own 6 fields
    assert "not a cron expression" in problems(vertex={"project": "my-project"}, schedule={"cron": "0 0 3 * * 1"})
    assert "not a cron expression" in problems(kfp=kfp, schedule={"cron": "every monday"})
    assert "not both" in problems(kfp=kfp, schedule={"cron": "0 3 * * 1", "every": "1d"})
    assert "not an interval" in problems(kfp=kfp, schedule={"every": "weekly"})
    assert "RFC 3339" in problems(kfp=kfp, schedule={"every": "1d", "start_time": "next monday"})
    assert "RFC 3339" in problems(kfp=kfp, schedule={"every": "1d", "start_time": "2026-01-05T03:00:00"})
    assert "max_concurrency must be >= 1" in problems(kfp=kfp, schedule={"every": "1d", "max_concurrency": 0})
    assert "add --kfp-host" in problems(schedule={"every": "1d"})
    assert "both set" in problems(kfp=kfp, vertex={"project": "my-project"})
    assert "http:// or https://" in problems(kfp={"host": "kubeflow.example.com"})
    assert "is not a file" in problems(kfp=dict(kfp, token_file=str(tmp_path / "missing")))
    assert submit.kfp_cron("TZ=Europe/Paris 30 2 * * *") == "TZ=Europe/Paris 0 30 2 * * *"
    assert submission.interval_seconds("6h") == 21600 and submission.interval_seconds("0d") is None


# ---------------------------------------------------------------------------------------------------------
# Vertex AI


@pytest.fixture
def vertex_state(monkeypatch):
    """aiplatform keeps global settings: restore them; record its Cloud Storage bucket check instead of
    calling Cloud Storage (no network beyond 127.0.0.1)."""
    from google.cloud.aiplatform import initializer  # pylint: disable=g-import-not-at-top
    from google.cloud.aiplatform.utils import gcs_utils  # pylint: disable=g-import-not-at-top

    buckets = []
    monkeypatch.setattr(gcs_utils, "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
                        lambda **kwargs: buckets.append(kwargs))
    monkeypatch.setattr(initializer, "global_config", initializer._Config())  # pylint: disable=protected-access
    return buckets


def _vertex_config(server, tmp_path, data, **schedule):
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top

    token_file = tmp_path / "vertex-token"
    token_file.write_text(VERTEX_TOKEN)
    return config_lib.from_dict({
        "runner": "kubeflow", "pipeline_name": "maskrcnn-weekly", "pipeline_root": "gs://ml-bucket/root",
        "serving_dir": "gs://ml-bucket/serving", "data": {"root": "gs://ml-bucket/data"},
        "kubeflow": {"run_name": "maskrcnn-weekly-20260105", "schedule": schedule,
                     "vertex": {"project": "my-project", "region": "europe-west4",
                                "service_account": "pipelines@my-project.iam.gserviceaccount.com",
                                "token_file": str(token_file), "api_endpoint": server.url,
                                "labels": {"team": "vision"}}}})


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, data) -> str:
    """A compiled pipeline JSON (the same compiler as for Vertex; its paths are checked only at submission)."""
    from maskrcnn_tfx import cli  # pylint: disable=g-import-not-at-top

    output = str(tmp_path_factory.mktemp("compiled") / "pipeline.json")
    with contextlib.redirect_stdout(None):
        assert cli.main(_kfp_argv(data, output)) == 0
    return output


def test_vertex_pipeline_job(tmp_path, data, compiled, vertex_state):
    from maskrcnn_tfx.pipelines import submit  # pylint: disable=g-import-not-at-top

    with _serving(vertex_route) as server:
        submission = submit.submit(_vertex_config(server, tmp_path, data), compiled)
    assert not server.problems, server.problems
    (request,) = server.requests
    assert request["path"] == "/v1/projects/my-project/locations/europe-west4/pipelineJobs"
    assert request["query"]["pipelineJobId"] == ["maskrcnn-weekly-20260105"]
    assert request["headers"]["authorization"] == f"Bearer {VERTEX_TOKEN}"
    job = request["body"]
    assert job["pipelineSpec"] == _compiled_spec(compiled)
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://ml-bucket/root"
    assert job["serviceAccount"] == "pipelines@my-project.iam.gserviceaccount.com"
    assert job["displayName"] == "maskrcnn-weekly-20260105" and job["labels"] == {"team": "vision"}
    assert vertex_state and vertex_state[0]["output_artifacts_gcs_dir"] == "gs://ml-bucket/root"
    assert submission.kind == "run" and submission.id == "maskrcnn-weekly-20260105"
    assert submission.url == ("https://console.cloud.google.com/vertex-ai/locations/europe-west4/pipelines/runs/"
                              "maskrcnn-weekly-20260105?project=my-project")


def test_vertex_schedule(tmp_path, data, compiled, vertex_state):
    from maskrcnn_tfx.pipelines import submit  # pylint: disable=g-import-not-at-top

    with _serving(vertex_route) as server:
        config = _vertex_config(server, tmp_path, data, cron="TZ=Europe/Amsterdam 0 3 * * 1",
                                start_time="2026-01-05T03:00:00Z", max_concurrency=1)
        submission = submit.submit(config, compiled)
    assert not server.problems, server.problems
    (request,) = server.requests
    assert request["path"] == "/v1/projects/my-project/locations/europe-west4/schedules"
    assert request["headers"]["authorization"] == f"Bearer {VERTEX_TOKEN}"
    schedule = request["body"]
    assert schedule["cron"] == "TZ=Europe/Amsterdam 0 3 * * 1"
    assert schedule["startTime"] == "2026-01-05T03:00:00Z"
    assert schedule["maxConcurrentRunCount"] == "1"
    job = schedule["createPipelineJobRequest"]["pipelineJob"]
    assert job["pipelineSpec"] == _compiled_spec(compiled)
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://ml-bucket/root"
    assert job["serviceAccount"] == "pipelines@my-project.iam.gserviceaccount.com"
    assert submission.kind == "schedule" and submission.id == "4242"
    assert submission.name == "projects/my-project/locations/europe-west4/schedules/4242"
    assert submission.url.endswith("/locations/europe-west4/pipelines/schedules/4242?project=my-project")
