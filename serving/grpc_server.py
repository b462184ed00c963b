"""The local server's gRPC front end: TF Serving's ``PredictionService`` (Predict, GetModelMetadata) and
``ModelService`` (GetModelStatus), from tensorflow-serving-api's generated services.

Requests above ``max_request_bytes`` are refused by gRPC itself (RESOURCE_EXHAUSTED); ``workers`` threads
answer at most that many calls at once. Classify, Regress and MultiInference answer UNIMPLEMENTED (the
model has no such signatures).
"""
from __future__ import annotations

import concurrent.futures
import logging
from typing import Optional, Tuple

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from maskrcnn_tfx import signature as sig
from serving.model_store import ServingError
from serving.predictor import Predictor

log = logging.getLogger(__name__)


def _model_spec(spec) -> Tuple[str, Optional[int], Optional[str]]:
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label if spec.WhichOneof("version_choice") == "version_label" else None
    return spec.name, version, label


def _abort(context: grpc.ServicerContext, error: ServingError):
    context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN), error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):

    def __init__(self, predictor: Predictor):
        self._predictor = predictor

    def Predict(self, request, context):  # pylint: disable=invalid-name
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        try:
            loaded = self._predictor.resolve(*_model_spec(request.model_spec))
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
            _abort(context, e)
        return None  # unreachable: abort raises

    def GetModelMetadata(self, request, context):  # pylint: disable=invalid-name
        try:
            loaded = self._predictor.resolve(*_model_spec(request.model_spec))
            return self._predictor.metadata(loaded, request.metadata_field)
        except ServingError as e:
            _abort(context, e)
        return None


class ModelService(model_service_pb2_grpc.ModelServiceServicer):

    def __init__(self, predictor: Predictor):
        self._predictor = predictor

    def GetModelStatus(self, request, context):  # pylint: disable=invalid-name
        try:
            return self._predictor.status(*_model_spec(request.model_spec))
        except ServingError as e:
            _abort(context, e)
        return None


def make_grpc_server(address: str, predictor: Predictor, *, max_request_bytes: int,
                     workers: int = 8) -> Tuple[grpc.Server, int]:
    """A gRPC server bound to ``address`` (host:port; port 0 picks a free one), not started, and its port."""
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", max_request_bytes),
                 ("grpc.max_send_message_length", -1),
                 ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(predictor), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(predictor), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise OSError(f"cannot bind the gRPC port {address}: {e}") from None
    if port == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    return server, port
