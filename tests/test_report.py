"""``maskrcnn-tfx report`` on the local pipeline's runs (the session's ``local_pipeline`` fixture): the index of
runs, each run's page and its facts, a run whose validation failed, bad input; and the pages in a real browser.

The fixture's runs: ``first`` (blessed and pushed), ``strict`` (mask AP threshold 1.0: not blessed; Trainer
cached), ``span2`` (a new span, compared with the first run's model as its baseline; blessed and pushed).
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import html.parser
import io
import json
import math
import os
import shutil
import xml.etree.ElementTree as ElementTree
from typing import Dict, List

import numpy as np
import pytest

import maskrcnn_tfx  # noqa: F401
import _pipeline_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Screenshots are kept here (git-ignored) so a person can look at them after the run; CI may point it elsewhere.
ARTIFACTS_ENV = "MASKRCNN_TFX_TEST_ARTIFACTS"
GALLERY_SIZE = 4


def _cli(*argv: str):
    from maskrcnn_tfx import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


class _Tables(html.parser.HTMLParser):
    """Every table of a page as rows of cell texts, and every link and image source."""

    def __init__(self):
        super().__init__()
        self.tables: List[List[List[str]]] = []
        self.links: List[str] = []
        self.images: List[str] = []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = []
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: str) -> _Tables:
    parser = _Tables()
    with open(path, encoding="utf-8") as f:
        parser.feed(f.read())
    return parser


def _facts(page: str) -> Dict:
    with open(os.path.join(os.path.dirname(page), "report.json"), encoding="utf-8") as f:
        return json.load(f)


def _fmt(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


@dataclasses.dataclass
class BuiltReport:
    output: str
    stdout: str
    stderr: str
    code: int
    pages: Dict[str, str]  # fixture run name -> its page


@pytest.fixture(scope="module")
def report(local_pipeline, tmp_path_factory) -> BuiltReport:
    """The report of every run, built as a user builds it."""
    output = str(tmp_path_factory.mktemp("report"))
    code, stdout, stderr = _cli("report", "--pipeline-root", local_pipeline.pipeline_root, "--output", output,
                                "--all-runs", "--gallery-size", str(GALLERY_SIZE))
    pages = {}
    for name, run in local_pipeline.runs.items():
        found = [line.split(": ", 1)[1] for line in stdout.splitlines()
                 if line.startswith(f"run {run.summary.run_id}: ")]
        pages[name] = found[0] if found else ""
    return BuiltReport(output, stdout, stderr, code, pages)


# --------------------------------------------------------------------------------------------------------------
# The pages of the fixture's runs
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_every_run_is_listed_in_order_by_the_metadata(local_pipeline):
    from maskrcnn_tfx.pipelines import outputs
    from maskrcnn_tfx.report import runs

    config = runs.open_pipeline(local_pipeline.pipeline_root)
    assert config.pipeline_name == local_pipeline.config.pipeline_name  # found in the store, not given
    found = runs.list_runs(config)
    assert [r.run_id for r in found] == [r.summary.run_id for r in local_pipeline.runs.values()]
    assert [r.number for r in found] == [1, 2, 3]
    assert outputs.latest_run(config).run_id == found[-1].run_id
    assert [r.summary.blessed for r in found] == [True, False, True]
    assert all(r.state == runs.COMPLETE for r in found)
    # The strict run reused the first run's model (a cached Trainer); the span-2 run compared with it.
    assert found[1].model_uri == found[0].model_uri and found[2].baseline_model_uri == found[0].model_uri


@pytest.mark.slow
def test_the_command_writes_every_page_and_prints_the_report_path(report):
    assert report.code == 0, report.stderr
    index = os.path.join(report.output, "index.html")
    assert f"report: {index}" in report.stdout.splitlines()
    assert all(os.path.isfile(p) for p in report.pages.values()), report.stdout
    assert "warning: run" not in report.stderr, report.stderr  # every part of every run could be read


@pytest.mark.slow
def test_index_lists_every_run_with_headline_metrics_and_blessing(report, local_pipeline):
    index = os.path.join(report.output, "index.html")
    page = _parse(index)
    runs_table = next(t for t in page.tables if t and t[0][:2] == ["#", "run"])
    header, rows = runs_table[0], runs_table[1:]
    assert len(rows) == 3
    by_id = {row[header.index("run")]: dict(zip(header, row)) for row in rows}
    for name, run in local_pipeline.runs.items():
        row = by_id[run.summary.run_id]
        assert row["mask AP"] == _fmt(run.summary.metrics["mask_ap"])
        assert row["box AP"] == _fmt(run.summary.metrics["box_ap"])
        assert row["decision"] == ("blessed" if run.summary.blessed else "not blessed")
        assert row["pushed"] == (run.summary.pushed_version or "—")
    span2 = local_pipeline.runs["span2"].summary
    change = span2.metrics["mask_ap"] - span2.baseline_metrics["mask_ap"]
    assert by_id[span2.run_id]["change in mask AP"] == (f"{change:+.3f}" if round(change, 3) else "±0.000")
    # Newest first, each linking to its page.
    assert [row[header.index("#")] for row in rows] == ["3", "2", "1"]
    run_links = [link for link in page.links if link.startswith("runs/")]
    assert len(run_links) == 3
    assert all(os.path.isfile(os.path.join(report.output, link)) for link in run_links)
    # The mask AP across runs chart.
    assert "runs_history.svg" in page.images
    ElementTree.parse(os.path.join(report.output, "runs_history.svg"))


@pytest.mark.slow
def test_run_page_shows_metrics_blessing_curves_slices_training_data_and_gallery(report, local_pipeline):
    from maskrcnn_tfx.label_map import LabelMap

    first = local_pipeline.runs["first"]
    page_path = report.pages["first"]
    facts = _facts(page_path)
    page = _parse(page_path)
    with open(page_path, encoding="utf-8") as f:
        text = f.read()
    summary = first.summary

    # The metrics table: every COCO number of mask and box, as the Evaluator stored them.
    metrics_table = next(t for t in page.tables if t and t[0][:3] == ["", "mask", "box"])
    rows = {row[0]: row[1:] for row in metrics_table[1:]}
    assert list(rows) == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    for label, suffix in (("AP", ""), ("AP50", "50"), ("AP75", "75"), ("APs", "_small"), ("APm", "_medium"),
                          ("APl", "_large")):
        assert rows[label] == [_fmt(summary.metrics["mask_ap" + suffix]), _fmt(summary.metrics["box_ap" + suffix])]
    assert facts["metrics"]["mask_ap"] == pytest.approx(summary.metrics["mask_ap"])

    # The blessing: its thresholds from the stored EvalConfig, each with its outcome.
    thresholds = {(t["metric"], t["condition"]): t for t in facts["evaluation"]["thresholds"]}
    assert thresholds[("mask_ap", "above -1")]["outcome"] == "passed"
    assert thresholds[("box_ap", "above -1")]["outcome"] == "passed"
    assert facts["run"]["blessed"] is True and facts["run"]["pushed_version"] == summary.pushed_version

    # Per-class AP for every class of the label map, its chart, and the precision-recall curves.
    label_map = LabelMap.load(local_pipeline.config.label_map_path)
    # (the classes with ground truth in the eval split, best mask AP first; the others named apart)
    rows = facts["evaluation"]["per_class_rows"]
    assert sorted([r["name"] for r in rows] + facts["evaluation"]["absent_classes"]) == sorted(label_map.names)
    assert [(-r["mask_ap"]["value"], r["name"]) for r in rows] == sorted((-r["mask_ap"]["value"], r["name"])
                                                                       for r in rows)
    for name in ("per_class_ap.svg", "pr_curves.svg", "training.svg", "class_counts.svg"):
        assert name in page.images
        root = ElementTree.parse(os.path.join(os.path.dirname(page_path), name)).getroot()
        assert root.tag.endswith("svg")

    # Slices: the overall one and the object-count buckets.
    slices = [r["name"] for r in facts["evaluation"]["slice_rows"]]
    assert slices[0] == "Overall" and any(s.startswith("objects in the image = ") for s in slices[1:])

    # Training curves from the TensorBoard logs: the total loss at the last step.
    last = {(r["folder"], r["tag"]): r for r in facts["training"]["last"]}
    assert last[("train", "total_loss")]["step"] == local_pipeline.config.trainer.train.train_steps

    # The data: both splits' statistics, clean schema and annotations.
    statistics = {s["split"]: s for s in facts["data"]["statistics"]}
    assert set(statistics) == {"train", "eval"}
    assert sum(s["num_examples"] for s in statistics.values()) == _pipeline_runs.NUM_IMAGES
    assert set(statistics["train"]["class_counts"]) <= set(label_map.names)
    assert all(not found for found in facts["data"]["schema_anomalies"].values())
    assert {r["errors"] for r in facts["data"]["annotation"].values()} == {0}

    # The gallery: each eval example's ground truth beside the model's masks, as PNGs of the same size.
    from PIL import Image

    items = facts["gallery"]["items"]
    assert len(items) == min(GALLERY_SIZE, statistics["eval"]["num_examples"])
    for item in items:
        truth = Image.open(os.path.join(os.path.dirname(page_path), item["truth_image"]))
        prediction = Image.open(os.path.join(os.path.dirname(page_path), item["prediction_image"]))
        assert truth.format == prediction.format == "PNG" and truth.size == prediction.size
        assert min(truth.size) >= 256  # small images are enlarged to be seen
        assert item["truth_image"] in page.images and item["prediction_image"] in page.images
        assert all(name.replace(" (crowd)", "") in label_map.names for name in item["ground_truth"])
    assert "no validation result" not in text and not facts["problems"]


@pytest.mark.slow
def test_not_blessed_run_names_the_threshold_that_failed(report, local_pipeline):
    facts = _facts(report.pages["strict"])
    assert facts["run"]["blessed"] is False and facts["run"]["pushed"] is False
    outcomes = {(t["metric"], t["condition"]): t["outcome"] for t in facts["evaluation"]["thresholds"]}
    assert outcomes[("mask_ap", "above 1")] == "failed"
    assert outcomes[("box_ap", "above -1")] == "passed"
    # Its Trainer was cached: the training curves are those of the first run's model, which the page names.
    first_slug = os.path.basename(os.path.dirname(report.pages["first"]))
    assert facts["training"]["cached_from"] == {"number": 1, "href": f"../{first_slug}/index.html"}
    with open(report.pages["strict"], encoding="utf-8") as f:
        text = f.read()
    assert "Failed:" in text and "<code>mask_ap</code> above 1" in text


@pytest.mark.slow
def test_run_with_a_baseline_shows_the_change_and_links_the_baseline_run(report, local_pipeline):
    span2 = local_pipeline.runs["span2"].summary
    facts = _facts(report.pages["span2"])
    evaluation = facts["evaluation"]
    assert evaluation["baseline"] == "baseline"
    ap_row = next(r for r in evaluation["summary_rows"] if r["label"] == "AP")
    assert ap_row["mask_ap"]["baseline"] == pytest.approx(span2.baseline_metrics["mask_ap"])
    assert ap_row["mask_ap"]["change"] == pytest.approx(span2.metrics["mask_ap"] - span2.baseline_metrics["mask_ap"],
                                                        abs=1e-9)
    # The change thresholds applied (max_ap_drop 1.0: "at most 1 below the baseline") and passed.
    change_checks = [t for t in evaluation["thresholds"] if t["kind"] == "change"]
    assert {t["metric"] for t in change_checks} == {"mask_ap", "box_ap"}
    assert all(t["outcome"] == "passed" and t["condition"] == "at most 1 below the baseline" for t in change_checks)
    page = _parse(report.pages["span2"])
    first_slug = os.path.basename(os.path.dirname(report.pages["first"]))
    assert f"../{first_slug}/index.html" in page.links  # "the baseline ... trained in run 1"


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_unknown_run_is_a_clear_error_and_writes_nothing(local_pipeline, tmp_path):
    output = tmp_path / "report"
    code, _, err = _cli("report", "--pipeline-root", local_pipeline.pipeline_root, "--output", str(output),
                        "--run", "2001-01-01T00:00:00")
    assert code == 1
    assert "knows no run '2001-01-01T00:00:00'" in err
    assert local_pipeline.runs["first"].summary.run_id in err  # the runs it does know
    assert not output.exists()


def test_missing_metadata_is_a_clear_error(tmp_path):
    code, _, err = _cli("report", "--pipeline-root", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"))
    assert code == 1
    assert "no pipeline metadata at" in err and "metadata.sqlite" in err
    assert not (tmp_path / "out").exists()


def test_report_help_loads_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from maskrcnn_tfx import cli; cli.build_parser(['report']); "
            "import maskrcnn_tfx.report.cli; print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_page_text_is_escaped():
    from maskrcnn_tfx.report import html as report_html

    page = report_html.render("index.html.j2", {
        "pipeline_name": "<script>alert(1)</script>", "pipeline_root": "/a&b", "runs": [], "history_chart": "",
        "missing_pages": False, "version": "x", "generated": "now", "metadata_path": "/m"})
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "/a&amp;b" in page


def test_number_formats():
    from maskrcnn_tfx.report import html as report_html

    assert report_html.number(0.12345) == "0.123" and report_html.number(float("nan")) == "—"
    assert report_html.number(None) == "—" and report_html.signed(0.05) == "+0.050"
    assert report_html.signed(-0.0004) == "±0.000" and report_html.trend(-0.0004) == ""
    assert report_html.trend(-0.1) == "down" and report_html.trend(0.0) == "" and report_html.trend(None) == ""


# --------------------------------------------------------------------------------------------------------------
# The gallery's drawing
# --------------------------------------------------------------------------------------------------------------

def _png_pixels(body: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(np.int64)


def _example(size: int = 64):
    from maskrcnn_tfx import example_format as ef
    from PIL import Image

    image = np.full((size, size, 3), 100, np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, format="PNG")
    mask = np.zeros((size, size), np.uint8)
    mask[8:40, 8:40] = 1
    return ef.InstanceExample(
        source_id=7, encoded=encoded.getvalue(), format="png", height=size, width=size, filename="seven.png",
        boxes=np.array([[8 / size, 8 / size, 40 / size, 40 / size]], np.float32), classes=np.array([2]),
        class_texts=["circle"], is_crowd=np.array([0]), areas=np.array([1024.0], np.float32),
        masks_png=[ef.encode_png_mask(mask)])


def test_truth_panel_tints_the_masks_in_the_class_colour():
    from maskrcnn_tfx.label_map import LabelMap
    from maskrcnn_tfx.report import gallery

    label_map = LabelMap.from_dict({1: "square", 2: "circle"})
    body, labels = gallery.truth_panel(_example(), label_map)
    pixels = _png_pixels(body)
    assert pixels.shape == (256, 256, 3)  # 64 px shown 4x
    color = np.array(gallery.class_color(label_map, 2))
    expected = np.round((1 - gallery.MASK_ALPHA) * 100 + gallery.MASK_ALPHA * color)
    assert np.abs(pixels[24 * 4, 24 * 4] - expected).max() <= 1  # inside the mask
    assert (pixels[60 * 4, 60 * 4] == 100).all()  # outside: the image untouched
    assert labels == ["circle"]


def test_prediction_panel_pastes_masks_of_detections_above_the_threshold_only():
    from maskrcnn_tfx.label_map import LabelMap
    from maskrcnn_tfx.report import gallery

    label_map = LabelMap.from_dict({1: "square", 2: "circle"})
    outputs = {"num_detections": np.array(2), "detection_scores": np.array([0.9, 0.2, 0.0]),
               "detection_classes": np.array([1, 2, 0]),
               "detection_boxes": np.array([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9], [0, 0, 0, 0]]),
               "detection_masks": np.ones((3, 28, 28), np.float32)}
    body, shown, num, best = gallery.prediction_panel(_example(), outputs, label_map, score_threshold=0.5)
    pixels = _png_pixels(body)
    assert [(d.class_name, round(d.score, 2)) for d in shown] == [("square", 0.9)] and num == 2 and best == 0.9
    square = np.array(gallery.class_color(label_map, 1))
    expected = np.round((1 - gallery.MASK_ALPHA) * 100 + gallery.MASK_ALPHA * square)
    assert np.abs(pixels[int(0.3 * 256), int(0.3 * 256)] - expected).max() <= 1  # the pasted mask
    assert (pixels[int(0.75 * 256), int(0.75 * 256)] == 100).all()  # the low-scoring one is not drawn


def test_prediction_panel_draws_the_best_detections_only():
    from maskrcnn_tfx.label_map import LabelMap
    from maskrcnn_tfx.report import gallery

    label_map = LabelMap.from_dict({1: "square"})
    count = gallery.MAX_DRAWN + 5
    scores = np.linspace(0.6, 0.99, count)  # ascending: the model's order is not relied on
    outputs = {"num_detections": np.array(count), "detection_scores": scores, "detection_classes": np.ones(count),
               "detection_boxes": np.tile([[0.1, 0.1, 0.5, 0.5]], (count, 1)),
               "detection_masks": np.ones((count, 28, 28), np.float32)}
    _, shown, num, _ = gallery.prediction_panel(_example(), outputs, label_map, score_threshold=0.5)
    assert num == count and len(shown) == gallery.MAX_DRAWN
    assert [d.score for d in shown] == sorted(scores, reverse=True)[:gallery.MAX_DRAWN]


# --------------------------------------------------------------------------------------------------------------
# A run stopped by the validators still gets its report
# --------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def failed_validation_run(tmp_path_factory):
    """A pipeline whose AnnotationValidator rejects one record (a box outside its image): the run stops."""
    import tensorflow as tf

    from maskrcnn_tfx.components import annotation_validator as av
    from maskrcnn_tfx import example_format as ef
    from maskrcnn_tfx.data.convert import convert_coco
    from maskrcnn_tfx.data.shapes import generate_shapes
    from maskrcnn_tfx.pipelines import local_runner
    from maskrcnn_tfx import config as config_lib

    root = str(tmp_path_factory.mktemp("failed_validation"))
    annotations = generate_shapes(os.path.join(root, "raw"), num_images=10, image_size=64, seed=5)
    data = os.path.join(root, "tfrecords")
    convert_coco(annotations, os.path.join(root, "raw", "coco", "images"), data, eval_fraction=0.3, progress=False)
    (path,) = glob.glob(os.path.join(data, "train", "*.tfrecord-*"))
    example = ef.from_tf_example(next(tf.data.TFRecordDataset(path).as_numpy_iterator()))
    boxes = example.boxes.copy()
    boxes[0, 3] = 1.5  # xmax beyond the right edge
    bad = dataclasses.replace(example, boxes=boxes, source_id=9999, filename="broken.png")
    with tf.io.TFRecordWriter(os.path.join(data, "train", "train.tfrecord-extra")) as writer:
        writer.write(ef.to_tf_example(bad).SerializeToString())
    config = config_lib.from_dict({
        "pipeline_name": "report-failed-validation", "pipeline_root": os.path.join(root, "pipeline"),
        "data": {"root": data},
        "trainer": {"train": {"train_steps": 1}}})
    with pytest.raises(av.AnnotationValidationError):
        local_runner.run(config)
    return config


@pytest.mark.slow
def test_run_failed_at_validation_gets_a_report_naming_the_records(failed_validation_run, tmp_path):
    output = str(tmp_path / "report")
    code, stdout, err = _cli("report", "--pipeline-root", failed_validation_run.pipeline_root, "--output", output)
    assert code == 0, err
    (page_line,) = [line for line in stdout.splitlines() if line.startswith("run ")]
    page = page_line.split(": ", 1)[1]
    facts = _facts(page)
    assert facts["run"]["state"] == "failed" and facts["run"]["failed_components"] == ["AnnotationValidator"]
    assert facts["evaluation"] is None and facts["gallery"] is None
    train = facts["data"]["annotation"]["train"]
    assert facts["data"]["annotation_failed"] is True and train["examples_with_errors"] == 1
    assert any(r["source_id"] == "9999" and r["rule"] == "box_outside_image" for r in train["records"])
    with open(page, encoding="utf-8") as f:
        text = f.read()
    assert "failed at AnnotationValidator" in text and "broken.png" in text and "box_outside_image" in text
    assert "The Evaluator did not run: the run stopped at AnnotationValidator." in text
    index = _parse(os.path.join(output, "index.html"))
    runs_table = next(t for t in index.tables if t and t[0][:2] == ["#", "run"])
    assert len(runs_table) == 2 and runs_table[1][3] == "failed at AnnotationValidator"


# --------------------------------------------------------------------------------------------------------------
# In a real browser
# --------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium():
    import _browser

    binary, why_not = _browser.chromium_binary()
    if not binary:
        pytest.skip(f"no Chromium to test the report in a browser: {why_not}")
    return binary


def _artifacts_dir() -> str:
    path = os.environ.get(ARTIFACTS_ENV) or os.path.join(REPO, "outputs", "test-artifacts")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.mark.slow
def test_report_in_a_real_browser(report, chromium):
    import _browser
    from PIL import Image

    pages = {"index": os.path.join(report.output, "index.html"), **report.pages}
    with _browser.Browser(chromium) as browser:
        for name, path in pages.items():
            check = browser.open(path)
            assert not check.console_errors, (name, check.console_errors)
            assert not check.exceptions, (name, check.exceptions)
            assert not check.failed_loads, (name, check.failed_loads)
            assert check.images and not check.broken_images, (name, check.broken_images)
            assert not check.outside_requests, (name, check.outside_requests)  # self-contained: nothing fetched
            for link in check.links:
                if link.startswith("file://"):
                    assert os.path.exists(link[len("file://"):].split("#")[0]), (name, link)
            shot = browser.screenshot(os.path.join(_artifacts_dir(), f"report-{name}.png"))
            print(f"screenshot of the {name} page: {shot}")
            picture = np.asarray(Image.open(shot).convert("L"), np.float64)
            assert picture.shape[1] >= 1200 and picture.shape[0] >= 600
            assert picture.std() > 10  # not blank: text, tables and charts on the page
    # The run pages are long: everything from the header to the gallery was laid out.
    assert Image.open(os.path.join(_artifacts_dir(), "report-first.png")).size[1] > 3000


# --------------------------------------------------------------------------------------------------------------
# The notebook
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_notebook_renders_tfma_and_tfdv_views_of_the_latest_evaluation(local_pipeline, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(os.path.join(REPO, "notebooks", "evaluation.ipynb"), as_version=4)
    nbformat.validate(notebook)
    monkeypatch.setenv("MASKRCNN_TFX_PIPELINE_ROOT", local_pipeline.pipeline_root)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    span2 = local_pipeline.runs["span2"].summary
    assert f"showing run 3 ({span2.run_id})" in text
    assert "validation ok (blessed): True" in text
    # TFMA's slicing view is a Jupyter widget; TFDV's statistics view is Facets HTML.
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert any("facets" in o.get("data", {}).get("text/html", "") for o in outputs)
    shutil.rmtree(tmp_path, ignore_errors=True)
