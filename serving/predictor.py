"""What the local server's REST and gRPC front ends share: Predict, GetModelMetadata and GetModelStatus answers
built from the model registry, as TF Serving's protos (REST writes their JSON, as TF Serving does)."""
from __future__ import annotations

import json
import re
import threading
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

from maskrcnn_tfx import signature as sig
from maskrcnn_tfx.serving.model_store import LoadedVersion, ModelRegistry, ServingError, invalid_argument

SIGNATURE_DEF_FIELD = "signature_def"
# Not a TF Serving field: the local server also answers the label map exported with the model (its
# assets/label_map.json), so a client needs no --label-map file. TF Serving refuses it as unsupported.
LABEL_MAP_FIELD = "label_map"


class Predictor:
    """Runs requests against the registry's models, at most ``max_concurrent`` model calls at a time."""

    def __init__(self, registry: ModelRegistry, max_concurrent: int = 4):
        self.registry = registry
        self._slots = threading.BoundedSemaphore(max_concurrent)

    def resolve(self, name: str, version: Optional[int], label: Optional[str]) -> LoadedVersion:
        if not name:
            raise invalid_argument("Missing model name in request.")
        return self.registry.store(name, version).resolve(version, label)

    def predict(self, loaded: LoadedVersion, signature_name: str, inputs: Mapping[str, np.ndarray],
                output_filter: Iterable[str] = ()) -> Dict[str, np.ndarray]:
        """The signature's outputs for ``inputs`` (checked against the signature first)."""
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        signature_name = signature_name or sig.SERVING_SIGNATURE
        expected = loaded.inputs(signature_name)
        function = loaded.signature(signature_name)
        missing = sorted(set(expected) - set(inputs))
        if missing:
            raise invalid_argument(f"Missing named input: {missing[0]} (the signature '{signature_name}' takes "
                                   f"{sorted(expected)})")
        unknown = sorted(set(inputs) - set(expected))
        if unknown:
            raise invalid_argument(f"input '{unknown[0]}' is not an input of the signature '{signature_name}' "
                                   f"(it takes {sorted(expected)})")
        outputs_wanted = list(output_filter)
        known_outputs = loaded.outputs(signature_name)
        for name in outputs_wanted:
            if name not in known_outputs:
                raise invalid_argument(f"output tensor alias not found in signature: {name} Outputs expected "
                                       f"to be in the set {{{','.join(sorted(known_outputs))}}}.")
        tensors = {}
        for name, value in inputs.items():
            dtype = tf.dtypes.as_dtype(expected[name].dtype.lower().replace("dt_", ""))
            try:
                tensors[name] = tf.constant(value, dtype=dtype)
            except (TypeError, ValueError) as e:
                raise invalid_argument(f"input '{name}' is not of expected type: {expected[name].dtype} ({e})") \
                    from None
        with self._slots:
            try:
                results = function(**tensors)
            except tf.errors.OpError as e:
                from tensorflow.core.protobuf import error_codes_pb2  # pylint: disable=import-outside-toplevel

                raise ServingError(error_codes_pb2.Code.Name(e.error_code), _op_error_message(e.message)) from None
            except (TypeError, ValueError) as e:
                raise invalid_argument(str(e)) from None
        names = outputs_wanted or sorted(results)
        return {name: results[name].numpy() for name in names}

    def metadata(self, loaded: LoadedVersion, fields: Iterable[str]):
        """A GetModelMetadataResponse with the asked fields (``signature_def``; ``label_map`` also here)."""
        from google.protobuf import wrappers_pb2  # pylint: disable=import-outside-toplevel
        from tensorflow_serving.apis import get_model_metadata_pb2  # pylint: disable=import-outside-toplevel

        fields = list(fields)
        if not fields:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self._name_of(loaded)
        response.model_spec.version.value = loaded.version
        for field in fields:
            if field == SIGNATURE_DEF_FIELD:
                response.metadata[field].Pack(loaded.signature_defs)
            elif field == LABEL_MAP_FIELD and loaded.label_map is not None:
                response.metadata[field].Pack(wrappers_pb2.StringValue(value=loaded.label_map.to_json()))
            else:
                raise invalid_argument(f"Metadata field {field} is not supported")
        return response

    def rest_metadata(self, loaded: LoadedVersion) -> dict:
        """The REST ``/metadata`` answer: TF Serving's JSON of the signature defs, plus the label map."""
        from google.protobuf import json_format  # pylint: disable=import-outside-toplevel

        body = {
            "model_spec": {"name": self._name_of(loaded), "signature_name": "", "version": str(loaded.version)},
            "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(
                loaded.signature_defs, preserving_proto_field_name=True, including_default_value_fields=True)},
        }
        if loaded.label_map is not None:
            body["metadata"][LABEL_MAP_FIELD] = json.loads(loaded.label_map.to_json())
        return body

    def status(self, name: str, version: Optional[int], label: Optional[str]):
        """A GetModelStatusResponse."""
        from tensorflow_serving.apis import get_model_status_pb2  # pylint: disable=import-outside-toplevel

        if not name:
            raise invalid_argument("Missing model name in request.")
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.registry.status_store(name).status(version, label):
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
            entry.status.error_code = _error_code_value(status.error_code)
            entry.status.error_message = status.error_message
        return response

    @staticmethod
    def _name_of(loaded: LoadedVersion) -> str:
        return loaded.model_name


def _error_code_value(name: str) -> int:
    from tensorflow.core.protobuf import error_codes_pb2  # pylint: disable=import-outside-toplevel

    return error_codes_pb2.Code.Value(name)


# TF's eager wrapper puts this before the message of an op that failed inside a graph.
_GRAPH_ERROR_PREAMBLE = re.compile(
    r"^Graph execution error:\s*(Detected at node .*?\n)?(<stack traces unavailable>\n)?", re.DOTALL)
_OP_SUFFIX = re.compile(r"\s*\[Op:__inference_[^\]]*\]\s*$")
# The graph node that failed ("\n\t [[{{node map/while/decode_image/DecodeImage}}]]"): the server's detail.
_NODE_SUFFIX = re.compile(r"\s*\[\[\{\{node [^}]*\}\}\]\]")


def _op_error_message(message: str) -> str:
    """The op's own message (e.g. the model's "Input image [1] of the batch is not ...") without TF's
    Python-side preamble, the graph node and the function name."""
    return _NODE_SUFFIX.sub("", _OP_SUFFIX.sub("", _GRAPH_ERROR_PREAMBLE.sub("", message))).strip()
