"""``maskrcnn-tfx serve``: the TF Serving-compatible local server over the Pusher's base directory.

    maskrcnn-tfx serve --model-base-path outputs/serving --model-name maskrcnn

serves REST on 127.0.0.1:8501 and gRPC on 127.0.0.1:8500 (TF Serving's ports) until SIGINT or SIGTERM, with
Prometheus metrics at http://127.0.0.1:8501/monitoring/prometheus/metrics.
``--model-config-file`` reads TF Serving's ``models.config`` instead (the file ``serving-config`` writes).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from maskrcnn_tfx.serving import local_server, model_config  # pylint: disable=import-outside-toplevel  (no TensorFlow)

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-base-path", metavar="DIR",
                        help="the folder of integer version folders (the Pusher's base directory)")
    source.add_argument("--model-config-file", metavar="FILE",
                        help="TF Serving's models.config (model_config_list) naming the models to serve")
    parser.add_argument("--model-name", default=model_config.DEFAULT_MODEL_NAME,
                        help=f"the name in /v1/models/NAME, with --model-base-path "
                             f"(default {model_config.DEFAULT_MODEL_NAME})")
    parser.add_argument("--num-versions", type=int, default=1, metavar="N",
                        help="serve the N highest versions (default 1), with --model-base-path")
    parser.add_argument("--version-label", action="append", default=[], metavar="LABEL=VERSION",
                        help="a version label (repeatable), e.g. stable=1700000000, with --model-base-path")
    parser.add_argument("--host", default=local_server.DEFAULT_HOST,
                        help=f"address to bind (default {local_server.DEFAULT_HOST}: this machine only; "
                             f"0.0.0.0 opens it to the network)")
    parser.add_argument("--rest-port", type=int, default=local_server.DEFAULT_REST_PORT,
                        help=f"REST port (default {local_server.DEFAULT_REST_PORT}; 0 picks a free one)")
    parser.add_argument("--grpc-port", type=int, default=local_server.DEFAULT_GRPC_PORT,
                        help=f"gRPC port (default {local_server.DEFAULT_GRPC_PORT}; 0 picks a free one)")
    parser.add_argument("--no-rest", action="store_true", help="serve gRPC only")
    parser.add_argument("--no-grpc", action="store_true", help="serve REST only")
    parser.add_argument("--max-request-bytes", type=int, default=local_server.DEFAULT_MAX_REQUEST_BYTES,
                        metavar="BYTES", help="largest request body accepted (default 32 MiB)")
    parser.add_argument("--workers", type=int, default=8,
                        help="threads of each API: requests decoded and answered at once (default 8)")
    parser.add_argument("--max-connections", type=int, default=local_server.ServerOptions.max_connections,
                        metavar="N", help="REST connections open at once; more are answered 503 (default 256)")
    parser.add_argument("--header-timeout", type=float, default=local_server.ServerOptions.header_timeout,
                        metavar="S", help="seconds for a REST request's head to arrive once it has begun "
                                          "(default 10)")
    parser.add_argument("--body-timeout", type=float, default=local_server.ServerOptions.body_timeout,
                        metavar="S", help="seconds for a REST request's body to arrive (default 60; 408 after)")
    parser.add_argument("--idle-timeout", type=float, default=local_server.ServerOptions.idle_timeout,
                        metavar="S", help="seconds a REST connection may stay open without a request (default 30)")
    parser.add_argument("--send-timeout", type=float, default=local_server.ServerOptions.send_timeout,
                        metavar="S", help="seconds for a REST client to take its answer (default 60)")
    parser.add_argument("--access-log", metavar="FILE",
                        help="append one line per request (REST and gRPC) to FILE; '-' for standard error")
    parser.add_argument("--max-concurrent-predictions", type=int, default=2, metavar="N",
                        help="model calls running at once (default 2)")
    parser.add_argument("--poll-seconds", type=float, default=1.0, metavar="S",
                        help="how often the base paths are checked for new versions (default 1)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="do not replay the model's warm-up requests when a version loads")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def _models(args):
    from maskrcnn_tfx.serving import model_config  # pylint: disable=import-outside-toplevel

    if args.model_config_file:
        return model_config.read_model_config(args.model_config_file)
    labels = {}
    for item in args.version_label:
        label, _, version = item.partition("=")
        if not label or not version.isdigit():
            raise model_config.ModelConfigError(f"--version-label {item!r} is not LABEL=VERSION")
        labels[label] = int(version)
    import os  # pylint: disable=import-outside-toplevel

    return [model_config.ServedModel(args.model_name, os.path.abspath(args.model_base_path),
                                     model_config.VersionPolicy("latest", num_versions=args.num_versions),
                                     labels)]


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from maskrcnn_tfx.serving import local_server, model_config  # pylint: disable=import-outside-toplevel

    try:
        models = _models(args)
        options = local_server.ServerOptions(
            host=args.host, rest_port=None if args.no_rest else args.rest_port,
            grpc_port=None if args.no_grpc else args.grpc_port, max_request_bytes=args.max_request_bytes,
            workers=args.workers, max_concurrent_predictions=args.max_concurrent_predictions,
            poll_seconds=args.poll_seconds, warmup=not args.no_warmup, max_connections=args.max_connections,
            header_timeout=args.header_timeout, body_timeout=args.body_timeout, idle_timeout=args.idle_timeout,
            send_timeout=args.send_timeout, access_log=args.access_log)
    except (ValueError, OSError) as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server = local_server.LocalServer(models, options)
        server.start()
    except OSError as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 1
    except model_config.ModelConfigError as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 2
    parts = []
    if server.rest_port is not None:
        parts.append(f"REST http://{args.host}:{server.rest_port}")
    if server.grpc_port is not None:
        parts.append(f"gRPC {args.host}:{server.grpc_port}")
    print(f"Serving {', '.join(m.name for m in models)} on {' and '.join(parts)} (Ctrl-C to stop)", flush=True)
    stop.wait()
    print("Stopping: finishing the requests in progress", flush=True)
    server.stop()
    print("Stopped", flush=True)
    return 0
