"""Benchmark: the local server under a mixed load of valid and hostile requests, in one run.

``maskrcnn-tfx serve`` (its own process, the tiny preset's Mask R-CNN exported by ``maskrcnn_tfx.trainer.export``
through ``maskrcnn_tfx.testing.models``) gets 10,000 REST requests from 32 client threads, then a smaller gRPC run: 90%
valid (one of three small PNG/JPEG images per request) and 10% hostile, every kind of ``maskrcnn_tfx.testing.serving``
in turn (pixel bombs of 20000x20000 and 40000x40000 in PNG and JPEG, truncated and non-image bytes, bad base64,
deep JSON, oversized bodies, unknown models, versions, labels and signatures). It prints the count of each
status per kind, the unexpected statuses and the connection errors (both must be zero), p50/p99 latency of the
valid requests, requests per second against direct SavedModel calls of the same images made here in the same
run, and the server's resident memory before, at its peak and after.

    .venv/bin/python -m benchmarks.serving_load [--requests 10000] [--grpc-requests 2000] [--concurrency 32]
"""
from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Dict, List, Tuple

import maskrcnn_tfx  # noqa: F401  (before TensorFlow: selects tf_keras)

MAX_REQUEST_BYTES = 8 << 20
HOSTILE_FRACTION = 0.1
TIMEOUT = 120.0  # seconds a request may take before it counts as a connection error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="REST requests (default 10000)")
    parser.add_argument("--grpc-requests", type=int, default=2_000, help="gRPC requests (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="client threads (default 32)")
    parser.add_argument("--direct-calls", type=int, default=300,
                        help="direct SavedModel calls for the reference (default 300)")
    parser.add_argument("--max-concurrent-predictions", type=int, default=2,
                        help="the server's concurrent model calls, and the direct calls' threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1)))))]


def plan(count: int, hostile_kinds: List, seed: int) -> List:
    """``count`` requests: None for a valid one, else a hostile case, every kind in turn, shuffled."""
    n_hostile = int(round(count * HOSTILE_FRACTION))
    items = [hostile_kinds[i % len(hostile_kinds)] for i in range(n_hostile)] + [None] * (count - n_hostile)
    random.Random(seed).shuffle(items)
    return items


def run_threads(items: List, concurrency: int, make_worker) -> Tuple[float, List]:
    """Runs ``items`` on ``concurrency`` threads (each a ``make_worker()`` callable item -> result)."""
    results: List = [None] * len(items)
    cursor = iter(range(len(items)))
    lock = threading.Lock()

    def loop():
        work = make_worker()
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            results[index] = work(items[index])

    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, results


def rest_worker(port: int, model: str, images: List[bytes], load):
    """A callable sending one request (valid: None) on a keep-alive connection of its thread:
    (kind, status or an error name, seconds)."""
    state = {"connection": None, "i": 0}
    valid_bodies = [json.dumps({"instances": [{"b64": base64.b64encode(i).decode()}]}).encode() for i in images]

    def connection():
        if state["connection"] is None:
            state["connection"] = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        return state["connection"]

    def send(case):
        kind = "valid" if case is None else case.name
        start = time.perf_counter()
        try:
            if case is not None and case.declared_length is not None:
                status, _ = load.send_rest(port, case, timeout=TIMEOUT)  # only the head: its own connection
                return kind, status, time.perf_counter() - start
            if case is None:
                path, body = f"/v1/models/{model}:predict", valid_bodies[state["i"] % len(valid_bodies)]
                state["i"] += 1
            else:
                path, body = case.path, case.body
            conn = connection()
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                state["connection"] = None
            if response.status == 200 and b'"predictions"' not in payload[:64]:
                return kind, "200 without predictions", time.perf_counter() - start
            return kind, response.status, time.perf_counter() - start
        except Exception as e:  # pylint: disable=broad-except  (counted: a connection error)
            if state["connection"] is not None:
                state["connection"].close()
                state["connection"] = None
            return kind, f"error {type(e).__name__}", time.perf_counter() - start

    return send


def grpc_worker(port: int, model: str, images: List[bytes]):
    import grpc  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=import-outside-toplevel

    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    state = {"i": 0}

    def send(case):
        kind = "valid" if case is None else case.name
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model if case is None or not case.grpc_model else case.grpc_model
        if case is not None and case.grpc_version is not None:
            request.model_spec.version.value = case.grpc_version
        if case is not None and case.grpc_signature:
            request.model_spec.signature_name = case.grpc_signature
        batch = [images[state["i"] % len(images)]] if case is None else list(case.grpc_images)
        state["i"] += 1
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string, shape=[len(batch)]))
        start = time.perf_counter()
        try:
            response = stub.Predict(request, timeout=TIMEOUT)
            status = "OK" if "num_detections" in response.outputs else "OK without outputs"
        except grpc.RpcError as e:
            status = e.code().name
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                status = f"error {status}"
        return kind, status, time.perf_counter() - start

    return send


