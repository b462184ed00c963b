"""The local server's gRPC front end: TF Serving's ``PredictionService`` (Predict, GetModelMetadata) and
``ModelService`` (GetModelStatus), from tensorflow-serving-api's generated services.

Requests above ``max_request_bytes`` are refused by gRPC itself (RESOURCE_EXHAUSTED); ``workers`` threads
answer at most that many calls at once (gRPC's own event loop holds the connections, so an idle or slow one
costs no thread). Every answered call is counted and logged by the observer (:mod:`maskrcnn_tfx.serving.observability`).
Classify, Regress and MultiInference answer UNIMPLEMENTED (the model has no such signatures).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from typing import Optional, Tuple

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from maskrcnn_tfx import signature as sig
from maskrcnn_tfx.serving.model_store import ServingError
from maskrcnn_tfx.serving.observability import Observer, RequestRecord
from maskrcnn_tfx.serving.predictor import Predictor

log = logging.getLogger(__name__)


def _model_spec(spec) -> Tuple[str, Optional[int], Optional[str]]:
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label if spec.WhichOneof("version_choice") == "version_label" else None
    return spec.name, version, label


def _abort(context: grpc.ServicerContext, error: ServingError, record: RequestRecord):
    record.status = error.code if hasattr(grpc.StatusCode, error.code) else "UNKNOWN"
    context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN), error.message)


@contextlib.contextmanager
def _observed(observer: Observer, context: grpc.ServicerContext, method: str, api: str, model_name: str):
    record = RequestRecord("GRPC", context.peer() or "", method, api=api, model_name=model_name)
    try:
        yield record
    except BaseException:
        if record.status == "OK":  # not an abort of ours: gRPC answers UNKNOWN
            record.status = "UNKNOWN"
        raise
    finally:
        observer.finish(record)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):

    def __init__(self, predictor: Predictor, observer: Observer):
        self._predictor = predictor
        self._observer = observer

    def Predict(self, request, context):  # pylint: disable=invalid-name
        with _observed(self._observer, context, "/tensorflow.serving.PredictionService/Predict", "predict",
                       request.model_spec.name) as record:
            return self._predict(request, context, record)

    def _predict(self, request, context, record):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        try:
            loaded = self._predictor.resolve(*_model_spec(request.model_spec))
            record.version = str(loaded.version)
            signature_name = request.model_spec.signature_name
            inputs = {}
            for name, proto in request.inputs.items():
                try:
                    inputs[name] = tf.make_ndarray(proto)
                except (TypeError, ValueError) as e:
                    raise ServingError("INVALID_ARGUMENT", f"input '{name}' is not a valid TensorProto ({e})") \
                        from None
            outputs = self._predictor.predict(loaded, signature_name, inputs, request.output_filter)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = loaded.model_name
            response.model_spec.version.value = loaded.version
            response.model_spec.signature_name = signature_name or sig.SERVING_SIGNATURE
            for name, value in outputs.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response
        except ServingError as e:
            _abort(context, e, record)
        return None  # unreachable: abort raises

    def GetModelMetadata(self, request, context):  # pylint: disable=invalid-name
        with _observed(self._observer, context, "/tensorflow.serving.PredictionService/GetModelMetadata",
                       "metadata", request.model_spec.name) as record:
            try:
                loaded = self._predictor.resolve(*_model_spec(request.model_spec))
                record.version = str(loaded.version)
                return self._predictor.metadata(loaded, request.metadata_field)
            except ServingError as e:
                _abort(context, e, record)
        return None


class ModelService(model_service_pb2_grpc.ModelServiceServicer):

    def __init__(self, predictor: Predictor, observer: Observer):
        self._predictor = predictor
        self._observer = observer

    def GetModelStatus(self, request, context):  # pylint: disable=invalid-name
        with _observed(self._observer, context, "/tensorflow.serving.ModelService/GetModelStatus", "status",
                       request.model_spec.name) as record:
            try:
                return self._predictor.status(*_model_spec(request.model_spec))
            except ServingError as e:
                _abort(context, e, record)
        return None


def make_grpc_server(address: str, predictor: Predictor, *, max_request_bytes: int, workers: int = 8,
                     observer: Optional[Observer] = None) -> Tuple[grpc.Server, int]:
    """A gRPC server bound to ``address`` (host:port; port 0 picks a free one), not started, and its port."""
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", max_request_bytes),
                 ("grpc.max_send_message_length", -1),
                 ("grpc.so_reuseport", 0)])
    observer = observer or Observer(predictor.registry.stores)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(predictor, observer),
                                                                        server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(predictor, observer), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise OSError(f"cannot bind the gRPC port {address}: {e}") from None
    if port == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    return server, port
