"""The local server's REST front end: TF Serving's REST API on the standard library's HTTP server.

Routes (TF Serving's): ``GET /v1/models/NAME[/versions/N|/labels/L]`` (model status),
``GET .../metadata`` and ``POST ...:predict``. Bodies above ``max_request_bytes`` are refused with 413
before they are parsed; a fixed pool of worker threads bounds how many connections are served at once (the
others wait in the listen queue). Every error is ``{"error": "..."}`` with TF Serving's HTTP status for its
code (400 for a bad request, 404 for an unknown model or version).
"""
from __future__ import annotations

import concurrent.futures
import http.server
import json
import logging
import re
import socket
import threading
from typing import Optional, Tuple

from serving import rest_codec
from serving.model_store import ServingError, invalid_argument
from serving.predictor import Predictor

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
# Discarding a refused body lets the client read the 413 instead of a reset; beyond this, just hang up.
_MAX_DISCARD_BYTES = 256 << 20


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


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving
    server_version = "maskrcnn-tfx-serve"
    # An idle keep-alive connection gives its worker back after this many seconds.
    timeout = 30

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self):  # pylint: disable=invalid-name
        self._handle("GET")

    def do_POST(self):  # pylint: disable=invalid-name
        self._handle("POST")

    def _handle(self, method: str) -> None:
        server: RestServer = self.server  # type: ignore[assignment]
        try:
            body = self._read_body(server.max_request_bytes) if method == "POST" else b""
            if body is None:
                return
            name, version, label, action = parse_path(method, self.path)
            if action == "status":
                from google.protobuf import json_format  # pylint: disable=import-outside-toplevel

                response = server.predictor.status(name, version, label)
                payload = json_format.MessageToJson(response, preserving_proto_field_name=True,
                                                    including_default_value_fields=True).encode("utf-8")
            elif action == "metadata":
                loaded = server.predictor.resolve(name, version, label)
                payload = json.dumps(server.predictor.rest_metadata(loaded)).encode("utf-8")
            else:
                document = rest_codec.parse_body(body)
                signature_name = rest_codec.signature_name_of(document)
                loaded = server.predictor.resolve(name, version, label)
                inputs, form = rest_codec.decode_inputs(document, loaded.inputs(signature_name))
                outputs = server.predictor.predict(loaded, signature_name, inputs)
                payload = rest_codec.encode_outputs(outputs, form)
            self._send(200, payload)
        except ServingError as e:
            self._send_error(HTTP_STATUS.get(e.code, 500), e.message)
        except Exception as e:  # pylint: disable=broad-except  (answer, log, and keep serving)
            log.exception("%s %s failed", method, self.path)
            self._send_error(500, f"{type(e).__name__}: {e}")

    def _read_body(self, limit: int) -> Optional[bytes]:
        """The request body, or None when it was refused (the answer is sent)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send_error(411, "Chunked request bodies are not supported: send a Content-Length")
            return None
        length_header = self.headers.get("Content-Length")
        try:
            length = int(length_header) if length_header is not None else 0
            if length < 0:
                raise ValueError(length_header)
        except ValueError:
            self.close_connection = True
            self._send_error(400, f"Invalid Content-Length: {length_header!r}")
            return None
        if length > limit:
            self.close_connection = True
            if length <= _MAX_DISCARD_BYTES:
                self._discard(length)
            self._send_error(413, f"Request body of {length} bytes exceeds the server's limit of {limit} bytes "
                                  f"(--max-request-bytes); send fewer or smaller images per request")
            return None
        return self.rfile.read(length)

    def _discard(self, length: int) -> None:
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)
        except (OSError, socket.timeout):
            pass

    def _send_error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode("utf-8"))

    def _send(self, status: int, payload: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class RestServer(http.server.HTTPServer):
    """An HTTP server whose connections are served by a fixed pool of ``workers`` threads."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], predictor: Predictor, *, max_request_bytes: int,
                 workers: int = 8):
        self.predictor = predictor
        self.max_request_bytes = max_request_bytes
        self.request_queue_size = max(64, workers * 4)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rest")
        self._connections = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        self._pool.submit(self._serve_connection, request, client_address)

    def _serve_connection(self, request, client_address):
        with self._connections_lock:
            self._connections.add(request)
        try:
            self.finish_request(request, client_address)
        except Exception:  # pylint: disable=broad-except
            self.handle_error(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)
            self.shutdown_request(request)

    def server_close(self):
        """Stops listening, lets the requests in progress answer, then closes the idle connections."""
        super().server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                # Reading ends (an idle keep-alive connection sees EOF); a response being written still goes out.
                connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        self._pool.shutdown(wait=True, cancel_futures=True)
