"""The REST front end (maskrcnn_tfx.serving.rest_server on aiohttp) over real sockets on 127.0.0.1, without a model:
slow and silent clients cannot starve it, every connection past the limit gets a 503, malformed JSON of any depth
is a 400, and the Prometheus metrics and the access log account for every request.

The registry serves one model name whose base path has no version yet, so requests for it are answered
NOT_FOUND without TensorFlow; what is tested is the front end around the model calls.
"""
import json
import logging
import re
import socket
import time

import portpicker
import pytest

from maskrcnn_tfx.serving import client as client_lib
from maskrcnn_tfx.serving.model_config import ServedModel
from maskrcnn_tfx.serving.model_store import ModelRegistry
from maskrcnn_tfx.serving.observability import METRICS_PATH, Observer, open_access_log
from maskrcnn_tfx.serving.predictor import Predictor
from maskrcnn_tfx.serving.rest_server import RestServer

MODEL = "m"
HEADER_TIMEOUT, BODY_TIMEOUT, IDLE_TIMEOUT = 1.0, 1.0, 30.0
MAX_CONNECTIONS = 80
# Bounds, not measurements: an answer that takes longer than this is a failure.
ANSWER_WITHIN = 20.0


@pytest.fixture
def access_log(tmp_path):
    path = tmp_path / "access.log"
    logger = open_access_log(str(path))
    yield path
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def server(tmp_path, access_log):
    registry = ModelRegistry([ServedModel(MODEL, str(tmp_path / "no_versions_yet"))], poll_seconds=60)
    predictor = Predictor(registry, 2)
    rest = RestServer(("127.0.0.1", 0), predictor, max_request_bytes=1 << 20, workers=4,
                      max_connections=MAX_CONNECTIONS, header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT,
                      idle_timeout=IDLE_TIMEOUT, observer=Observer([MODEL], logging.getLogger("serving.access")))
    rest.start()
    yield rest
    rest.stop(grace_seconds=2)


def _connect(server) -> socket.socket:
    sock = socket.create_connection(server.server_address, timeout=ANSWER_WITHIN)
    return sock


def _exchange(server, raw: bytes, sock=None):
    """(status, headers, JSON body) of one raw request."""
    own = sock is None
    sock = sock or _connect(server)
    try:
        sock.sendall(raw)
        return _read_response(sock)
    finally:
        if own:
            sock.close()


def _read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of an answer"
        rest += chunk
    return status, headers, rest[:length]


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


def _client(server, **kwargs):
    return client_lib.RestClient(f"http://127.0.0.1:{server.server_address[1]}", client_lib.ModelTarget(MODEL),
                                 timeout=ANSWER_WITHIN, retry=client_lib.RetryPolicy(max_attempts=1), **kwargs)


def _assert_closed_by_server(sock):
    """The server hangs up (EOF or reset) rather than leaving the connection open."""
    sock.settimeout(ANSWER_WITHIN)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
    except ConnectionResetError:
        return


DEEP = 100_000


