"""Clients of the served Mask R-CNN over TF Serving's REST or gRPC API: TF Serving itself or the local server.

``connect(endpoint, grpc=False, ...)`` gives a client; ``client.detect(images)`` sends encoded JPEG/PNG
bytes and returns :class:`maskrcnn_tfx.serving.detections.ImageDetections` per image (full-image masks, boxes in pixels
and normalized, class names from the label map). The model name, a version number or a version label, and
the signature are selectable.

The label map is fetched once: from the ``--label-map`` file given, else from the model's metadata (the
local server includes the label map exported with the model; TF Serving's metadata has signatures only, so
against TF Serving pass the label map file, the model's ``assets/label_map.json``), else classes have ids
only.

Every call has a timeout. Calls that failed because the server could not be reached or was not ready (gRPC
UNAVAILABLE; REST connection refused or reset, HTTP 503) are retried with exponential backoff; a request
the server answered as bad (4xx, INVALID_ARGUMENT, NOT_FOUND...) is never retried.

The REST client needs only the standard library and numpy; the gRPC one imports tensorflow-serving-api
(whose protos load TensorFlow).
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import random
import socket
import time
import urllib.parse
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

import numpy as np

from maskrcnn_tfx import signature as sig
from maskrcnn_tfx.label_map import LabelMap, LabelMapError
from maskrcnn_tfx.serving import detections as detections_lib
from maskrcnn_tfx.serving import rest_codec

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "maskrcnn"
DEFAULT_TIMEOUT_SECONDS = 60.0
LABEL_MAP_FIELD = "label_map"  # the local server's extra metadata field (maskrcnn_tfx.serving.predictor)
_GRPC_MAX_MESSAGE_BYTES = 1 << 30

T = TypeVar("T")


class PredictionError(Exception):
    """A request the server refused or could not answer.

    ``status`` is the HTTP status (REST) or the gRPC status code name; ``retryable`` whether it was a
    transient failure (already retried as often as the retry policy allows)."""

    def __init__(self, message: str, *, status, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt k waits a random time up to
    ``min(max_backoff, initial_backoff * multiplier**k)`` seconds."""

    max_attempts: int = 5
    initial_backoff: float = 0.25
    max_backoff: float = 8.0
    multiplier: float = 2.0

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 (got {self.max_attempts})")

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * self.multiplier ** attempt))

    def call(self, function: Callable[[], T], what: str) -> T:
        for attempt in range(self.max_attempts):
            try:
                return function()
            except PredictionError as e:
                if not e.retryable or attempt == self.max_attempts - 1:
                    raise
                delay = self.backoff(attempt)
                log.warning("%s: %s; retrying in %.2f s (attempt %d of %d)", what, e, delay, attempt + 2,
                            self.max_attempts)
                time.sleep(delay)
        raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class ModelTarget:
    """Which model, version (a number or a label, not both) and signature a request is for."""

    name: str = DEFAULT_MODEL_NAME
    version: Optional[int] = None
    version_label: Optional[str] = None
    signature_name: str = sig.SERVING_SIGNATURE

    def __post_init__(self):
        if self.version is not None and self.version_label:
            raise ValueError("give a version or a version label, not both")
        if self.version is not None and self.version < 0:
            raise ValueError(f"version must be >= 0 (got {self.version})")


