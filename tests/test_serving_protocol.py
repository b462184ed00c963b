"""TF Serving's REST format (row and column, b64, errors), the URL scheme, and the client's retries against
small stand-in servers on 127.0.0.1 that fail in a chosen way first (no model needed)."""
import base64
import concurrent.futures
import http.server
import json
import threading

import numpy as np
import portpicker
import pytest

from maskrcnn_tfx.serving import client as client_lib
from maskrcnn_tfx.serving import rest_codec
from maskrcnn_tfx.serving.model_store import ServingError, TensorInfo
from maskrcnn_tfx.serving.rest_server import parse_path

IMAGES = {"images": TensorInfo("images", "DT_STRING", (-1,))}
TWO_INPUTS = {"images": TensorInfo("images", "DT_STRING", (-1,)), "scale": TensorInfo("scale", "DT_FLOAT", (-1,))}
FAST_RETRY = client_lib.RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def test_row_and_column_requests_decode_to_the_same_batch():
    row, form = rest_codec.decode_inputs({"instances": [_b64(b"\x00a"), _b64(b"b")]}, IMAGES)
    assert form == "row" and list(row["images"]) == [b"\x00a", b"b"]
    named, _ = rest_codec.decode_inputs({"instances": [{"images": _b64(b"\x00a")}, {"images": _b64(b"b")}]},
                                        IMAGES)
    column, form = rest_codec.decode_inputs({"inputs": {"images": [_b64(b"\x00a"), _b64(b"b")]}}, IMAGES)
    assert form == "column"
    bare_column, _ = rest_codec.decode_inputs({"inputs": [_b64(b"\x00a"), _b64(b"b")]}, IMAGES)
    for batch in (named, column, bare_column):
        assert list(batch["images"]) == [b"\x00a", b"b"]
    both, _ = rest_codec.decode_inputs({"instances": [{"images": _b64(b"x"), "scale": 2}]}, TWO_INPUTS)
    assert both["scale"].dtype == np.float32 and both["scale"].tolist() == [2.0]


@pytest.mark.parametrize("document, message", [
    ({}, "Missing 'inputs' or 'instances' key"),
    ({"instances": [], "inputs": []}, "both"),
    ({"instances": [{"b64": "***"}]}, "Unable to base64 decode"),
    ({"instances": [{"b64": 3}]}, "expected a string or an object with a single 'b64' key"),
    ({"instances": [7]}, "expected a string"),
    ({"inputs": {"pictures": []}}, "Missing named input: images in 'inputs' object."),
    ({"instances": []}, "non-empty"),
])
def test_bad_request_documents_are_invalid_arguments(document, message):
    with pytest.raises(ServingError, match=message) as raised:
        rest_codec.decode_inputs(document, IMAGES)
    assert raised.value.code == "INVALID_ARGUMENT"


def test_missing_named_input_in_a_row():
    with pytest.raises(ServingError, match="Missing named input: scale in instance 0"):
        rest_codec.decode_inputs({"instances": [{"images": _b64(b"x")}]}, TWO_INPUTS)


@pytest.mark.parametrize("body, message", [
    (b"", "The document is empty"), (b"{", "JSON Parse error"), (b"[1, 2]", "not a JSON object"),
    (b"\xff\xfe{}", "JSON Parse error"),
    (b"[" * 100_000 + b"]" * 100_000, "nests too deep"),
    (b'{"instances": ' + b"[" * 65 + b"]" * 65 + b"}", "nests 66 levels deep, more than 64"),
    (b'{"instances": [' + b"9" * 5000 + b"]}", "JSON Parse error: Exceeds the limit")])
def test_bodies_that_are_not_json_objects(body, message):
    with pytest.raises(ServingError, match=message):
        rest_codec.parse_body(body)


def test_signature_name_must_be_a_string():
    with pytest.raises(ServingError, match="'signature_name' key must be a string value."):
        rest_codec.signature_name_of({"signature_name": 100})


def test_outputs_encode_in_the_request_format_and_decode_back():
    outputs = {"detection_scores": np.array([[0.5, 0.25], [1.0, 0.0]], np.float32),
               "num_detections": np.array([2, 1], np.int32)}
    rows = json.loads(rest_codec.encode_outputs(outputs, "row"))
    assert rows == {"predictions": [{"detection_scores": [0.5, 0.25], "num_detections": 2},
                                    {"detection_scores": [1.0, 0.0], "num_detections": 1}]}
    columns = json.loads(rest_codec.encode_outputs(outputs, "column"))
    assert columns == {"outputs": {"detection_scores": [[0.5, 0.25], [1.0, 0.0]], "num_detections": [2, 1]}}
    for body in (rows, columns):
        decoded = rest_codec.decode_predictions(body)
        for key, value in outputs.items():
            np.testing.assert_array_equal(decoded[key], value)
    single = json.loads(rest_codec.encode_outputs({"y": np.array([1.5, 2.5])}, "row"))
    assert single == {"predictions": [1.5, 2.5]}


def test_client_request_bodies_parse_on_the_server_side():
    for form in ("row", "column"):
        body = rest_codec.encode_request([b"\x89PNG", b"\xff\xd8"], input_name="images",
                                         signature_name="serving_default", form=form)
        document = rest_codec.parse_body(body)
        inputs, got_form = rest_codec.decode_inputs(document, IMAGES)
        assert got_form == form and list(inputs["images"]) == [b"\x89PNG", b"\xff\xd8"]
        assert rest_codec.signature_name_of(document) == "serving_default"