@pytest.mark.parametrize("body", [
    b"[" * DEEP + b"]" * DEEP,
    b'{"instances": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    b'{"instances": ' + b"[" * 500 + b"]" * 500 + b"}",  # parses: refused for its depth
    b'{"instances": [' + b'{"a": ' * 2000 + b"1" + b"}" * 2000 + b"]}",
    b'{"instances": ' + b"[" * DEEP,  # unterminated
    b'{"instances": [' + b"1" * 5000 + b"]}",  # more digits than Python converts
    b"\xff\xfe\x00{",
    b'{"instances": [{"b64": "' + b"A" * 10 + b'"}], "signature_name": 7}',
    b"null",
    b"",
])
def test_malformed_json_of_any_depth_is_a_400(server, body):
    status, headers, payload = _exchange(server, _post(f"/v1/models/{MODEL}:predict", body))
    assert status == 400, payload
    assert headers["content-type"].startswith("application/json")
    assert set(json.loads(payload)) == {"error"}


def test_routes_errors_and_keep_alive_as_tf_serving(server):
    with _connect(server) as sock:
        # Several requests on one keep-alive connection.
        for raw, status, message in [
            (b"GET /v1/models/nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, "Could not find any versions of model nope"),
            (_post("/v1/models/nope:predict", b'{"instances": [1]}'), 404,
             "Servable not found for request: Latest(nope)"),
            (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 400, "Missing model name in request."),
            (_post(f"/v1/models/{MODEL}/versions/HELLO:predict", b"{}"), 400, "Malformed request"),
            (b"DELETE /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n", 400, "Malformed request: DELETE"),
        ]:
            got, headers, payload = _exchange(server, raw, sock)
            assert (got, json.loads(payload)["error"].startswith(message)) == (status, True), payload
            assert headers.get("connection", "").lower() != "close"


def test_oversized_and_chunked_bodies_are_refused_before_reading(server):
    status, headers, payload = _exchange(
        server, b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{")
    assert status == 413 and "limit of 1048576 bytes" in json.loads(payload)["error"]
    assert headers["connection"].lower() == "close"
    status, _, payload = _exchange(
        server, b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"1\r\n{\r\n0\r\n\r\n")
    assert status == 411 and "Content-Length" in json.loads(payload)["error"]


def test_a_request_head_or_body_that_stalls_is_cut_off(server):
    stalled_head = _connect(server)
    stalled_head.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Le")
    stalled_body = _connect(server)
    stalled_body.sendall(_post(f"/v1/models/{MODEL}:predict", b"")[:-2].replace(b"Content-Length: 0",
                                                                                 b"Content-Length: 100")
                         + b"\r\n\r\n{\"instances\"")
    try:
        status, headers, payload = _read_response(stalled_body)
        assert status == 408 and "did not arrive within" in json.loads(payload)["error"]
        assert headers["connection"].lower() == "close"
        _assert_closed_by_server(stalled_head)
    finally:
        stalled_head.close()
        stalled_body.close()
    metrics = _metrics(server)
    assert metrics[("maskrcnn_serving_rest_timeouts_total", (("phase", "header"),))] >= 1
    assert metrics[("maskrcnn_serving_rest_timeouts_total", (("phase", "body"),))] >= 1


def test_silent_connections_hold_no_worker_and_the_limit_is_answered_503(server):
    silent = [_connect(server) for _ in range(64)]
    try:
        # Every worker thread's worth of silent connections and more: requests still get their answers.
        with _client(server) as client:
            for _ in range(5):
                with pytest.raises(client_lib.PredictionError) as raised:
                    client.status()
                assert raised.value.status == 404  # answered (the model has no version yet)
        silent += [_connect(server) for _ in range(MAX_CONNECTIONS - len(silent))]
        time.sleep(0.2)  # let the event loop see the last ones open
        status, headers, payload = _exchange(server, b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and "--max-connections" in json.loads(payload)["error"]
        assert headers["connection"].lower() == "close"
        # The REST client retries a 503 until a connection is free.
        for sock in silent[:8]:
            sock.close()
        with client_lib.RestClient(f"http://127.0.0.1:{server.server_address[1]}", client_lib.ModelTarget(MODEL),
                                   timeout=ANSWER_WITHIN,
                                   retry=client_lib.RetryPolicy(max_attempts=20, initial_backoff=0.05,
                                                                max_backoff=0.5)) as client:
            with pytest.raises(client_lib.PredictionError) as raised:
                client.status()
            assert raised.value.status == 404
    finally:
        for sock in silent:
            sock.close()
    metrics = _metrics(server)
    assert metrics[("maskrcnn_serving_rest_refused_connections_total", ())] >= 1


# Prometheus' text format (0.0.4), strictly: comments, and samples of a metric name, labels and a value.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\["\\n])*"'
_SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?:\{{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE}"
                     rf"(?:,[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE})*)?,?)\}})? "
                     rf"(?P<value>[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))(?: -?[0-9]+)?$")
_COMMENT = re.compile(rf"^# (?:HELP {_NAME} .*|TYPE {_NAME} (?:counter|gauge|histogram|summary|untyped))$")
_LABEL = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({_LABEL_VALUE})")


def _metrics(server):
    """(sample name, sorted labels) -> value, after checking every line against the format."""
    with urllib_open(server, METRICS_PATH) as (status, content_type, text):
        assert status == 200 and content_type.startswith("text/plain")
    samples = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("#"):
            assert _COMMENT.match(line), line
            continue
        match = _SAMPLE.match(line)
        assert match, line
        labels = tuple(sorted((k, json.loads(v)) for k, v in _LABEL.findall(match["labels"] or "")))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


class urllib_open:  # pylint: disable=invalid-name
    def __init__(self, server, path):
        import urllib.request

        self._response = urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}{path}",
                                                timeout=ANSWER_WITHIN)

    def __enter__(self):
        return self._response.status, self._response.headers["Content-Type"], self._response.read().decode()

    def __exit__(self, *exc):
        self._response.close()


def test_metrics_count_requests_by_model_version_api_and_status_in_prometheus_format(server, access_log):
    from prometheus_client.parser import text_string_to_metric_families

    with _client(server) as client:
        for _ in range(3):
            with pytest.raises(client_lib.PredictionError):
                client.predict([b"\x89PNG"])
    _exchange(server, _post(f"/v1/models/{MODEL}:predict", b"{"))
    _exchange(server, _post("/v1/models/someone-elses-name:predict", b"{}"))
    samples = _metrics(server)
    count = "maskrcnn_serving_requests_total"
    labels = lambda **kw: tuple(sorted({"API": "predict", "entrypoint": "REST", "version": "", **kw}.items()))
    assert samples[(count, labels(model_name=MODEL, status="NOT_FOUND"))] == 3
    assert samples[(count, labels(model_name=MODEL, status="INVALID_ARGUMENT"))] == 1
    # A name the server does not serve is not a label value of its own.
    assert samples[(count, labels(model_name="", status="NOT_FOUND"))] == 1
    histogram = "maskrcnn_serving_request_latency_seconds"
    key = tuple(sorted({"API": "predict", "entrypoint": "REST", "model_name": MODEL}.items()))
    assert samples[(histogram + "_count", key)] == 4
    buckets = sorted((float(dict(k)["le"]), v) for (n, k), v in samples.items()
                     if n == histogram + "_bucket" and dict(k)["model_name"] == MODEL)
    assert buckets[-1] == (float("inf"), 4) and all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert samples[("maskrcnn_serving_rest_open_connections", ())] >= 1  # the metrics request's own
    # prometheus_client's own parser reads it too.
    with urllib_open(server, METRICS_PATH) as (_, _, text):
        families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["maskrcnn_serving_requests"].type == "counter"
    assert families["maskrcnn_serving_request_latency_seconds"].type == "histogram"

    lines = access_log.read_text().splitlines()
    predicts = [line for line in lines if ":predict" in line]
    assert len(predicts) == 5
    assert re.match(r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                    r'"POST /v1/models/m:predict HTTP/1\.1" 404 \d+ \d+\.\d{6} model=m version=- api=predict '
                    r'entrypoint=REST status=NOT_FOUND$', predicts[0]), predicts[0]
    assert predicts[3].split('" ')[1].startswith("400 ") and predicts[4].endswith("status=NOT_FOUND")
    assert " model=- " in predicts[4]
    assert any(METRICS_PATH in line and "api=metrics" in line for line in lines)


def test_stop_answers_requests_in_progress_and_closes_idle_connections(tmp_path):
    registry = ModelRegistry([ServedModel(MODEL, str(tmp_path / "none"))], poll_seconds=60)
    rest = RestServer(("127.0.0.1", portpicker.pick_unused_port()), Predictor(registry, 1),
                      max_request_bytes=1 << 16, body_timeout=30)
    rest.start()
    idle = _connect(rest)
    in_progress = _connect(rest)
    raw = _post(f"/v1/models/{MODEL}:predict", b'{"instances": [1]}')
    in_progress.sendall(raw[:-3])  # the body is still arriving when the server is told to stop
    time.sleep(0.3)
    import threading

    stopper = threading.Thread(target=rest.stop, kwargs={"grace_seconds": 10})
    stopper.start()
    time.sleep(0.3)
    in_progress.sendall(raw[-3:])
    status, _, payload = _read_response(in_progress)
    assert status == 404 and "Servable not found" in json.loads(payload)["error"]
    stopper.join(timeout=30)
    assert not stopper.is_alive()
    _assert_closed_by_server(idle)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", rest.address[1]), timeout=5)
    idle.close()
    in_progress.close()
