"""The local server over real sockets on 127.0.0.1, with the exported tiny model: REST (row and column) and
gRPC answer what the SavedModel answers when called directly; metadata, status, versions and labels; every
bad request gets a clear 4xx and the server keeps serving; a pushed version is picked up, a half-written or
broken one is not; 8 clients x 20 requests; the predict command end to end.

One model export per session (maskrcnn_tfx.testing.models); one server for the module.
"""
import base64
import io
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import portpicker
import pytest
from PIL import Image

from maskrcnn_tfx.testing import models as served
import maskrcnn_tfx  # noqa: F401
from maskrcnn_tfx import cli
from maskrcnn_tfx import masks as masks_lib
from maskrcnn_tfx import signature as sig
from maskrcnn_tfx.serving import client as client_lib
from maskrcnn_tfx.serving import detections as detections_lib
from maskrcnn_tfx.serving.local_server import LocalServer, ServerOptions
from maskrcnn_tfx.serving.model_config import ServedModel, VersionPolicy

pytestmark = pytest.mark.slow

MAX_REQUEST_BYTES = 1 << 20
FIRST_VERSION = 1


@pytest.fixture(scope="module")
def model_dir():
    return served.exported_model_dir()


@pytest.fixture(scope="module")
def direct(model_dir):
    """The SavedModel called directly: the reference every API must match."""
    import tensorflow as tf

    loaded = tf.saved_model.load(model_dir)
    function = loaded.signatures[sig.SERVING_SIGNATURE]

    def call(images):
        return {k: v.numpy() for k, v in function(**{sig.IMAGES_INPUT: tf.constant(images)}).items()}

    return call


@pytest.fixture(scope="module")
def base_dir(model_dir, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("serving_base"))
    served.push(model_dir, base, FIRST_VERSION)
    return base


@pytest.fixture(scope="module")
def server(base_dir):
    model = ServedModel(served.MODEL_NAME, base_dir, VersionPolicy("latest", num_versions=2),
                        {"stable": FIRST_VERSION, "canary": 2})
    options = ServerOptions(rest_port=portpicker.pick_unused_port(), grpc_port=portpicker.pick_unused_port(),
                            max_request_bytes=MAX_REQUEST_BYTES, workers=8, poll_seconds=0.3,
                            settle_seconds=0.5)
    with LocalServer([model], options) as running:
        yield running
    # Stopped: the ports are closed.
    with pytest.raises(client_lib.PredictionError, match="cannot reach"):
        _rest(running, retry=client_lib.RetryPolicy(max_attempts=1)).status()


def _rest(server, **kwargs):
    kwargs.setdefault("model_name", served.MODEL_NAME)
    return client_lib.connect(f"http://127.0.0.1:{server.rest_port}", **kwargs)


def _grpc(server, **kwargs):
    kwargs.setdefault("model_name", served.MODEL_NAME)
    return client_lib.connect(f"127.0.0.1:{server.grpc_port}", use_grpc=True, **kwargs)


