"""A TF Serving-compatible server for development and CI: the same REST and gRPC APIs over the same model
folders (``BASE/<integer version>/``), in Python, for machines without ``tensorflow_model_server``.

It serves the highest complete version (or what the version policy says), picks up versions the Pusher adds
while it runs, and keeps serving the loaded ones when a new one fails to load (see
:mod:`maskrcnn_tfx.serving.model_store`). It binds 127.0.0.1 unless told otherwise, refuses request bodies above a
limit, bounds its open connections, threads and concurrent model calls, closes connections that are too slow, and
counts its requests for Prometheus (:mod:`maskrcnn_tfx.serving.observability`). Production runs TF Serving itself (the
README's "Serving" section: Docker Compose, Kubernetes); the clients cannot tell the two apart.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import List, Optional, Sequence

from maskrcnn_tfx.serving.model_config import ServedModel
from maskrcnn_tfx.serving.model_store import ModelRegistry
from maskrcnn_tfx.serving.observability import Observer, open_access_log
from maskrcnn_tfx.serving.predictor import Predictor

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_REST_PORT = 8501
DEFAULT_GRPC_PORT = 8500
DEFAULT_MAX_REQUEST_BYTES = 32 << 20


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    host: str = DEFAULT_HOST
    rest_port: Optional[int] = DEFAULT_REST_PORT  # None: no REST API; 0: any free port
    grpc_port: Optional[int] = DEFAULT_GRPC_PORT  # None: no gRPC API; 0: any free port
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    workers: int = 8  # threads of each API (requests being decoded / answered at once)
    max_concurrent_predictions: int = 2  # model calls at once (TensorFlow already uses every core per call)
    max_connections: int = 256  # REST connections open at once; more are answered 503
    header_timeout: float = 10.0  # seconds from a request's first byte to its whole head (REST)
    body_timeout: float = 60.0  # seconds for a request's body to arrive (REST; 408 after)
    idle_timeout: float = 30.0  # seconds a REST connection may stay open without sending a request
    send_timeout: float = 60.0  # seconds for a client to take its answer (REST)
    access_log: Optional[str] = None  # a file for one line per request ("-": standard error)
    poll_seconds: float = 1.0
    settle_seconds: float = 2.0
    warmup: bool = True

    def __post_init__(self):
        if self.rest_port is None and self.grpc_port is None:
            raise ValueError("neither a REST nor a gRPC port: nothing to serve")
        for name in ("max_request_bytes", "workers", "max_concurrent_predictions", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("header_timeout", "body_timeout", "idle_timeout", "send_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds (got {getattr(self, name)})")


class LocalServer:
    """``start()`` loads the models and opens the ports; ``stop()`` (or leaving the ``with`` block) ends."""

    def __init__(self, models: Sequence[ServedModel], options: ServerOptions = ServerOptions()):
        self.options = options
        self.registry = ModelRegistry(list(models), poll_seconds=options.poll_seconds,
                                      settle_seconds=options.settle_seconds, warmup=options.warmup)
        self.predictor = Predictor(self.registry, options.max_concurrent_predictions)
        self.observer = Observer([m.name for m in models], open_access_log(options.access_log))
        self._rest = None
        self._grpc = None
        self.rest_port: Optional[int] = None
        self.grpc_port: Optional[int] = None

    def start(self) -> "LocalServer":
        opts = self.options
        self.registry.start()
        for name, store in self.registry.stores.items():
            versions = store.versions()
            if versions:
                log.info("serving model %s version %s", name, versions[0])
            else:
                log.warning("model %s: no complete version under %s yet; waiting for one", name,
                            store.config.base_path)
        try:
            if opts.rest_port is not None:
                from maskrcnn_tfx.serving.rest_server import RestServer  # pylint: disable=import-outside-toplevel

                self._rest = RestServer(
                    (opts.host, opts.rest_port), self.predictor, max_request_bytes=opts.max_request_bytes,
                    workers=opts.workers, max_connections=opts.max_connections,
                    header_timeout=opts.header_timeout, body_timeout=opts.body_timeout,
                    idle_timeout=opts.idle_timeout, send_timeout=opts.send_timeout, observer=self.observer)
                self._rest.start()
                self.rest_port = self._rest.server_address[1]
                log.info("REST API at http://%s:%d/v1/models/", opts.host, self.rest_port)
            if opts.grpc_port is not None:
                from maskrcnn_tfx.serving.grpc_server import make_grpc_server  # pylint: disable=import-outside-toplevel

                host = f"[{opts.host}]" if ":" in opts.host else opts.host
                self._grpc, self.grpc_port = make_grpc_server(
                    f"{host}:{opts.grpc_port}", self.predictor, max_request_bytes=opts.max_request_bytes,
                    workers=opts.workers, observer=self.observer)
                self._grpc.start()
                log.info("gRPC API at %s:%d", opts.host, self.grpc_port)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Stops accepting, lets the requests in progress finish (up to ``grace_seconds``), unloads."""
        grpc_stopped = self._grpc.stop(grace_seconds) if self._grpc is not None else None  # both APIs at once
        if self._rest is not None:
            self._rest.stop(grace_seconds)
            self._rest = None
        if grpc_stopped is not None:
            grpc_stopped.wait(grace_seconds + 1)
            self._grpc = None
        self.registry.stop()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def single_model(base_path: str, name: str, **kwargs) -> List[ServedModel]:
    return [ServedModel(name=name, base_path=base_path, **kwargs)]
