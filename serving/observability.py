"""What the local server tells an operator: Prometheus metrics and an access log, shared by REST and gRPC.

Metrics (Prometheus' text format at ``GET /monitoring/prometheus/metrics`` on the REST port, the path TF
Serving uses with ``--monitoring_config_file``):

- ``maskrcnn_serving_requests_total{model_name, version, API, entrypoint, status}``: answered requests, by the
  served model and version, the API (``predict``, ``metadata``, ``status``, ``metrics``), the entrypoint
  (``REST`` or ``GRPC``) and TF Serving's status code name (``OK``, ``INVALID_ARGUMENT``, ``NOT_FOUND``...;
  the REST front end's own refusals: ``RESOURCE_EXHAUSTED`` for a body above the limit, as gRPC says it,
  ``DEADLINE_EXCEEDED`` for a body not sent in time, ``UNAVAILABLE`` when busy).
- ``maskrcnn_serving_request_latency_seconds{model_name, API, entrypoint}``: a histogram of the time from the
  request's head to its answer.
- ``maskrcnn_serving_rest_open_connections`` and ``maskrcnn_serving_rest_refused_connections_total``
  (answered 503 beyond ``--max-connections``), ``maskrcnn_serving_rest_timeouts_total{phase}`` (connections
  closed because a request head, body or answer did not move in time).

``model_name`` is a served model's name or empty (a request for an unknown model: the label values stay a
bounded set whatever the clients send); ``version`` the version that answered, or empty.

The access log (``maskrcnn-tfx serve --access-log FILE``, ``-`` for standard error) has one line per request,
Apache's common log format followed by the latency in seconds and the labels above::

    127.0.0.1 - - [01/Dec/2026:23:59:59 +0000] "POST /v1/models/maskrcnn:predict HTTP/1.1" 200 5120 0.084211 \
model=maskrcnn version=1 api=predict entrypoint=REST status=OK
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import Iterable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

METRICS_PATH = "/monitoring/prometheus/metrics"
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
ACCESS_LOGGER = "serving.access"
# Seconds: from a metadata call (milliseconds) to a large batch on a slow CPU (tens of seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclasses.dataclass
class RequestRecord:
    """One request as it is answered; the front ends fill it in as they learn more."""

    entrypoint: str  # "REST" or "GRPC"
    peer: str
    request_line: str  # REST: 'POST /v1/... HTTP/1.1'; gRPC: the method's full name
    api: str = "unknown"
    model_name: str = ""
    version: str = ""
    status: str = "OK"
    http_status: Optional[int] = None
    bytes_sent: int = 0
    start: float = dataclasses.field(default_factory=time.perf_counter)


class Observer:
    """The server's metrics registry and access log; ``finish(record)`` accounts for one answered request."""

    def __init__(self, model_names: Iterable[str], access_log: Optional[logging.Logger] = None):
        self._model_names = frozenset(model_names)
        self.access_log = access_log
        # A registry of its own: several servers in one process (tests) do not share counts.
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "maskrcnn_serving_requests", "Requests answered, by model, version, API, entrypoint and status code",
            ["model_name", "version", "API", "entrypoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "maskrcnn_serving_request_latency_seconds", "Time from a request's head to its answer",
            ["model_name", "API", "entrypoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.open_connections = Gauge(
            "maskrcnn_serving_rest_open_connections", "Open REST connections", registry=self.registry)
        self.refused_connections = Counter(
            "maskrcnn_serving_rest_refused_connections",
            "REST connections answered 503 because --max-connections were open", registry=self.registry)
        self.timeouts = Counter(
            "maskrcnn_serving_rest_timeouts",
            "REST connections closed because the request head, the body or the answer did not move in time",
            ["phase"], registry=self.registry)

    def model_label(self, name: Optional[str]) -> str:
        return name if name in self._model_names else ""

    def finish(self, record: RequestRecord) -> None:
        seconds = time.perf_counter() - record.start
        model = self.model_label(record.model_name)
        self.requests.labels(model, record.version, record.api, record.entrypoint, record.status).inc()
        self.latency.labels(model, record.api, record.entrypoint).observe(seconds)
        if self.access_log is not None:
            stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
            http_status = record.http_status if record.http_status is not None else "-"
            self.access_log.info(
                '%s - - [%s] "%s" %s %d %.6f model=%s version=%s api=%s entrypoint=%s status=%s',
                record.peer or "-", stamp, record.request_line.replace('"', "%22"), http_status,
                record.bytes_sent, seconds, model or "-", record.version or "-", record.api,
                record.entrypoint, record.status)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format (version 0.0.4)."""
        return generate_latest(self.registry)


def open_access_log(target: Optional[str]) -> Optional[logging.Logger]:
    """A logger writing bare access-log lines to ``target`` (a file, appended; ``-``: standard error)."""
    if not target:
        return None
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = logging.StreamHandler(sys.stderr) if target == "-" else logging.FileHandler(target, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the lines go to the access log only, not into the server's log
    return logger