class _Client:
    """What both transports share: the label map, detection decoding, retries."""

    def __init__(self, target: ModelTarget, timeout: float, retry: RetryPolicy,
                 label_map: Optional[LabelMap]):
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self._label_map = label_map
        self._label_map_fetched = label_map is not None

    # Implemented by each transport.
    def predict(self, images: Sequence[bytes]) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _fetch_label_map(self) -> Optional[LabelMap]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def label_map(self) -> Optional[LabelMap]:
        """The label map given, else the one in the model's metadata (fetched once), else None."""
        if not self._label_map_fetched:
            self._label_map = self._fetch_label_map()
            self._label_map_fetched = True
            if self._label_map is None:
                log.warning("the server's metadata has no label map: classes get ids only (pass the model's "
                            "assets/label_map.json as the label map for names)")
        return self._label_map

    def detect(self, images: Sequence[bytes], *, score_threshold: float = detections_lib.DEFAULT_SCORE_THRESHOLD,
               batch_size: int = 4) -> List[detections_lib.ImageDetections]:
        """Detections for each encoded image, sent ``batch_size`` images per request."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        label_map = self.label_map
        results = []
        for start in range(0, len(images), batch_size):
            outputs = self.predict(images[start:start + batch_size])
            results += detections_lib.from_outputs(outputs, label_map=label_map, score_threshold=score_threshold)
        return results


def _label_map_from_json(body, source: str) -> Optional[LabelMap]:
    try:
        return LabelMap.from_json(json.dumps(body) if not isinstance(body, str) else body, source=source)
    except LabelMapError as e:
        log.warning("ignoring the label map in %s: %s", source, e)
        return None


class RestClient(_Client):
    """TF Serving's REST API (``:predict`` with base64 image bytes), over one keep-alive connection."""

    def __init__(self, endpoint: str, target: ModelTarget = ModelTarget(), *,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS, retry: RetryPolicy = RetryPolicy(),
                 label_map: Optional[LabelMap] = None, request_format: str = "row"):
        super().__init__(target, timeout, retry, label_map)
        parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"endpoint {endpoint!r} is not http(s)://HOST:PORT")
        self._scheme, self._host = parsed.scheme, parsed.hostname
        self._port = parsed.port or (443 if parsed.scheme == "https" else 8501)
        if request_format not in ("row", "column"):
            raise ValueError(f"request_format {request_format!r} is not 'row' or 'column'")
        self.request_format = request_format
        self._connection: Optional[http.client.HTTPConnection] = None

    @property
    def endpoint(self) -> str:
        return f"{self._scheme}://{self._host}:{self._port}"

    def model_path(self, suffix: str = "") -> str:
        path = f"/v1/models/{urllib.parse.quote(self.target.name, safe='')}"
        if self.target.version is not None:
            path += f"/versions/{self.target.version}"
        elif self.target.version_label:
            path += f"/labels/{urllib.parse.quote(self.target.version_label, safe='')}"
        return path + suffix

    def _request_once(self, method: str, path: str, body: Optional[bytes]) -> dict:
        if self._connection is None:
            connection_class = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._connection = connection_class(self._host, self._port, timeout=self.timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self._connection.request(method, path, body=body, headers=headers)
            response = self._connection.getresponse()
            payload = response.read()
        except (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
                http.client.RemoteDisconnected, http.client.BadStatusLine) as e:
            self.close()
            raise PredictionError(f"{method} {self.endpoint}{path}: cannot reach the server ({e!r})",
                                  status="UNAVAILABLE", retryable=True) from None
        except socket.timeout:
            self.close()
            raise PredictionError(f"{method} {self.endpoint}{path}: no answer within {self.timeout} s",
                                  status="DEADLINE_EXCEEDED") from None
        except OSError as e:
            self.close()
            raise PredictionError(f"{method} {self.endpoint}{path}: {e}", status="UNAVAILABLE",
                                  retryable=True) from None
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        try:
            document = json.loads(payload) if payload else {}
        except json.JSONDecodeError:
            document = {"error": payload[:500].decode("utf-8", "replace")}
        if response.status != 200:
            message = document.get("error", "") if isinstance(document, dict) else str(document)
            raise PredictionError(f"{method} {self.endpoint}{path}: HTTP {response.status}: {message}",
                                  status=response.status, retryable=response.status == 503)
        return document

    def request(self, method: str, path: str, body: Optional[bytes] = None) -> dict:
        return self.retry.call(lambda: self._request_once(method, path, body), f"{method} {path}")

    def predict(self, images: Sequence[bytes]) -> Dict[str, np.ndarray]:
        body = rest_codec.encode_request(images, input_name=sig.IMAGES_INPUT,
                                         signature_name=self.target.signature_name, form=self.request_format)
        document = self.request("POST", self.model_path(":predict"), body)
        outputs = rest_codec.decode_predictions(document)
        return {name: value.astype(sig.OUTPUT_DTYPES[name]) if name in sig.OUTPUT_DTYPES else value
                for name, value in outputs.items()}

    def status(self) -> dict:
        return self.request("GET", self.model_path())

    def metadata(self) -> dict:
        return self.request("GET", self.model_path("/metadata"))

    def _fetch_label_map(self) -> Optional[LabelMap]:
        body = self.metadata().get("metadata", {}).get(LABEL_MAP_FIELD)
        return _label_map_from_json(body, f"{self.endpoint} metadata") if body else None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class GrpcClient(_Client):
    """TF Serving's gRPC ``PredictionService`` (tensorflow-serving-api)."""

    def __init__(self, endpoint: str, target: ModelTarget = ModelTarget(), *,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS, retry: RetryPolicy = RetryPolicy(),
                 label_map: Optional[LabelMap] = None):
        import grpc  # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import model_service_pb2_grpc  # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=import-outside-toplevel

        super().__init__(target, timeout, retry, label_map)
        self.endpoint = endpoint.split("://", 1)[-1]
        self._grpc = grpc
        self._channel = grpc.insecure_channel(self.endpoint, options=[
            ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE_BYTES),
            # Retries are ours (with backoff and logging), not the channel's.
            ("grpc.enable_retries", 0)])
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _fill_spec(self, spec, signature: bool = True) -> None:
        spec.name = self.target.name
        if self.target.version is not None:
            spec.version.value = self.target.version
        elif self.target.version_label:
            spec.version_label = self.target.version_label
        if signature and self.target.signature_name:
            spec.signature_name = self.target.signature_name

    def _call(self, method, request, what: str):
        grpc = self._grpc

        def once():
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                code = e.code()
                raise PredictionError(f"{what} at {self.endpoint}: {code.name}: {e.details()}", status=code.name,
                                      retryable=code == grpc.StatusCode.UNAVAILABLE) from None

        return self.retry.call(once, what)

    def predict(self, images: Sequence[bytes]) -> Dict[str, np.ndarray]:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel

        request = predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec)
        request.inputs[sig.IMAGES_INPUT].CopyFrom(
            tf.make_tensor_proto(list(images), dtype=tf.string, shape=[len(images)]))
        response = self._call(self._predictions.Predict, request, "Predict")
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def metadata(self, fields: Sequence[str] = ("signature_def",)):
        from tensorflow_serving.apis import get_model_metadata_pb2  # pylint: disable=import-outside-toplevel

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
        self._fill_spec(request.model_spec, signature=False)
        return self._call(self._predictions.GetModelMetadata, request, "GetModelMetadata")

    def status(self):
        from tensorflow_serving.apis import get_model_status_pb2  # pylint: disable=import-outside-toplevel

        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec, signature=False)
        return self._call(self._models.GetModelStatus, request, "GetModelStatus")

    def _fetch_label_map(self) -> Optional[LabelMap]:
        from google.protobuf import wrappers_pb2  # pylint: disable=import-outside-toplevel

        try:
            response = self.metadata([LABEL_MAP_FIELD])
        except PredictionError as e:
            if e.status == "INVALID_ARGUMENT":  # TF Serving: "Metadata field label_map is not supported"
                return None
            raise
        value = wrappers_pb2.StringValue()
        if LABEL_MAP_FIELD not in response.metadata or not response.metadata[LABEL_MAP_FIELD].Unpack(value):
            return None
        return _label_map_from_json(value.value, f"{self.endpoint} metadata")

    def close(self) -> None:
        self._channel.close()


def connect(endpoint: str, *, use_grpc: bool = False, model_name: str = DEFAULT_MODEL_NAME,
            version: Optional[int] = None, version_label: Optional[str] = None,
            signature_name: str = sig.SERVING_SIGNATURE, timeout: float = DEFAULT_TIMEOUT_SECONDS,
            retry: RetryPolicy = RetryPolicy(), label_map: Optional[LabelMap] = None) -> _Client:
    """A REST client (``http://HOST:8501``) or, with ``use_grpc``, a gRPC one (``HOST:8500``)."""
    target = ModelTarget(model_name, version, version_label, signature_name)
    if use_grpc:
        return GrpcClient(endpoint, target, timeout=timeout, retry=retry, label_map=label_map)
    return RestClient(endpoint, target, timeout=timeout, retry=retry, label_map=label_map)