def _http(server, method, path, body=None, headers=None):
    """(status, JSON body) of a raw HTTP request."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _assert_same_outputs(got, expected):
    assert set(got) == set(sig.OUTPUT_KEYS)
    for key in sig.OUTPUT_KEYS:
        assert got[key].dtype == expected[key].dtype, key
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5, err_msg=key)


def test_rest_and_grpc_answer_what_the_saved_model_answers(server, direct):
    images = served.sample_images()
    expected = direct(images)
    assert expected["num_detections"].sum() > 0
    _assert_same_outputs(_rest(server).predict(images), expected)
    _assert_same_outputs(client_lib.RestClient(f"http://127.0.0.1:{server.rest_port}",
                                               client_lib.ModelTarget(served.MODEL_NAME),
                                               request_format="column").predict(images), expected)
    _assert_same_outputs(_grpc(server).predict(images), expected)


def test_detections_have_full_image_masks_and_label_map_names(server, direct):
    images = served.sample_images()
    expected = detections_lib.from_outputs(direct(images), label_map=served.LABEL_MAP, score_threshold=0.0)
    for client in (_rest(server), _grpc(server)):
        # No label map given: the client reads it from the local server's metadata.
        got = client.detect(images, score_threshold=0.0, batch_size=2)
        assert client.label_map == served.LABEL_MAP
        assert len(got) == len(images)
        for image, reference, encoded in zip(got, expected, images):
            width, height = Image.open(io.BytesIO(encoded)).size
            assert (image.height, image.width) == (height, width)
            assert len(image) == len(reference) > 0
            for d, r in zip(image.detections, reference.detections):
                assert d.class_id == r.class_id and d.class_name == served.LABEL_MAP.name_of(d.class_id)
                assert d.mask.shape == (height, width)
                np.testing.assert_array_equal(d.mask, r.mask)
                np.testing.assert_allclose(d.box_pixels, r.box_pixels, atol=1e-3)
                pixels = np.array(d.box)[[1, 0, 3, 2]] * np.array([width, height] * 2)
                np.testing.assert_allclose(d.box_pixels, pixels, atol=1e-3)


def test_status_and_metadata_are_tf_servings(server):
    status, body = _http(server, "GET", f"/v1/models/{served.MODEL_NAME}")
    assert status == 200
    versions = {s["version"]: s for s in body["model_version_status"]}
    assert versions[str(FIRST_VERSION)]["state"] == "AVAILABLE"
    assert versions[str(FIRST_VERSION)]["status"]["error_code"] == "OK"

    status, body = _http(server, "GET", f"/v1/models/{served.MODEL_NAME}/versions/{FIRST_VERSION}/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": served.MODEL_NAME, "signature_name": "", "version": str(FIRST_VERSION)}
    signature_defs = body["metadata"]["signature_def"]["signature_def"]
    assert set(signature_defs) == {sig.SERVING_SIGNATURE, sig.TF_EXAMPLE_SIGNATURE}
    serving_default = signature_defs[sig.SERVING_SIGNATURE]
    assert serving_default["method_name"] == "tensorflow/serving/predict"
    assert serving_default["inputs"][sig.IMAGES_INPUT]["dtype"] == "DT_STRING"
    assert set(serving_default["outputs"]) == set(sig.OUTPUT_KEYS)
    assert body["metadata"]["label_map"]["classes"][0] == {"id": 1, "name": "square"}

    grpc_metadata = _grpc(server).metadata()
    from tensorflow_serving.apis import get_model_metadata_pb2

    defs = get_model_metadata_pb2.SignatureDefMap()
    assert grpc_metadata.metadata["signature_def"].Unpack(defs)
    assert set(defs.signature_def[sig.SERVING_SIGNATURE].outputs) == set(sig.OUTPUT_KEYS)
    grpc_status = _grpc(server, version=FIRST_VERSION).status()
    assert [s.version for s in grpc_status.model_version_status] == [FIRST_VERSION]


def test_version_numbers_and_labels_select_the_version(server, direct):
    images = served.sample_images()[:1]
    expected = direct(images)
    _assert_same_outputs(_rest(server, version=FIRST_VERSION).predict(images), expected)
    _assert_same_outputs(_rest(server, version_label="stable").predict(images), expected)
    _assert_same_outputs(_grpc(server, version_label="stable").predict(images), expected)
    body = rest_body(images)
    status, answer = _http(server, "POST", f"/v1/models/{served.MODEL_NAME}/labels/stable:predict", body)
    assert status == 200 and len(answer["predictions"]) == 1


def rest_body(images, form="instances"):
    values = [{"b64": base64.b64encode(i).decode()} for i in images]
    return json.dumps({form: values}).encode()


@pytest.mark.parametrize("path, body, status, message", [
    (":predict", b"{not json", 400, "JSON Parse error"),
    (":predict", b"", 400, "JSON Parse error: The document is empty"),
    (":predict", b'{"instances": [{"b64": "%%%not base64"}]}', 400, "Unable to base64 decode"),
    (":predict", b'{"instances": [{"b64": "' + base64.b64encode(b"GIF89a not a picture") + b'"}]}', 400,
     sig.NOT_AN_IMAGE_MESSAGE),
    (":predict", b'{"signature_name": "nope", "instances": [{"b64": "aGk="}]}', 400,
     'Serving signature name: "nope" not found'),
    (":predict", b'{"images": []}', 400, "Missing 'inputs' or 'instances' key"),
    ("/labels/nope:predict", b'{"instances": [{"b64": "aGk="}]}', 400, "Unrecognized servable version label"),
    ("/versions/7:predict", b'{"instances": [{"b64": "aGk="}]}', 404,
     f"Servable not found for request: Specific({served.MODEL_NAME}, 7)"),
    (":classify", b'{"examples": []}', 400, "not supported"),
])
def test_bad_requests_get_a_clear_4xx_and_serving_continues(server, path, body, status, message):
    got_status, answer = _http(server, "POST", f"/v1/models/{served.MODEL_NAME}{path}", body,
                               {"Content-Type": "application/json"})
    assert got_status == status
    assert set(answer) == {"error"} and message in answer["error"]
    assert _rest(server).predict(served.sample_images()[:1])["num_detections"].shape == (1,)


def test_unknown_model_is_404_on_every_api(server):
    body = rest_body(served.sample_images()[:1])
    status, answer = _http(server, "POST", "/v1/models/nope:predict", body)
    assert (status, answer) == (404, {"error": "Servable not found for request: Latest(nope)"})
    status, answer = _http(server, "GET", "/v1/models/nope")
    assert (status, answer) == (404, {"error": "Could not find any versions of model nope"})
    status, answer = _http(server, "GET", "/v1/models/nope/metadata")
    assert status == 404
    with pytest.raises(client_lib.PredictionError) as raised:
        _grpc(server, model_name="nope").predict(served.sample_images()[:1])
    assert raised.value.status == "NOT_FOUND" and not raised.value.retryable
    status, answer = _http(server, "GET", "/v1/models")
    assert status == 400 and "Missing model name" in answer["error"]


def test_oversized_bodies_are_refused_before_parsing(server):
    big = rest_body([b"\xff\xd8\xff" + os.urandom(MAX_REQUEST_BYTES)])
    status, answer = _http(server, "POST", f"/v1/models/{served.MODEL_NAME}:predict", big)
    assert status == 413 and f"limit of {MAX_REQUEST_BYTES} bytes" in answer["error"]
    with pytest.raises(client_lib.PredictionError) as raised:
        _grpc(server).predict([os.urandom(MAX_REQUEST_BYTES + 10)])
    assert raised.value.status == "RESOURCE_EXHAUSTED"
    assert _grpc(server).predict(served.sample_images()[:1])["num_detections"].shape == (1,)


def test_not_an_image_over_grpc_names_the_image(server):
    with pytest.raises(client_lib.PredictionError) as raised:
        _grpc(server).predict([served.sample_images()[0], b"plain text"])
    assert raised.value.status == "INVALID_ARGUMENT"
    assert "[1]" in str(raised.value) and sig.NOT_AN_IMAGE_MESSAGE in str(raised.value)


def _wait_for(condition, what, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _served_versions(server):
    return server.registry.stores[served.MODEL_NAME].versions()


def test_versions_the_pusher_adds_are_picked_up_and_broken_ones_skipped(server, base_dir, model_dir, direct):
    images = served.sample_images()[:1]
    expected = direct(images)
    # A copy still in progress (no saved_model.pb yet: the Pusher writes it last) is not a version.
    half = os.path.join(base_dir, "3")
    shutil.copytree(os.path.join(model_dir, "variables"), os.path.join(half, "variables"))
    served.push(model_dir, base_dir, 2)
    _wait_for(lambda: _served_versions(server) == [2, 1], "version 2")
    _assert_same_outputs(_rest(server).predict(images), expected)
    assert _rest(server).status()["model_version_status"][0]["version"] == "2"
    _assert_same_outputs(_grpc(server, version_label="canary").predict(images), expected)
    _assert_same_outputs(_rest(server, version=1).predict(images), expected)

    # A version that cannot load is reported and skipped; the loaded ones keep serving.
    broken = os.path.join(base_dir, "4")
    os.makedirs(broken)
    with open(os.path.join(broken, sig.SAVED_MODEL_FILE), "wb") as f:
        f.write(b"not a SavedModel")
    _wait_for(lambda: any(s["version"] == "4" for s in _rest(server).status()["model_version_status"]),
              "version 4's status")
    status = {s["version"]: s for s in _rest(server).status()["model_version_status"]}
    assert status["4"]["state"] == "END" and status["4"]["status"]["error_message"]
    assert "3" not in status
    assert _served_versions(server) == [2, 1]
    _assert_same_outputs(_rest(server).predict(images), expected)
    with pytest.raises(client_lib.PredictionError) as raised:
        _rest(server, version=4).predict(images)
    assert raised.value.status == 404


def test_eight_clients_twenty_requests_each(server):
    images = served.sample_images()
    errors, answered = [], []

    def run(index):
        make = _grpc if index % 2 else _rest
        with make(server, retry=client_lib.RetryPolicy(max_attempts=1)) as client:
            for request in range(20):
                try:
                    outputs = client.predict([images[(index + request) % len(images)]])
                    answered.append(int(outputs["num_detections"].shape[0]))
                except Exception as e:  # pylint: disable=broad-except
                    errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert answered == [1] * 160


def _write_images(directory):
    paths = []
    for i, encoded in enumerate(served.sample_images()):
        extension = "jpg" if encoded.startswith(b"\xff\xd8\xff") else "png"
        path = os.path.join(directory, f"{i + 1:012d}.{extension}")
        with open(path, "wb") as f:
            f.write(encoded)
        paths.append(path)
    return paths


@pytest.mark.parametrize("use_grpc", [False, True], ids=["rest", "grpc"])
def test_predict_command_writes_coco_results_and_overlays(server, direct, tmp_path, capsys, use_grpc):
    from PIL import Image
    from pycocotools import mask as mask_api

    paths = _write_images(str(tmp_path))
    results_file, overlays = tmp_path / "results.json", tmp_path / "overlays"
    endpoint = f"127.0.0.1:{server.grpc_port}" if use_grpc else f"http://127.0.0.1:{server.rest_port}"
    argv = ["predict", *paths, "--endpoint", endpoint, "--model-name", served.MODEL_NAME, "--score-threshold",
            "0.2", "--coco-results", str(results_file), "--overlay-dir", str(overlays), "--batch-size", "2"]
    assert cli.main(argv + (["--grpc"] if use_grpc else [])) == 0
    printed = capsys.readouterr().out
    assert all(p in printed for p in paths)

    results = json.loads(results_file.read_text())
    expected = detections_lib.from_outputs(direct(served.sample_images()), label_map=served.LABEL_MAP,
                                           score_threshold=0.2)
    assert len(results) == sum(len(e) for e in expected) > 0
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    for image_id, reference in zip((1, 2, 3), expected):
        got = by_image.get(image_id, [])
        assert len(got) == len(reference)
        for r, d in zip(got, reference.detections):
            assert r["category_id"] == d.class_id and r["segmentation"]["size"] == [reference.height,
                                                                                   reference.width]
            np.testing.assert_array_equal(mask_api.decode({"size": r["segmentation"]["size"],
                                                           "counts": r["segmentation"]["counts"].encode()}),
                                          d.mask)
            np.testing.assert_allclose(r["bbox"], d.coco_bbox(), atol=0.01)
            assert masks_lib.decode_rle([r["segmentation"]]).shape == (1, reference.height, reference.width)
    for path, reference in zip(paths, expected):
        overlay_file = overlays / (os.path.splitext(os.path.basename(path))[0] + ".overlay.png")
        picture = Image.open(overlay_file)
        assert picture.format == "PNG" and picture.size == (reference.width, reference.height)
        original = np.asarray(Image.open(path).convert("RGB"))
        assert np.any(np.asarray(picture.convert("RGB")) != original), "the overlay draws the detections"


def test_predict_command_reports_refused_images_and_writes_the_others(server, tmp_path, capsys):
    paths = _write_images(str(tmp_path))
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not a picture")
    results_file = tmp_path / "results.json"
    argv = ["predict", paths[0], str(bad), paths[1], "--endpoint", f"http://127.0.0.1:{server.rest_port}",
            "--model-name", served.MODEL_NAME, "--batch-size", "1", "--score-threshold", "0",
            "--coco-results", str(results_file)]
    assert cli.main(argv) == 1
    assert f"refused {bad}" in capsys.readouterr().err
    results = json.loads(results_file.read_text())
    assert {r["image_id"] for r in results} == {1, 2}
