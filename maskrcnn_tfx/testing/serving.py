"""What the serving tests and benchmarks share: hostile requests of every
kind the server must refuse (each with the statuses it may answer), ``maskrcnn-tfx serve`` as a process, and
its resident memory.

The pixel bombs are real images: PNGs of 20000x20000 and 40000x40000 grey pixels (zlib shrinks their rows
of zeros to about 0.4 MB and 1.6 MB), and JPEGs whose frame header declares those sizes (a small JPEG's
SOF0 with the size rewritten: a decoder that trusts the header allocates the whole frame before it finds the
data missing).
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import io
import json
import socket
import struct
import subprocess
import sys
import time
import zlib
from typing import List, Optional, Sequence, Tuple

BOMB_SIDES = (20000, 40000)


def png_bomb(side: int) -> bytes:
    """A valid greyscale PNG of side x side black pixels."""
    return _png_bomb(side)


@functools.lru_cache(maxsize=None)
def _png_bomb(side: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    rows_per_piece = max(1, (8 << 20) // (side + 1))
    piece = bytes((side + 1) * rows_per_piece)  # each row: filter type 0, then the pixels
    parts, rows = [], 0
    while rows < side:
        count = min(rows_per_piece, side - rows)
        parts.append(compressor.compress(piece if count == rows_per_piece else bytes((side + 1) * count)))
        rows += count
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


@functools.lru_cache(maxsize=None)
def jpeg_bomb(side: int) -> bytes:
    """A small JPEG whose frame header (SOF0) declares side x side pixels."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 90, 90)).save(buf, format="JPEG", quality=90)
    data = bytearray(buf.getvalue())
    at = data.find(b"\xff\xc0")
    assert at > 0, "no baseline frame header"
    struct.pack_into(">HH", data, at + 5, side, side)  # after the marker, length and precision: height, width
    return bytes(data)


@dataclasses.dataclass(frozen=True)
class Hostile:
    """One hostile request: over REST (``path`` and raw ``body``, or ``declared_length`` without sending it)
    and, when it has a gRPC form, as the images of a Predict call."""

    name: str
    rest_statuses: Tuple[int, ...]
    path: str = ""
    body: bytes = b""
    declared_length: Optional[int] = None  # a Content-Length above the limit; only the head is sent
    grpc_images: Optional[Sequence[bytes]] = None
    grpc_model: Optional[str] = None
    grpc_version: Optional[int] = None
    grpc_signature: Optional[str] = None
    grpc_statuses: Tuple[str, ...] = ()


def _b64_body(images: Sequence[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}).encode()


def hostile_requests(model: str, valid_image: bytes, max_request_bytes: int) -> List[Hostile]:
    """Every kind of hostile request, for a server serving ``model`` that refuses bodies above
    ``max_request_bytes``."""
    predict = f"/v1/models/{model}:predict"
    cases = []
    for side in BOMB_SIDES:
        for kind, image in (("png", png_bomb(side)), ("jpeg", jpeg_bomb(side))):
            cases.append(Hostile(f"{kind} bomb {side}x{side}", (400,), predict, _b64_body([image]),
                                 grpc_images=[image], grpc_statuses=("INVALID_ARGUMENT",)))
    truncated = valid_image[:len(valid_image) // 2]
    cases += [
        Hostile("truncated image", (400,), predict, _b64_body([truncated]), grpc_images=[truncated],
                grpc_statuses=("INVALID_ARGUMENT",)),
        Hostile("not an image", (400,), predict, _b64_body([b"GIF89a these are not pixels"]),
                grpc_images=[b"GIF89a these are not pixels"], grpc_statuses=("INVALID_ARGUMENT",)),
        Hostile("empty image", (400,), predict, _b64_body([b""]), grpc_images=[b""],
                grpc_statuses=("INVALID_ARGUMENT",)),
        Hostile("bad base64", (400,), predict, b'{"instances": [{"b64": "%%%not base64"}]}'),
        Hostile("deep JSON", (400,), predict, b'{"instances": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
        Hostile("deep JSON unterminated", (400,), predict, b"[" * 200_000),
        Hostile("not JSON", (400,), predict, b"\x00\x01 binary"),
        Hostile("oversized body", (413,), predict, declared_length=max_request_bytes + 1,
                grpc_images=[bytes(max_request_bytes + 1)], grpc_statuses=("RESOURCE_EXHAUSTED",)),
        Hostile("unknown model", (404,), "/v1/models/no-such-model:predict", _b64_body([valid_image]),
                grpc_images=[valid_image], grpc_model="no-such-model", grpc_statuses=("NOT_FOUND",)),
        Hostile("unknown version", (404,), f"/v1/models/{model}/versions/999:predict", _b64_body([valid_image]),
                grpc_images=[valid_image], grpc_version=999, grpc_statuses=("NOT_FOUND",)),
        Hostile("unknown signature", (400,), predict,
                json.dumps({"signature_name": "nope", "instances": [{"b64": base64.b64encode(
                    valid_image).decode()}]}).encode(),
                grpc_images=[valid_image], grpc_signature="nope", grpc_statuses=("INVALID_ARGUMENT",)),
        Hostile("unknown label", (400,), f"/v1/models/{model}/labels/nope:predict", _b64_body([valid_image])),
    ]
    return cases


def send_rest(port: int, case: Hostile, timeout: float) -> Tuple[int, dict]:
    """(HTTP status, JSON answer) of a hostile request on a connection of its own."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        length = case.declared_length if case.declared_length is not None else len(case.body)
        head = (f"POST {case.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()
        sock.sendall(head + (case.body if case.declared_length is None else b"{" * 1024))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"{case.name}: the server closed the connection without an answer")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith("content-length:")), 0)
        while len(body) < length:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"{case.name}: the server closed the connection in the middle of its answer")
            body += chunk
    return int(lines[0].split()[1]), json.loads(body) if body else {}


# The server process.
def serve_command(base_dir: str, model: str, rest_port: int, grpc_port: int, *extra: str) -> List[str]:
    return [sys.executable, "-m", "maskrcnn_tfx.cli", "serve", "--model-base-path", base_dir, "--model-name", model,
            "--rest-port", str(rest_port), "--grpc-port", str(grpc_port), "--poll-seconds", "0.3", *extra]


def start_server(command: List[str], log_path: str) -> subprocess.Popen:
    log = open(log_path, "ab")  # pylint: disable=consider-using-with  (the process owns it)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def wait_until_serving(rest_port: int, process: subprocess.Popen, model: str, timeout: float = 600) -> None:
    from maskrcnn_tfx.serving import client as client_lib  # pylint: disable=import-outside-toplevel

    client = client_lib.connect(f"http://127.0.0.1:{rest_port}", model_name=model, timeout=30,
                                retry=client_lib.RetryPolicy(max_attempts=1))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            client.metadata()
            return
        except client_lib.PredictionError:
            time.sleep(0.3)
        finally:
            client.close()
    raise RuntimeError(f"the server did not answer within {timeout} s")


def memory(pid: int) -> dict:
    """The process's resident memory now (VmRSS) and at its peak (VmHWM), in bytes."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) * 1024
    return values


def reset_peak_memory(pid: int) -> bool:
    """Resets the process's peak resident memory to its current one (Linux's clear_refs); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False
