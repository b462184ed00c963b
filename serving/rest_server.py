"""The local server's REST front end: TF Serving's REST API on aiohttp's asynchronous HTTP server.

Routes (TF Serving's): ``GET /v1/models/NAME[/versions/N|/labels/L]`` (model status),
``GET .../metadata`` and ``POST ...:predict``; ``GET /monitoring/prometheus/metrics`` (Prometheus,
:mod:`maskrcnn_tfx.serving.observability`). Every error is ``{"error": "..."}`` with TF Serving's HTTP status for its
code (400 for a bad request, 404 for an unknown model or version).

One event loop serves every connection, so a connection costs no thread while it is idle or slow:

- at most ``max_connections`` are open; a connection beyond them is answered 503 (the client's retry) and
  closed;
- a request head must arrive within ``header_timeout`` seconds of its first byte, and a connection must
  send a request within ``idle_timeout`` seconds of opening or of its previous answer; its body must arrive
  within ``body_timeout`` (else 408) and its answer be taken within ``send_timeout``; otherwise it is
  closed;
- bodies above ``max_request_bytes`` are refused (413) from their ``Content-Length``, before they are read;
- parsing the JSON, the model call and writing the answer's JSON run on ``workers`` threads (a bounded
  executor), never on the event loop; the predictor bounds the model calls further.

``stop()`` stops listening, lets the requests in progress answer (up to a grace period) and closes the idle
connections.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
from typing import Dict, Optional, Tuple

from aiohttp import web

from maskrcnn_tfx.serving import rest_codec
from maskrcnn_tfx.serving.model_store import ServingError, invalid_argument
from maskrcnn_tfx.serving.observability import METRICS_CONTENT_TYPE, METRICS_PATH, Observer, RequestRecord
from maskrcnn_tfx.serving.predictor import Predictor

log = logging.getLogger(__name__)

# TF Serving's mapping of status codes to HTTP (tensorflow_serving/util/net_http ToHTTPStatusCode).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}

_MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>/metadata|:[a-z]+)?$")
# How long a connection refused beyond max_connections is drained before it is closed, so the client reads
# the 503 instead of a reset.
_LINGER_SECONDS = 2.0


def parse_path(method: str, path: str) -> Tuple[str, Optional[int], Optional[str], str]:
    """(model name, version, label, action) of a request path; TF Serving's errors for others."""
    path = path.split("?", 1)[0]
    if path.rstrip("/") == "/v1/models":
        raise invalid_argument("Missing model name in request.")
    match = _MODEL_PATH.match(path)
    if not match:
        raise invalid_argument(f"Malformed request: {method} {path}")
    version = match["version"]
    if version is not None:
        if not version.isdigit():
            raise invalid_argument(f"Malformed request: {method} {path}")
        try:
            version_number = int(version)
            if version_number >= 1 << 63:
                raise ValueError(version)
        except ValueError:
            raise invalid_argument(f"Failed to convert version: {version}") from None
    else:
        version_number = None
    verb = match["verb"] or ""
    action = {("GET", ""): "status", ("GET", "/metadata"): "metadata", ("POST", ":predict"): "predict"}.get(
        (method, verb))
    if action is None:
        if method == "POST" and verb in (":classify", ":regress"):
            raise invalid_argument(f"{verb[1:]} is not supported by this model's signatures; use :predict")
        raise invalid_argument(f"Malformed request: {method} {path}")
    return match["name"], version_number, match["label"], action


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode("utf-8")


class _Refusal(asyncio.Protocol):
    """A connection beyond the limit: answered 503 at once, drained briefly, closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_connections: int):
        self._loop = loop
        self._max_connections = max_connections
        self._transport = None
        self._timer = None

    def connection_made(self, transport):
        self._transport = transport
        payload = _error_body(f"The server has {self._max_connections} connections open (--max-connections); "
                              f"retry later")
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(payload), payload))
        if transport.can_write_eof():
            transport.write_eof()
        # Closing with the request unread would reset the connection before the client reads the 503.
        self._timer = self._loop.call_later(_LINGER_SECONDS, transport.close)

    def data_received(self, data):
        pass

    def eof_received(self):
        return False  # the client is done: close

    def connection_lost(self, exc):
        if self._timer is not None:
            self._timer.cancel()


class _Connection(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: counts it and enforces the request-head deadline."""

    def __init__(self, server: "RestServer", inner: asyncio.Protocol):
        self._server = server
        self.inner = inner
        self.transport = None
        self.in_request = False
        self._head_timer: Optional[asyncio.TimerHandle] = None

    # The protocol interface, forwarded.
    def connection_made(self, transport):
        self.transport = transport
        self._server._opened(self)
        self.inner.connection_made(transport)

    def data_received(self, data):
        if not self.in_request and self._head_timer is None and data:
            self._head_timer = self._server.loop.call_later(self._server.header_timeout, self._head_late)
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self):
        self.inner.pause_writing()

    def resume_writing(self):
        self.inner.resume_writing()

    def connection_lost(self, exc):
        self._cancel_head_timer()
        self._server._closed(self)
        self.inner.connection_lost(exc)

    # The head deadline: from the first byte of a request to its handler.
    def request_started(self):
        self.in_request = True
        self._cancel_head_timer()

    def request_finished(self):
        self.in_request = False

    def _cancel_head_timer(self):
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self):
        self._head_timer = None
        if not self.in_request and self.transport is not None:
            self._server.observer.timeouts.labels("header").inc()
            log.info("closing a connection whose request head did not arrive within %.0f s",
                     self._server.header_timeout)
            self.transport.abort()