def summarize(title: str, results: List, seconds: float, expected: Dict[str, Tuple], ok, direct_rate: float) -> int:
    counts = collections.Counter((kind, status) for kind, status, _ in results)
    by_kind: Dict[str, Dict] = collections.defaultdict(dict)
    for (kind, status), n in counts.items():
        by_kind[kind][status] = n
    unexpected = sum(n for (kind, status), n in counts.items() if status not in expected[kind])
    errors = sum(n for (_, status), n in counts.items() if str(status).startswith("error"))
    valid = [s for kind, status, s in results if kind == "valid" and status == ok]
    print(f"\n{title}: {len(results)} requests in {seconds:.1f} s")
    print(f"  {'kind':<28}{'count':>7}  statuses")
    for kind in sorted(by_kind, key=lambda k: (k != "valid", k)):
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(by_kind[kind].items(), key=lambda x: str(x[0])))
        print(f"  {kind:<28}{sum(by_kind[kind].values()):>7}  {statuses}")
    print(f"  unexpected statuses: {unexpected}; connection errors: {errors}")
    if valid:
        valid_rate = len(valid) / seconds
        print(f"  valid requests: p50 {percentile(valid, 50) * 1e3:.0f} ms, p99 {percentile(valid, 99) * 1e3:.0f} ms; "
              f"{len(results) / seconds:.1f} req/s in all, {valid_rate:.1f} valid req/s = "
              f"{valid_rate / direct_rate:.2f}x the direct SavedModel calls ({direct_rate:.1f} calls/s)")
    return unexpected + errors


def main(argv=None) -> int:
    args = parse_args(argv)
    import portpicker  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from maskrcnn_tfx.testing import models as served  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx.testing import serving as load  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx import signature as sig  # pylint: disable=import-outside-toplevel

    with open("/proc/loadavg", encoding="ascii") as f:
        print(f"load average at start: {' '.join(f.read().split()[:3])} on {os.cpu_count()} CPUs")
    model_dir = served.exported_model_dir()
    images = served.sample_images()
    hostile = load.hostile_requests(served.MODEL_NAME, images[0], MAX_REQUEST_BYTES)
    base = tempfile.mkdtemp(prefix="serving_load_")
    served.push(model_dir, base, 1)
    rest_port, grpc_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    server = load.start_server(load.serve_command(
        base, served.MODEL_NAME, rest_port, grpc_port, "--max-request-bytes", str(MAX_REQUEST_BYTES),
        "--max-concurrent-predictions", str(args.max_concurrent_predictions)), os.path.join(base, "server.log"))
    failures = 0
    try:
        load.wait_until_serving(rest_port, server, served.MODEL_NAME)

        # The reference: the same images through the SavedModel here, on as many threads as the server's
        # model calls.
        function = tf.saved_model.load(model_dir).signatures[sig.SERVING_SIGNATURE]
        batches = [tf.constant([i]) for i in images]
        function(**{sig.IMAGES_INPUT: batches[0]})
        seconds, _ = run_threads(list(range(args.direct_calls)), args.max_concurrent_predictions,
                                 lambda: lambda i: function(**{sig.IMAGES_INPUT: batches[i % 3]})["num_detections"]
                                 .numpy())
        direct_rate = args.direct_calls / seconds
        print(f"direct SavedModel calls: {direct_rate:.1f} calls/s on {args.max_concurrent_predictions} threads")

        # Warm: one valid request per client thread's worth, then the memory baseline.
        run_threads([None] * args.concurrency, args.concurrency,
                    lambda: rest_worker(rest_port, served.MODEL_NAME, images, load))
        exact_peak = load.reset_peak_memory(server.pid)
        before = load.memory(server.pid)

        expected_rest = {"valid": (200,), **{h.name: h.rest_statuses for h in hostile}}
        items = plan(args.requests, hostile, args.seed)
        seconds, results = run_threads(items, args.concurrency,
                                       lambda: rest_worker(rest_port, served.MODEL_NAME, images, load))
        after_rest = load.memory(server.pid)
        failures += summarize(f"REST at concurrency {args.concurrency}", results, seconds, expected_rest, 200,
                              direct_rate)

        grpc_hostile = [h for h in hostile if h.grpc_images is not None]
        expected_grpc = {"valid": ("OK",), **{h.name: h.grpc_statuses for h in grpc_hostile}}
        items = plan(args.grpc_requests, grpc_hostile, args.seed + 1)
        seconds, results = run_threads(items, args.concurrency,
                                       lambda: grpc_worker(grpc_port, served.MODEL_NAME, images))
        after = load.memory(server.pid)
        failures += summarize(f"gRPC at concurrency {args.concurrency}", results, seconds, expected_grpc, "OK",
                              direct_rate)

        mib = 1 << 20
        peak = f", peak {after['VmHWM'] / mib:.0f} MiB" if exact_peak else ""
        growth = (after["VmHWM"] if exact_peak else after["VmRSS"]) - before["VmRSS"]
        print(f"\nserver resident memory: {before['VmRSS'] / mib:.0f} MiB before, {after_rest['VmRSS'] / mib:.0f} MiB "
              f"after REST, {after['VmRSS'] / mib:.0f} MiB after gRPC{peak} (growth to the peak: "
              f"{growth / mib:.0f} MiB)")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except Exception:  # pylint: disable=broad-except
            server.kill()
        shutil.rmtree(base, ignore_errors=True)
    with open("/proc/loadavg", encoding="ascii") as f:
        print(f"load average at the end: {' '.join(f.read().split()[:3])}")
    print("FAILED: unexpected statuses or connection errors" if failures
          else "no unexpected status, no connection error")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
