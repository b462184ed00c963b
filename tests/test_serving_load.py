"""Load and faults against ``maskrcnn-tfx serve`` as a process on 127.0.0.1, with the exported tiny model:
hostile requests each get their 4xx and the server's memory stays bounded, 64 silent connections do not stop
valid requests, a version pushed during a stream of requests takes over without a failed request, and a
server stopped with SIGTERM during a stream and started again loses no request (the client's retries carry
the stream through).

Bounded: each request has a timeout (an answer that does not come is a failure), each stream a fixed count.
"""
import logging
import signal
import socket
import threading
import time

import portpicker
import pytest

from maskrcnn_tfx.testing import serving as load
from maskrcnn_tfx.testing import models as served
from maskrcnn_tfx.serving import client as client_lib

pytestmark = pytest.mark.slow

MAX_REQUEST_BYTES = 8 << 20
ANSWER_WITHIN = 30.0  # seconds: "within a few seconds" on a loaded 2-core machine, as a bound
NO_RETRY = client_lib.RetryPolicy(max_attempts=1)
GiB = 1 << 30


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("load_base"))
    served.push(served.exported_model_dir(), base, 1)
    return base


@pytest.fixture(scope="module")
def server(base_dir, tmp_path_factory):
    """The server as a process: (process, REST port, gRPC port, access log path)."""
    logs = tmp_path_factory.mktemp("load_logs")
    rest_port, grpc_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    access_log = str(logs / "access.log")
    process = load.start_server(
        load.serve_command(base_dir, served.MODEL_NAME, rest_port, grpc_port, "--max-request-bytes",
                           str(MAX_REQUEST_BYTES), "--max-connections", "100", "--access-log", access_log),
        str(logs / "server.log"))
    try:
        load.wait_until_serving(rest_port, process, served.MODEL_NAME)
        yield process, rest_port, grpc_port, access_log
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


def _rest(port, **kwargs):
    kwargs.setdefault("retry", NO_RETRY)
    return client_lib.connect(f"http://127.0.0.1:{port}", model_name=served.MODEL_NAME, timeout=ANSWER_WITHIN,
                              **kwargs)


def _grpc(port, **kwargs):
    kwargs.setdefault("retry", NO_RETRY)
    return client_lib.connect(f"127.0.0.1:{port}", use_grpc=True, model_name=served.MODEL_NAME,
                              timeout=ANSWER_WITHIN, **kwargs)


def test_hostile_requests_each_get_their_4xx_and_memory_stays_bounded(server):
    process, rest_port, grpc_port, _ = server
    image = served.sample_images()[0]
    cases = load.hostile_requests(served.MODEL_NAME, image, MAX_REQUEST_BYTES)
    assert _rest(rest_port).predict([image])["num_detections"].shape == (1,)
    exact_peak = load.reset_peak_memory(process.pid)
    before = load.memory(process.pid)
    failures = []
    for case in cases:
        status, answer = load.send_rest(rest_port, case, timeout=ANSWER_WITHIN)
        if status not in case.rest_statuses or set(answer) != {"error"}:
            failures.append(f"REST {case.name}: {status} {answer}")
        if case.name.endswith("bomb 40000x40000") or case.name.endswith("bomb 20000x20000"):
            side = case.name.split()[-1].split("x")[0]
            if side not in answer.get("error", ""):
                failures.append(f"REST {case.name}: the error does not name the size: {answer}")
        if case.grpc_images is None:
            continue
        target = dict(model_name=case.grpc_model or served.MODEL_NAME, version=case.grpc_version,
                      signature_name=case.grpc_signature or "serving_default")
        with client_lib.connect(f"127.0.0.1:{grpc_port}", use_grpc=True, timeout=ANSWER_WITHIN, retry=NO_RETRY,
                                **target) as client:
            try:
                client.predict(case.grpc_images)
                failures.append(f"gRPC {case.name}: answered")
            except client_lib.PredictionError as e:
                if e.status not in case.grpc_statuses:
                    failures.append(f"gRPC {case.name}: {e.status} {e}")
    after = load.memory(process.pid)
    assert failures == []
    growth = (after["VmHWM"] if exact_peak else after["VmRSS"]) - before["VmRSS"]
    assert growth < GiB, f"resident memory grew by {growth / GiB:.2f} GiB over the hostile requests"
    # And it still serves.
    assert _rest(rest_port).predict([image])["num_detections"].shape == (1,)


def test_sixty_four_silent_connections_do_not_stop_valid_requests(server):
    _, rest_port, grpc_port, _ = server
    silent = [socket.create_connection(("127.0.0.1", rest_port), timeout=ANSWER_WITHIN) for _ in range(64)]
    try:
        # Half of them began a request and stalled; none sends anything more.
        for sock in silent[::2]:
            sock.sendall(b"POST /v1/models/maskrcnn:predict HTTP/1.1\r\nHost: x\r\n")
        images = served.sample_images()
        with _rest(rest_port) as rest, _grpc(grpc_port) as grpc:
            for i in range(4):
                assert rest.predict([images[i % 3]])["num_detections"].shape == (1,)
                assert grpc.predict([images[i % 3]])["num_detections"].shape == (1,)
    finally:
        for sock in silent:
            sock.close()


