"""TF Serving's REST ``:predict`` JSON: request bodies to input arrays, output arrays to response bodies.

The two formats of TF Serving's REST API:

- row (``"instances"``): a list with one entry per example; with one input an entry is its value, otherwise
  an object of input name to value. Answered as ``{"predictions": [...]}``, one entry per example (an object
  of output name to value, or the bare value when the signature has one output).
- column (``"inputs"``): the input's whole batch (one input) or an object of input name to batch. Answered as
  ``{"outputs": ...}``: an object of output name to batch (or the bare batch for one output).

Binary strings travel as ``{"b64": "<base64>"}``; ``"signature_name"`` picks the signature. Error messages
follow TF Serving's where it has one. Only the standard library and numpy: the client uses this too.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from maskrcnn_tfx.serving.model_store import TensorInfo, invalid_argument

_NUMPY_DTYPES = {
    "DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16,
    "DT_INT8": np.int8, "DT_INT16": np.int16, "DT_INT32": np.int32, "DT_INT64": np.int64,
    "DT_UINT8": np.uint8, "DT_UINT16": np.uint16, "DT_UINT32": np.uint32, "DT_UINT64": np.uint64,
    "DT_BOOL": np.bool_, "DT_STRING": object,
}
# Deeper than any tensor a request carries (a row of a rank-8 input nests 10 deep), shallow enough that the
# decoding below, which recurses, stays far from Python's recursion limit.
MAX_JSON_DEPTH = 64


def parse_body(body: bytes) -> Dict[str, Any]:
    """The request's JSON object (TF Serving's wording for what is not one)."""
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except UnicodeDecodeError as e:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from None
    except json.JSONDecodeError as e:
        raise invalid_argument(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    except RecursionError:
        raise invalid_argument(f"JSON Parse error: the document nests too deep (at most {MAX_JSON_DEPTH} levels)") \
            from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise invalid_argument(f"JSON Parse error: {e}") from None
    if not isinstance(document, dict):
        raise invalid_argument("JSON Parse error: the request is not a JSON object")
    depth = _depth(document)
    if depth > MAX_JSON_DEPTH:
        raise invalid_argument(f"JSON Parse error: the document nests {depth} levels deep, more than "
                               f"{MAX_JSON_DEPTH}")
    return document


def _depth(document: Any) -> int:
    """How deep lists and objects nest in ``document`` (without recursion: it may nest hundreds deep)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((item, depth + 1) for item in value if isinstance(item, (list, dict)))
    return deepest


def signature_name_of(document: Mapping[str, Any]) -> str:
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument("'signature_name' key must be a string value.")
    return name


