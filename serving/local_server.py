"""A TF Serving-compatible server for development and CI: the same REST and gRPC APIs over the same model
folders (``BASE/<integer version>/``), in Python, for machines without ``tensorflow_model_server``.

It serves the highest complete version (or what the version policy says), picks up versions the Pusher adds
while it runs, and keeps serving the loaded ones when a new one fails to load (see
:mod:`serving.model_store`). It binds 127.0.0.1 unless told otherwise, refuses request bodies above a limit,
and bounds its threads and concurrent model calls. Production runs TF Serving itself (the README's
"Serving" section: Docker Compose, Kubernetes); the clients cannot tell the two apart.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import List, Optional, Sequence

from serving.model_config import ServedModel
from serving.model_store import ModelRegistry
from serving.predictor import Predictor

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
    workers: int = 8  # threads of each API (connections / calls served at once)
    max_concurrent_predictions: int = 2  # model calls at once (TensorFlow already uses every core per call)
    poll_seconds: float = 1.0
    settle_seconds: float = 2.0
    warmup: bool = True

    def __post_init__(self):
        if self.rest_port is None and self.grpc_port is None:
            raise ValueError("neither a REST nor a gRPC port: nothing to serve")
        for name in ("max_request_bytes", "workers", "max_concurrent_predictions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")


class LocalServer:
    """``start()`` loads the models and opens the ports; ``stop()`` (or leaving the ``with`` block) ends."""

    def __init__(self, models: Sequence[ServedModel], options: ServerOptions = ServerOptions()):
        self.options = options
        self.registry = ModelRegistry(list(models), poll_seconds=options.poll_seconds,
                                      settle_seconds=options.settle_seconds, warmup=options.warmup)
        self.predictor = Predictor(self.registry, options.max_concurrent_predictions)
        self._rest = None
        self._rest_thread: Optional[threading.Thread] = None
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
                from serving.rest_server import RestServer  # pylint: disable=import-outside-toplevel

                self._rest = RestServer((opts.host, opts.rest_port), self.predictor,
                                        max_request_bytes=opts.max_request_bytes, workers=opts.workers)
                self.rest_port = self._rest.server_address[1]
                self._rest_thread = threading.Thread(target=self._rest.serve_forever, kwargs={"poll_interval": 0.2},
                                                     name="rest-server", daemon=True)
                self._rest_thread.start()
                log.info("REST API at http://%s:%d/v1/models/", opts.host, self.rest_port)
            if opts.grpc_port is not None:
                from serving.grpc_server import make_grpc_server  # pylint: disable=import-outside-toplevel

                host = f"[{opts.host}]" if ":" in opts.host else opts.host
                self._grpc, self.grpc_port = make_grpc_server(
                    f"{host}:{opts.grpc_port}", self.predictor, max_request_bytes=opts.max_request_bytes,
                    workers=opts.workers)
                self._grpc.start()
                log.info("gRPC API at %s:%d", opts.host, self.grpc_port)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Stops accepting, lets the requests in progress finish (up to ``grace_seconds``), unloads."""
        if self._grpc is not None:
            self._grpc.stop(grace_seconds).wait(grace_seconds + 1)
            self._grpc = None
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
            self._rest_thread.join(timeout=grace_seconds)
            self._rest = None
        self.registry.stop()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def single_model(base_path: str, name: str, **kwargs) -> List[ServedModel]:
    return [ServedModel(name=name, base_path=base_path, **kwargs)]