def _metric(rest_port, name, **labels):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics",
                                timeout=ANSWER_WITHIN) as response:
        text = response.read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_a_version_pushed_during_a_stream_takes_over_without_a_failed_request(server, base_dir):
    _, rest_port, grpc_port, access_log = server
    images = served.sample_images()
    rest_ok = dict(name="maskrcnn_serving_requests_total", API="predict", entrypoint="REST", status="OK")
    rest_before = {v: _metric(rest_port, **rest_ok, version=v) for v in ("1", "2")}
    errors, grpc_versions, rest_calls = [], [], []
    switched = threading.Event()
    stop = threading.Event()

    def grpc_stream():
        # The stub itself: its answers say which version answered.
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            consecutive = 0
            for _ in range(400):
                request = predict_pb2.PredictRequest()
                request.model_spec.name = served.MODEL_NAME
                request.inputs["images"].CopyFrom(tf.make_tensor_proto([images[0]], dtype=tf.string))
                try:
                    response = stub.Predict(request, timeout=ANSWER_WITHIN)
                except grpc.RpcError as e:
                    errors.append(f"gRPC: {e.code().name}: {e.details()}")
                    continue
                grpc_versions.append(response.model_spec.version.value)
                consecutive = consecutive + 1 if grpc_versions[-1] == 2 else 0
                if consecutive >= 5:
                    switched.set()
                    return

    def rest_stream():
        with _rest(rest_port) as client:
            extra = 0
            for i in range(400):
                after_switch = switched.is_set()
                try:
                    outputs = client.predict([images[i % 3]])
                    assert outputs["num_detections"].shape == (1,)
                    rest_calls.append(1)
                except client_lib.PredictionError as e:
                    errors.append(f"REST: {e}")
                if after_switch:
                    extra += 1
                    if extra >= 5:  # five more sent after the switch
                        return
                if stop.is_set():
                    return

    threads = [threading.Thread(target=grpc_stream)] + [threading.Thread(target=rest_stream) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(2)
    served.push(served.exported_model_dir(), base_dir, 2)
    threads[0].join(timeout=600)
    if not switched.is_set():
        stop.set()  # the REST streams would wait for a switch that did not come
    for t in threads[1:]:
        t.join(timeout=600)
    assert errors == []
    assert switched.is_set(), f"gRPC answers never came from version 2: {grpc_versions}"
    assert grpc_versions[0] == 1
    # Once version 2 answers, version 1 never does again.
    first_two = grpc_versions.index(2)
    assert set(grpc_versions[first_two:]) == {2}, grpc_versions
    rest_after = {v: _metric(rest_port, **rest_ok, version=v) for v in ("1", "2")}
    rest_by_version = {v: rest_after[v] - rest_before[v] for v in ("1", "2")}
    assert sum(rest_by_version.values()) == len(rest_calls)
    assert rest_by_version["1"] > 0 and rest_by_version["2"] >= 10, rest_by_version
    with open(access_log, encoding="utf-8") as f:
        assert any("version=2 api=predict entrypoint=REST status=OK" in line for line in f)


def test_sigterm_during_a_stream_loses_no_request_and_retries_carry_it_through_a_restart(base_dir, tmp_path,
                                                                                        caplog):
    rest_port, grpc_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    command = load.serve_command(base_dir, served.MODEL_NAME, rest_port, grpc_port)
    # Enough attempts to outlast a restart (TensorFlow's import and the model's load) on a loaded machine.
    patient = client_lib.RetryPolicy(max_attempts=200, initial_backoff=0.2, max_backoff=2.0)
    caplog.set_level(logging.WARNING, logger="maskrcnn_tfx.serving.client")
    first = load.start_server(command, str(tmp_path / "first.log"))
    load.wait_until_serving(rest_port, first, served.MODEL_NAME)
    phase = {"value": "first"}
    outcomes = []  # (client, phase when sent, "ok" or the error the client saw)
    lock = threading.Lock()
    done = threading.Event()

    def stream(name, make):
        images = served.sample_images()
        with make() as client:
            i = 0
            while not done.is_set() and i < 300:
                sent_in = phase["value"]
                try:
                    outputs = client.predict([images[i % 3]])
                    result = "ok" if outputs["num_detections"].shape == (1,) else f"bad answer {outputs}"
                except client_lib.PredictionError as e:
                    result = f"{e.status}: {e}"
                with lock:
                    outcomes.append((name, sent_in, result))
                i += 1

    threads = [threading.Thread(target=stream, args=("rest-a", lambda: _rest(rest_port, retry=patient))),
               threading.Thread(target=stream, args=("rest-b", lambda: _rest(rest_port, retry=patient))),
               threading.Thread(target=stream, args=("grpc", lambda: _grpc(grpc_port, retry=patient)))]
    second = None
    try:
        for t in threads:
            t.start()
        _wait(lambda: {n for n, _, _ in outcomes} == {"rest-a", "rest-b", "grpc"}, "answers from the first server")
        first.send_signal(signal.SIGTERM)
        phase["value"] = "stopping"
        assert first.wait(timeout=120) == 0
        with open(tmp_path / "first.log", encoding="utf-8", errors="replace") as f:
            assert "Stopped" in f.read()
        phase["value"] = "down"
        time.sleep(1.0)  # the clients meet a closed port for a while
        second = load.start_server(command, str(tmp_path / "second.log"))
        phase["value"] = "second"
        count = len(outcomes)
        _wait(lambda: all(sum(1 for n, p, _ in outcomes[count:] if n == name and p == "second") >= 3
                          for name in ("rest-a", "rest-b", "grpc")), "answers from the second server")
    finally:
        done.set()
        for t in threads:
            t.join(timeout=300)
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=120)
    failed = [o for o in outcomes if o[2] != "ok"]
    assert failed == []
    assert {p for _, p, _ in outcomes} >= {"first", "second"}
    assert "retrying" in caplog.text  # the restart was met and carried through by the retries


def _wait(condition, what, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