class RestServer:
    """TF Serving's REST API for ``predictor`` on ``address``; ``start()`` binds and serves in a thread of
    its own (its event loop), ``stop()`` ends."""

    def __init__(self, address: Tuple[str, int], predictor: Predictor, *, max_request_bytes: int,
                 workers: int = 8, max_connections: int = 256, header_timeout: float = 10.0,
                 body_timeout: float = 60.0, idle_timeout: float = 30.0, send_timeout: float = 60.0,
                 observer: Optional[Observer] = None):
        self.address = address
        self.predictor = predictor
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.observer = observer or Observer(predictor.registry.stores)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rest")
        self.loop = asyncio.new_event_loop()
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self._listener: Optional[asyncio.AbstractServer] = None
        self._connections: Dict[object, _Connection] = {}  # aiohttp's protocol -> our wrapper
        self._stopping = False
        self.server_address: Optional[Tuple[str, int]] = None

    # Lifecycle (called from other threads).
    def start(self) -> "RestServer":
        self._thread = threading.Thread(target=self.loop.run_forever, name="rest-server", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()
        except BaseException:
            self._end_loop()
            raise
        return self

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Stops listening, lets the requests in progress answer (up to ``grace_seconds``), closes the rest."""
        if self._thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(grace_seconds), self.loop).result(grace_seconds + 10)
        except Exception:  # pylint: disable=broad-except  (stopping must not fail: log and go on)
            log.exception("stopping the REST server")
        self._end_loop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _end_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()
        self._thread = None

    async def _start(self) -> None:
        app = web.Application(client_max_size=self.max_request_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # keepalive_timeout: aiohttp closes a connection that has not sent a whole request head this long
        # after it opened or after its previous answer (the idle deadline).
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.idle_timeout,
                                     handle_signals=False)
        await self._runner.setup()
        aiohttp_server = self._runner.server

        def protocol():
            if self._stopping or len(self._connections) >= self.max_connections:
                self.observer.refused_connections.inc()
                return _Refusal(self.loop, self.max_connections)
            inner = aiohttp_server()
            return _Connection(self, inner)

        host, port = self.address
        try:
            self._listener = await self.loop.create_server(protocol, host, port, reuse_address=True,
                                                           backlog=max(128, self.max_connections))
        except OSError as e:
            await self._runner.cleanup()
            raise OSError(f"cannot bind the REST port {host}:{port}: {e.strerror or e}") from None
        self.server_address = self._listener.sockets[0].getsockname()[:2]

    async def _stop(self, grace_seconds: float) -> None:
        # Not aiohttp's own shutdown: it stops reading at once, so a request whose body is still arriving
        # would fail. Here a request in progress is read, answered (with Connection: close) and then closed.
        self._stopping = True
        if self._listener is not None:
            self._listener.close()
        for connection in list(self._connections.values()):
            if not connection.in_request and connection.transport is not None:
                connection.transport.close()
        deadline = self.loop.time() + grace_seconds
        while any(c.in_request for c in self._connections.values()) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._runner is not None:
            await self._runner.cleanup()  # what is left after the grace period is cancelled
        for connection in list(self._connections.values()):
            if connection.transport is not None:
                connection.transport.abort()
        # E.g. aiohttp draining the unread body of a refused request on a connection that closed.
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=5)

    def _opened(self, connection: _Connection) -> None:
        self._connections[connection.inner] = connection
        self.observer.open_connections.set(len(self._connections))

    def _closed(self, connection: _Connection) -> None:
        self._connections.pop(connection.inner, None)
        self.observer.open_connections.set(len(self._connections))

    # Requests (on the event loop).
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = self._connections.get(request.protocol)
        if connection is not None:
            connection.request_started()
        record = RequestRecord("REST", request.remote or "",
                               f"{request.method} {request.raw_path} HTTP/{request.version.major}."
                               f"{request.version.minor}", status="UNKNOWN")
        try:
            try:
                status, payload, content_type, close = await self._answer(request, record)
            except (ConnectionError, asyncio.CancelledError):
                record.status = "CANCELLED"  # the client went away before its answer
                raise
            except Exception:
                record.status = "INTERNAL"
                raise
            response = web.Response(status=status, body=payload, content_type=content_type)
            if close or self._stopping:
                response.force_close()
            record.http_status, record.bytes_sent = status, len(payload)
            try:
                await asyncio.wait_for(self._send(request, response), self.send_timeout)
            except asyncio.TimeoutError:
                self.observer.timeouts.labels("send").inc()
                if request.transport is not None:
                    request.transport.abort()
            return response
        finally:
            self.observer.finish(record)
            if connection is not None:
                connection.request_finished()

    @staticmethod
    async def _send(request: web.BaseRequest, response: web.Response) -> None:
        await response.prepare(request)
        await response.write_eof()

    async def _answer(self, request: web.BaseRequest, record: RequestRecord) -> Tuple[int, bytes, str, bool]:
        """(HTTP status, body, content type, whether to close the connection after it)."""
        if request.method == "GET" and request.path == METRICS_PATH:
            record.api = "metrics"
            return 200, self.observer.exposition(), METRICS_CONTENT_TYPE.split(";")[0], False
        try:  # labels for the metrics and the log, also of a request refused before its body is read
            _, _, _, record.api = parse_path(request.method, request.raw_path)
            record.model_name = request.match_info.get("tail", "").split("/")[2].split(":")[0]
        except (ServingError, IndexError):
            pass
        body = b""
        if request.method == "POST":
            refusal = self._refuse_body(request, record)
            if refusal is not None:
                return refusal
            try:
                if request.content_length:
                    body = await asyncio.wait_for(request.content.readexactly(request.content_length),
                                                  self.body_timeout)
            except asyncio.TimeoutError:
                self.observer.timeouts.labels("body").inc()
                record.status = "DEADLINE_EXCEEDED"
                return 408, _error_body(f"The request body did not arrive within {self.body_timeout:g} s"), \
                    "application/json", True
            except asyncio.IncompleteReadError as e:
                record.status = "INVALID_ARGUMENT"
                return 400, _error_body(f"The request body ended after {len(e.partial)} of "
                                        f"{request.content_length} bytes"), "application/json", True
        status, payload = await self.loop.run_in_executor(
            self._pool, self._answer_sync, request.method, request.raw_path, body, record)
        return status, payload, "application/json", False

    def _refuse_body(self, request: web.BaseRequest, record: RequestRecord):
        if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            record.status = "INVALID_ARGUMENT"
            return 411, _error_body("Chunked request bodies are not supported: send a Content-Length"), \
                "application/json", True
        length = request.content_length or 0
        if length > self.max_request_bytes:
            record.status = "RESOURCE_EXHAUSTED"
            # aiohttp reads and drops the unread body for a while, so the client sees the 413.
            return 413, _error_body(
                f"Request body of {length} bytes exceeds the server's limit of {self.max_request_bytes} bytes "
                f"(--max-request-bytes); send fewer or smaller images per request"), "application/json", True
        return None

    def _answer_sync(self, method: str, path: str, body: bytes, record: RequestRecord) -> Tuple[int, bytes]:
        """The answer of a parsed request (on a worker thread: JSON and the model call block)."""
        try:
            name, version, label, action = parse_path(method, path)
            record.api, record.model_name = action, name
            if action == "status":
                from google.protobuf import json_format  # pylint: disable=import-outside-toplevel

                response = self.predictor.status(name, version, label)
                payload = json_format.MessageToJson(response, preserving_proto_field_name=True,
                                                    including_default_value_fields=True).encode("utf-8")
            elif action == "metadata":
                loaded = self.predictor.resolve(name, version, label)
                record.version = str(loaded.version)
                payload = json.dumps(self.predictor.rest_metadata(loaded)).encode("utf-8")
            else:
                document = rest_codec.parse_body(body)
                signature_name = rest_codec.signature_name_of(document)
                loaded = self.predictor.resolve(name, version, label)
                record.version = str(loaded.version)
                inputs, form = rest_codec.decode_inputs(document, loaded.inputs(signature_name))
                outputs = self.predictor.predict(loaded, signature_name, inputs)
                payload = rest_codec.encode_outputs(outputs, form)
            record.status = "OK"
            return 200, payload
        except ServingError as e:
            record.status = e.code
            return HTTP_STATUS.get(e.code, 500), _error_body(e.message)
        except Exception as e:  # pylint: disable=broad-except  (answer, log, and keep serving)
            log.exception("%s %s failed", method, path)
            record.status = "INTERNAL"
            return 500, _error_body(f"{type(e).__name__}: {e}")