@pytest.mark.parametrize("method, path, expected", [
    ("GET", "/v1/models/m", ("m", None, None, "status")),
    ("GET", "/v1/models/m/versions/12", ("m", 12, None, "status")),
    ("GET", "/v1/models/m/labels/stable/metadata", ("m", None, "stable", "metadata")),
    ("POST", "/v1/models/m/versions/3:predict", ("m", 3, None, "predict")),
    ("POST", "/v1/models/m:predict?x=1", ("m", None, None, "predict")),
])
def test_tf_serving_urls(method, path, expected):
    assert parse_path(method, path) == expected


@pytest.mark.parametrize("method, path, message", [
    ("GET", "/v1/models", "Missing model name"),
    ("GET", "/v1/foo", "Malformed request: GET /v1/foo"),
    ("GET", "/v1/models/m:predict", "Malformed request"),
    ("POST", "/v1/models/m/versions/HELLO:predict", "Malformed request"),
    ("POST", "/v1/models/m/versions/18446744073709551615:predict", "Failed to convert version"),
    ("POST", "/v1/models/m/metadata", "Malformed request"),
])
def test_malformed_urls(method, path, message):
    with pytest.raises(ServingError, match=message):
        parse_path(method, path)


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of the server's script, then the last one again."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # pylint: disable=invalid-name
        server = self.server
        with server.lock:
            server.calls += 1
            status, body = server.script[min(server.calls, len(server.script)) - 1]
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _scripted_server(port, script):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _ScriptedHandler)
    server.script, server.calls, server.lock = script, 0, threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _rest_client(port, retry=FAST_RETRY):
    return client_lib.RestClient(f"http://127.0.0.1:{port}", timeout=10, retry=retry)


def test_rest_client_retries_503_with_backoff_until_it_is_answered():
    port = portpicker.pick_unused_port()
    server = _scripted_server(port, [(503, {"error": "loading"}), (503, {"error": "loading"}),
                                     (200, {"model_version_status": []})])
    try:
        assert _rest_client(port).status() == {"model_version_status": []}
        assert server.calls == 3
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [400, 404, 413])
def test_rest_client_never_retries_a_4xx(status):
    port = portpicker.pick_unused_port()
    server = _scripted_server(port, [(status, {"error": "bad request"}), (200, {})])
    try:
        with pytest.raises(client_lib.PredictionError, match="bad request") as raised:
            _rest_client(port).status()
        assert raised.value.status == status and not raised.value.retryable
        assert server.calls == 1
    finally:
        server.shutdown()
        server.server_close()


def test_rest_client_retries_refused_connections_until_the_server_comes_up():
    port = portpicker.pick_unused_port()
    started = []
    timer = threading.Timer(0.5, lambda: started.append(_scripted_server(port, [(200, {"ok": 1})])))
    timer.start()
    try:
        client = _rest_client(port, client_lib.RetryPolicy(max_attempts=30, initial_backoff=0.05, max_backoff=0.3))
        assert client.status() == {"ok": 1}
    finally:
        timer.join()
        for server in started:
            server.shutdown()
            server.server_close()


def test_rest_client_gives_up_after_the_last_attempt():
    port = portpicker.pick_unused_port()
    with pytest.raises(client_lib.PredictionError, match="cannot reach the server") as raised:
        _rest_client(port, client_lib.RetryPolicy(max_attempts=2, initial_backoff=0.01)).status()
    assert raised.value.retryable and raised.value.status == "UNAVAILABLE"


def test_grpc_client_retries_unavailable_and_not_invalid_argument():
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    class Flaky(prediction_service_pb2_grpc.PredictionServiceServicer):
        def __init__(self):
            self.calls = []

        def Predict(self, request, context):  # pylint: disable=invalid-name
            self.calls.append(request.model_spec.name)
            if request.model_spec.name == "bad":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input")
            if len(self.calls) <= 2:
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
            response = predict_pb2.PredictResponse()
            response.outputs["num_detections"].CopyFrom(tf.make_tensor_proto(np.array([3], np.int32)))
            return response

    servicer = Flaky()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = client_lib.connect(f"127.0.0.1:{port}", use_grpc=True, model_name="m", retry=FAST_RETRY)
        outputs = client.predict([b"x"])
        assert outputs["num_detections"].tolist() == [3] and servicer.calls == ["m"] * 3
        servicer.calls.clear()
        bad = client_lib.connect(f"127.0.0.1:{port}", use_grpc=True, model_name="bad", retry=FAST_RETRY)
        with pytest.raises(client_lib.PredictionError, match="bad input") as raised:
            bad.predict([b"x"])
        assert raised.value.status == "INVALID_ARGUMENT" and servicer.calls == ["bad"]
    finally:
        server.stop(0)


def test_backoff_grows_exponentially_up_to_the_cap():
    policy = client_lib.RetryPolicy(initial_backoff=0.1, multiplier=2.0, max_backoff=0.5)
    caps = [0.1, 0.2, 0.4, 0.5, 0.5]
    for attempt, cap in enumerate(caps):
        samples = [policy.backoff(attempt) for _ in range(200)]
        assert 0 <= min(samples) and max(samples) <= cap
        assert max(samples) > cap / 2  # full jitter spreads over the whole range


def test_target_refuses_a_version_and_a_label_together():
    with pytest.raises(ValueError, match="not both"):
        client_lib.ModelTarget("m", version=1, version_label="stable")
