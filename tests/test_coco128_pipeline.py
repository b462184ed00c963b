"""The product end to end on real COCO data (coco128: photos up to 640 pixels, 80 categories with COCO's id gaps,
crowd RLE regions): convert, every component of the local pipeline with the tiny model at 256 pixels, push,
serve one photo through the local server, and write the report, which must stay legible with 80 classes.

Kept cheap for CI: 3 training steps of batch 2, an eval split of 4 photos (8 classes, one crowd region), COCO's
exact box AP. Skips without the sample ($MASKRCNN_TFX_COCO128, the ``coco128_dir`` fixture).
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import math
import os

import numpy as np
import pytest

import maskrcnn_tfx  # noqa: F401

pytestmark = pytest.mark.slow

INPUT_SIZE = 256
TRAIN_STEPS = 3
# With seed 0 this puts 4 of the 128 photos in the eval split: 8 classes with ground truth, one crowd region.
EVAL_FRACTION = 0.0625
GALLERY_SIZE = 2
ARTIFACTS_ENV = "MASKRCNN_TFX_TEST_ARTIFACTS"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def coco128_run(coco128_dir, tmp_path_factory):
    """coco128 converted, then one run of the local pipeline; returns (config, run summary, data folder)."""
    from maskrcnn_tfx.data.convert import convert_coco
    from maskrcnn_tfx.pipelines import local_runner, outputs
    from maskrcnn_tfx import config as config_lib

    work = str(tmp_path_factory.mktemp("coco128_pipeline"))
    data = os.path.join(work, "data")
    report = convert_coco(os.path.join(coco128_dir, "annotations", "instances.json"),
                          os.path.join(coco128_dir, "images"), data, eval_fraction=EVAL_FRACTION, seed=0,
                          progress=False)
    assert report.images == 128 and not report.skipped
    config = config_lib.from_dict({
        "pipeline_name": "maskrcnn-coco128-test",
        "pipeline_root": os.path.join(work, "pipeline"),
        "serving_dir": os.path.join(work, "serving"),
        "data": {"root": data},
        "trainer": {"preset": "tiny", "model": {"input_size": INPUT_SIZE},
                    "train": {"train_steps": TRAIN_STEPS, "batch_size": 2, "summary_interval": 1,
                              "checkpoint_interval": 3}},
        # The test's own thresholds: a 3-step model's AP is about 0 (any AP is above -1), and this run is about
        # the wiring on real data. COCO's exact box AP (its cost does not grow with the 80 classes).
        "evaluation": {"box_metric": "pycocotools", "min_mask_ap": -1.0, "min_box_ap": -1.0},
    })
    local_runner.run(config)
    run = outputs.summarize_run(config)  # with the blessing, the pushed version and the metrics
    assert run is not None
    return config, run, data


def _eval_examples(data):
    import tensorflow as tf

    from maskrcnn_tfx.example_format import from_tf_example

    paths = sorted(glob.glob(os.path.join(data, "eval", "*")))
    return [from_tf_example(bytes(r.numpy())) for p in paths for r in tf.data.TFRecordDataset(p)]


def test_every_component_runs_and_the_model_is_pushed(coco128_run):
    from maskrcnn_tfx.pipelines import component_ids as ids

    config, run, _ = coco128_run
    # Every component of the default pipeline (inferred schema, no infra validation) ran here.
    expected = [c for c in ids.IN_ORDER if c not in (ids.IMPORT_SCHEMA_GEN, ids.INFRA_VALIDATOR, ids.RESOLVER)]
    assert {c: run.executions[c].state for c in expected} == {c: "COMPLETE" for c in expected}
    assert run.blessed is True and run.pushed
    assert os.path.isfile(os.path.join(config.resolved_serving_dir, run.pushed_version, "saved_model.pb"))
    # Both metrics were computed over the photos (a number, not NaN: the eval split has ground truth).
    assert math.isfinite(run.metrics["mask_ap"]) and math.isfinite(run.metrics["box_ap"])


def test_one_photo_served_by_the_local_server(coco128_run):
    import portpicker
    import tensorflow as tf

    from maskrcnn_tfx.label_map import LabelMap
    from maskrcnn_tfx.serving import client as client_lib
    from maskrcnn_tfx.serving.local_server import LocalServer, ServerOptions, single_model

    config, run, data = coco128_run
    photo = next(e for e in _eval_examples(data) if e.height != e.width)  # a real photo, not square
    options = ServerOptions(rest_port=portpicker.pick_unused_port(), grpc_port=None, poll_seconds=0.5,
                            settle_seconds=0.5)
    assert options.host == "127.0.0.1"
    with LocalServer(single_model(config.resolved_serving_dir, "maskrcnn"), options) as server:
        with client_lib.connect(f"http://127.0.0.1:{server.rest_port}", timeout=120) as client:
            served = client.predict([photo.encoded])
            detections = client.detect([photo.encoded], score_threshold=0.0)[0]
        # The SavedModel the server loaded (one load of this model is enough: each costs tens of seconds).
        loaded = server.registry.stores["maskrcnn"].resolve()
    label_map = LabelMap.load(config.label_map_path)
    assert len(label_map.ids) == 80 and max(label_map.ids) == 90  # COCO's ids, with their gaps
    # The answer is in the photo's own frame and names only classes of the label map.
    assert served["image_size"].tolist() == [[photo.height, photo.width]]
    num = int(served["num_detections"][0])
    assert 0 <= num <= served["detection_scores"].shape[1]
    assert set(served["detection_classes"][0, :num].tolist()) <= set(label_map.ids)
    boxes = served["detection_boxes"][0, :num]
    assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] >= boxes[:, :2])
    assert len(detections) == num and all(d.class_name in label_map.names for d in detections.detections)
    # Masks pasted onto the whole photo, at its own size.
    assert all(d.mask.shape == (photo.height, photo.width) for d in detections.detections)
    # The server answers what the pushed SavedModel computes itself: its signature called directly, without the
    # REST API, the client or the server's batching.
    assert os.path.realpath(loaded.path) == os.path.realpath(
        os.path.join(config.resolved_serving_dir, run.pushed_version))
    direct = loaded.signature("serving_default")(images=tf.constant([photo.encoded]))
    assert int(direct["num_detections"][0]) == num
    np.testing.assert_allclose(direct["detection_scores"].numpy()[0, :num], served["detection_scores"][0, :num],
                               atol=1e-5)
    np.testing.assert_allclose(direct["detection_boxes"].numpy()[0, :num], boxes, atol=1e-5)


@pytest.fixture(scope="module")
def report_page(coco128_run, tmp_path_factory):
    from maskrcnn_tfx import cli

    config, _, _ = coco128_run
    output = str(tmp_path_factory.mktemp("coco128_report"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["report", "--pipeline-root", config.pipeline_root, "--output", output,
                         "--gallery-size", str(GALLERY_SIZE), "--score-threshold", "0.05"])
    assert code == 0, out.getvalue()
    # "run <id>: <its page>" (then the index's line)
    (page,) = [line.split(": ", 1)[1] for line in out.getvalue().splitlines() if line.startswith("run ")]
    assert os.path.isfile(page), out.getvalue()
    with open(os.path.join(os.path.dirname(page), "report.json"), encoding="utf-8") as f:
        return page, json.load(f)


def test_report_per_class_ap_lists_the_classes_present_sorted(coco128_run, report_page):
    _, _, data = coco128_run
    _, facts = report_page
    present = {name for e in _eval_examples(data)
               for name, crowd in zip(e.class_texts, e.is_crowd) if not crowd}
    rows = facts["evaluation"]["per_class_rows"]
    # Only the classes with ground truth in the eval split (8 of the 80), by name, not by id.
    assert {r["name"] for r in rows} == present and len(rows) < 80
    assert all(r["mask_ap"]["value"] is not None and math.isfinite(r["mask_ap"]["value"]) for r in rows)
    # Best first, ties by name.
    keys = [(-r["mask_ap"]["value"], r["name"]) for r in rows]
    assert keys == sorted(keys)
    # The others are named once, in a short list, rather than as 72 rows of "—".
    assert facts["evaluation"]["classes_without_ground_truth"] == 80 - len(present)
    with open(report_page[0], encoding="utf-8") as f:
        text = f.read()
    assert "no ground truth in the eval split" in text


def test_report_gallery_shows_the_photos_at_their_own_aspect_ratio(coco128_run, report_page):
    from PIL import Image

    _, _, data = coco128_run
    page, facts = report_page
    examples = {e.source_id: e for e in _eval_examples(data)}
    items = facts["gallery"]["items"]
    assert len(items) == GALLERY_SIZE
    for item in items:
        example = examples[item["source_id"]]
        for name in (item["truth_image"], item["prediction_image"]):
            width, height = Image.open(os.path.join(os.path.dirname(page), name)).size
            # Photos up to 640 pixels are shrunk to at most 512 a side, never stretched.
            assert max(width, height) <= 512
            assert abs(width / height - example.width / example.height) < 0.01, (name, width, height)


def test_report_page_in_a_real_browser(report_page):
    from _browser import Browser, chromium_binary

    binary, why = chromium_binary()
    if not binary:
        pytest.skip(why)
    page, facts = report_page
    artifacts = os.environ.get(ARTIFACTS_ENV) or os.path.join(REPO, "outputs", "test-artifacts")
    os.makedirs(artifacts, exist_ok=True)
    with Browser(binary) as browser:
        check = browser.open(page)
        screenshot = browser.screenshot(os.path.join(artifacts, "coco128-report.png"))
    assert not check.console_errors and not check.exceptions and not check.failed_loads
    assert not check.broken_images and not check.outside_requests
    assert os.path.getsize(screenshot) > 0
    assert len(facts["evaluation"]["per_class_rows"]) < 80
