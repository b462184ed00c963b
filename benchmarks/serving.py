"""Benchmark: requests per second and p50/p99 latency of the local server's REST and gRPC APIs against a direct
SavedModel call, at concurrency 1 and 8, in the same run, on the tiny model.

The tiny preset's Mask R-CNN (random init; exported by ``maskrcnn_tfx.trainer.export`` through
``maskrcnn_tfx.testing.models``) is pushed as version 1 into a temporary base directory and served by ``maskrcnn-tfx
serve`` in its own process (as TF Serving would be); the clients (``maskrcnn_tfx.serving.client``, one per thread, one
image per request) and the direct calls (``tf.saved_model.load`` in this process, the same image) run here. The figures
that carry over to other machines are the ratios to the direct call: the API's own cost (encoding, transport,
JSON for REST) on top of the model.

    .venv/bin/python -m benchmarks.serving --requests 24
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List

import maskrcnn_tfx  # noqa: F401  (before TensorFlow: selects tf_keras)

CONCURRENCIES = (1, 8)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=24, help="requests per client thread (default 24)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured requests per client first (default 3)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every measurement, interleaved, the median kept (default 3): others "
                             "sharing the machine make single runs drift")
    parser.add_argument("--max-concurrent-predictions", type=int, default=2,
                        help="the server's concurrent model calls (default 2, the server's default)")
    return parser.parse_args(argv)


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[rank]


def measure(make_call: Callable[[], Callable[[], None]], concurrency: int, requests: int, warmup: int) -> Dict:
    """Runs ``concurrency`` threads of ``requests`` calls each (after ``warmup`` unmeasured ones)."""
    latencies: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(concurrency + 1)

    def worker():
        call = make_call()
        for _ in range(warmup):
            call()
        ready.wait()
        mine = []
        for _ in range(requests):
            start = time.perf_counter()
            try:
                call()
            except Exception as e:  # pylint: disable=broad-except
                errors.append(repr(e))
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"rps": len(latencies) / elapsed, "p50": percentile(latencies, 50) * 1e3,
            "p99": percentile(latencies, 99) * 1e3, "mean": statistics.mean(latencies) * 1e3,
            "requests": len(latencies), "errors": errors}


def median_round(values: List[Dict]) -> Dict:
    """The round with the median throughput (its latencies with it); errors of every round."""
    ordered = sorted(values, key=lambda r: r["rps"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["errors"] = [e for r in values for e in r["errors"]]
    return chosen


def load_average() -> str:
    with open("/proc/loadavg", encoding="utf-8") as f:
        return " ".join(f.read().split()[:3])


def main(argv=None) -> int:
    args = parse_args(argv)
    import portpicker  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from maskrcnn_tfx.testing import models as served  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx.testing import serving as serving_process  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx import signature as sig  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx.serving import client as client_lib  # pylint: disable=import-outside-toplevel

    print(f"load average at start: {load_average()} on {os.cpu_count()} CPUs")
    start = time.perf_counter()
    model_dir = served.exported_model_dir()
    print(f"exported the tiny model in {time.perf_counter() - start:.0f} s")
    base = tempfile.mkdtemp(prefix="serving_bench_")
    served.push(model_dir, base, 1)
    rest_port, grpc_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    server = serving_process.start_server(serving_process.serve_command(
        base, served.MODEL_NAME, rest_port, grpc_port,
        "--max-concurrent-predictions", str(args.max_concurrent_predictions)), os.path.join(base, "server.log"))
    image = served.sample_images()[0]
    try:
        serving_process.wait_until_serving(rest_port, server, served.MODEL_NAME)
        loaded = tf.saved_model.load(model_dir)
        function = loaded.signatures[sig.SERVING_SIGNATURE]
        batch = tf.constant([image])

        def direct():
            return lambda: function(**{sig.IMAGES_INPUT: batch})["num_detections"].numpy()

        def rest():
            client = client_lib.connect(f"http://127.0.0.1:{rest_port}", model_name=served.MODEL_NAME)
            return lambda: client.predict([image])

        def grpc():
            client = client_lib.connect(f"127.0.0.1:{grpc_port}", use_grpc=True, model_name=served.MODEL_NAME)
            return lambda: client.predict([image])

        rounds: Dict = {}
        modes = [("direct", direct), ("rest", rest), ("grpc", grpc)]
        for round_index in range(args.rounds):
            for concurrency in CONCURRENCIES:
                # The order rotates each round, so drift in the machine's load does not favour one API.
                shift = round_index % len(modes)
                for name, make in modes[shift:] + modes[:shift]:
                    r = measure(make, concurrency, args.requests, args.warmup)
                    rounds.setdefault((name, concurrency), []).append(r)
                    print(f"  round {round_index + 1}: {name:<6} at concurrency {concurrency}: {r['rps']:.2f} req/s "
                          f"(load {load_average()})", flush=True)
        results = {key: median_round(values) for key, values in rounds.items()}
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(base, ignore_errors=True)

    print(f"\nTiny Mask R-CNN, one {len(image)}-byte PNG per request, {args.requests} requests per client, "
          f"median of {args.rounds} rounds; server: maskrcnn-tfx serve, {args.max_concurrent_predictions} "
          f"concurrent model calls")
    print(f"{'API':<8}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'req/s vs direct':>17}"
          f"{'p50 vs direct':>15}{'errors':>8}")
    for concurrency in CONCURRENCIES:
        reference = results["direct", concurrency]
        for name in ("direct", "rest", "grpc"):
            r = results[name, concurrency]
            print(f"{name:<8}{concurrency:>8}{r['rps']:>9.2f}{r['p50']:>9.0f}{r['p99']:>9.0f}"
                  f"{r['rps'] / reference['rps']:>17.2f}{r['p50'] / reference['p50']:>15.2f}{len(r['errors']):>8}")
    print(f"load average at the end: {load_average()}")
    failed = sum(len(r["errors"]) for r in results.values())
    if failed:
        print(f"{failed} requests failed; first: {next(e for r in results.values() for e in r['errors'])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