def _decode_string(value: Any, where: str) -> bytes:
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise invalid_argument(f"{where}: expected a string or an object with a single 'b64' key, got "
                                   f"an object with keys {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument(f"Unable to base64 decode {where}") from None
    if isinstance(value, str):
        return value.encode("utf-8")
    raise invalid_argument(f"{where}: expected a string or {{\"b64\": ...}}, got {type(value).__name__}")


def _to_array(value: Any, info: TensorInfo, where: str) -> np.ndarray:
    dtype = _NUMPY_DTYPES.get(info.dtype)
    if dtype is None:
        raise invalid_argument(f"{where}: input dtype {info.dtype} is not supported")
    if dtype is object:
        def convert(v, path):
            if isinstance(v, list):
                return [convert(x, f"{path}[{i}]") for i, x in enumerate(v)]
            return _decode_string(v, path)

        converted = convert(value, where)
        array = np.empty(np.shape(converted) if isinstance(converted, list) else (), dtype=object)
        if isinstance(converted, list):
            _fill(array, converted)
        else:
            array[()] = converted
        return array
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise invalid_argument(f"{where}: not of expected type: {info.dtype} ({e})") from None


def _fill(array: np.ndarray, nested: list) -> None:
    """Copies a nested list of bytes into an object array (np.array would turn bytes into fixed-width S)."""
    if array.ndim == 1:
        for i, v in enumerate(nested):
            array[i] = v
        return
    for i, v in enumerate(nested):
        if not isinstance(v, list) or len(v) != array.shape[1]:
            raise invalid_argument("the input's rows have different lengths")
        _fill(array[i], v)


def _is_value_object(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def decode_inputs(document: Mapping[str, Any], inputs: Mapping[str, TensorInfo]) -> Tuple[Dict[str, np.ndarray], str]:
    """(input name -> array, "row" or "column") of a ``:predict`` request body."""
    has_rows, has_columns = "instances" in document, "inputs" in document
    if has_rows == has_columns:
        raise invalid_argument("Missing 'inputs' or 'instances' key" if not has_rows
                               else "Not allowed to specify both 'inputs' and 'instances' keys")
    names = sorted(inputs)
    if has_rows:
        instances = document["instances"]
        if not isinstance(instances, list) or not instances:
            raise invalid_argument("'instances' must be a non-empty JSON list")
        if len(names) == 1 and not (isinstance(instances[0], dict) and not _is_value_object(instances[0])):
            columns = {names[0]: instances}
        else:
            columns = {name: [] for name in names}
            for i, instance in enumerate(instances):
                if not isinstance(instance, dict) or _is_value_object(instance):
                    raise invalid_argument(f"instance {i}: expected an object of named inputs "
                                           f"({', '.join(names)})")
                for name in names:
                    if name not in instance:
                        raise invalid_argument(f"Missing named input: {name} in instance {i}.")
                    columns[name].append(instance[name])
                unknown = sorted(set(instance) - set(names))
                if unknown:
                    raise invalid_argument(f"instance {i}: unknown inputs {unknown} (the signature has "
                                           f"{names})")
        arrays = {name: _to_array(columns[name], inputs[name], f"input '{name}'") for name in names}
        return arrays, "row"
    value = document["inputs"]
    if len(names) == 1 and not (isinstance(value, dict) and not _is_value_object(value)):
        value = {names[0]: value}
    if not isinstance(value, dict):
        raise invalid_argument("'inputs' must be an object of named inputs")
    for name in names:
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise invalid_argument(f"'inputs' names unknown inputs {unknown} (the signature has {names})")
    return {name: _to_array(value[name], inputs[name], f"input '{name}'") for name in names}, "column"


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind == "S":
        def convert(v):
            if isinstance(v, list):
                return [convert(x) for x in v]
            return {"b64": base64.b64encode(v).decode("ascii")} if isinstance(v, bytes) else v

        return convert(array.tolist())
    return array.tolist()


def _serializable(array: np.ndarray) -> Any:
    """What orjson writes for an output: numeric arrays as they are (in their own precision: float32 values in
    their shortest float32 form, as TF Serving writes them), strings as b64 objects."""
    if array.dtype == object or array.dtype.kind == "S":
        return _jsonable(array)
    return np.ascontiguousarray(array)


def encode_outputs(outputs: Mapping[str, np.ndarray], form: str) -> bytes:
    """The response body of a ``:predict`` request in the request's format."""
    # orjson (a dependency of TFX) writes numpy arrays ~30x faster than json: the masks are most of a response.
    import orjson  # pylint: disable=import-outside-toplevel

    dumps = functools.partial(orjson.dumps, option=orjson.OPT_SERIALIZE_NUMPY)
    names = sorted(outputs)
    if form == "column":
        body: Any = {name: _serializable(outputs[name]) for name in names}
        if len(names) == 1:
            body = body[names[0]]
        return dumps({"outputs": body})
    sizes = {name: (outputs[name].shape[0] if outputs[name].ndim else None) for name in names}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise invalid_argument(f"the outputs have different batch sizes {sizes}: use the column ('inputs') "
                               f"format")
    columns = {name: _serializable(outputs[name]) for name in names}
    batch = next(iter(sizes.values()))
    if len(names) == 1:
        predictions: Any = columns[names[0]]
    else:
        predictions = [{name: columns[name][i] for name in names} for i in range(batch)]
    return dumps({"predictions": predictions})


def decode_predictions(body: Mapping[str, Any], output_names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """A ``:predict`` response (either format) back to output name -> array (for clients)."""
    if "outputs" in body:
        outputs = body["outputs"]
        if not isinstance(outputs, dict):
            if not output_names or len(output_names) != 1:
                raise ValueError("a bare 'outputs' value needs the one output's name")
            outputs = {output_names[0]: outputs}
        return {name: np.asarray(value) for name, value in outputs.items()}
    if "predictions" in body:
        rows = body["predictions"]
        if rows and not isinstance(rows[0], dict):
            if not output_names or len(output_names) != 1:
                raise ValueError("bare 'predictions' values need the one output's name")
            return {output_names[0]: np.asarray(rows)}
        names = sorted(rows[0]) if rows else list(output_names or ())
        return {name: np.asarray([row[name] for row in rows]) for name in names}
    raise ValueError(f"not a predict response: keys {sorted(body)}")


def encode_request(images: Sequence[bytes], *, input_name: str, signature_name: str = "",
                   form: str = "row") -> bytes:
    """A ``:predict`` body sending encoded images (for clients), in the row or the column format."""
    values = [{"b64": base64.b64encode(image).decode("ascii")} for image in images]
    body: Dict[str, Any] = {"signature_name": signature_name} if signature_name else {}
    if form == "row":
        body["instances"] = [{input_name: value} for value in values]
    elif form == "column":
        body["inputs"] = {input_name: values}
    else:
        raise ValueError(f"format {form!r} is not 'row' or 'column'")
    return json.dumps(body).encode("utf-8")
