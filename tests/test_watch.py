"""``maskrcnn-tfx watch``: local recurring runs on each new span.

The end-to-end test runs the watcher as a user does (a process of its own, stopped by SIGTERM) while spans
arrive one after the other: span 1 holds a record whose box lies outside its image, so the run stops at
validation and pushes nothing; the watcher goes on, and span 2 is trained, evaluated, blessed and pushed. A
report is written after each run. The model is tiny (64 px images, 2 training steps, pycocotools box AP,
in-process Beam) so the two runs take a few minutes. (That a later span's run is compared with the last
blessed model is the pipeline's part: tests/test_pipeline_local.py's span-2 run checks it.)
"""
import contextlib
import dataclasses
import fcntl
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import maskrcnn_tfx  # noqa: F401
from _pipeline_runs import make_span, versions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 64
NUM_IMAGES = 12
# These seeds put 3 of the 12 images in the eval split.
SEEDS = {1: 6, 2: 5}
# A guard against a hung watcher only; nothing asserts durations.
WAIT_LIMIT_SECONDS = 900


def _write_config(work: str, data_root: str) -> str:
    import yaml  # pylint: disable=g-import-not-at-top

    config = {
        "pipeline_name": "maskrcnn-watch-test",
        "pipeline_root": os.path.join(work, "pipeline_root"),
        "serving_dir": os.path.join(work, "serving"),
        "data": {"root": data_root, "train_pattern": "span-{SPAN}/train/*", "eval_pattern": "span-{SPAN}/eval/*",
                 "label_map_path": os.path.join(data_root, "span-1", "label_map.json")},
        # No evaluation inside the Trainer: the Evaluator's is the one this test is about.
        "trainer": {"preset": "tiny", "model": {"input_size": IMAGE_SIZE},
                    "train": {"train_steps": 2, "batch_size": 2, "eval_batch_size": 2, "eval_steps": 0}},
        # Explicit thresholds: any AP is above -1 (a 2-step model may score 0) and may be below the last one's.
        "evaluation": {"min_mask_ap": -1.0, "min_box_ap": -1.0, "max_ap_drop": 1.0, "box_metric": "pycocotools"},
    }
    path = os.path.join(work, "pipeline.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return path


def _stage_span(work: str, span: int, *, bad: bool = False) -> str:
    """A converted span in a staging folder (moved into the data root in one rename, as a user should)."""
    staging = os.path.join(work, "staging")
    path = make_span(staging, span, seed=SEEDS[span], num_images=NUM_IMAGES, image_size=IMAGE_SIZE)
    if bad:
        _add_box_outside_image(path)
    return path


def _add_box_outside_image(span_dir: str) -> None:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx import example_format as ef  # pylint: disable=g-import-not-at-top

    path = sorted(glob.glob(os.path.join(span_dir, "train", "*.tfrecord-*")))[0]
    record = next(tf.data.TFRecordDataset(path).as_numpy_iterator())
    example = ef.from_tf_example(record)
    boxes = example.boxes.copy()
    boxes[0, 3] = 1.5  # xmax beyond the right edge
    bad = dataclasses.replace(example, boxes=boxes, source_id=9999, filename="broken.png")
    with tf.io.TFRecordWriter(os.path.join(span_dir, "train", "train.tfrecord-extra")) as writer:
        writer.write(ef.to_tf_example(bad).SerializeToString())


def _arrive(staged: str, data_root: str) -> None:
    os.makedirs(data_root, exist_ok=True)
    os.rename(staged, os.path.join(data_root, os.path.basename(staged)))


def _state(work: str) -> dict:
    path = os.path.join(work, "pipeline_root", "watch_state.json")
    if not os.path.isfile(path):
        return {"runs": []}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _wait_for_runs(work: str, count: int, watcher: subprocess.Popen, log_path: str) -> dict:
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while time.monotonic() < deadline:
        state = _state(work)
        if len(state["runs"]) >= count:
            return state
        if watcher.poll() is not None:
            break
        time.sleep(1)
    with open(log_path, encoding="utf-8") as f:
        log = f.read()
    pytest.fail(f"the watcher did not record run {count} (exit code {watcher.poll()}); its log:\n{log[-6000:]}")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests"), env.get("PYTHONPATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@pytest.mark.slow
def test_watcher_runs_each_new_span_survives_bad_data_and_stops_on_sigterm(tmp_path):
    from maskrcnn_tfx.report.runs import slug  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines import outputs  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top

    work = str(tmp_path)
    data_root = os.path.join(work, "spans")
    config_file = _write_config(work, data_root)
    report_dir = os.path.join(work, "report")
    # The first span is the bad one: a failed run must not stop the watcher from running the next span.
    _arrive(_stage_span(work, 1, bad=True), data_root)
    staged_good = _stage_span(work, 2)

    log_path = os.path.join(work, "watch.log")
    with open(log_path, "w", encoding="utf-8") as log:
        watcher = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, "-m", "maskrcnn_tfx", "watch", "--config", config_file, "--poll-seconds", "1",
             "--settle-seconds", "0", "--report-dir", report_dir, "--gallery-size", "0"],
            stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=work)
    try:
        state = _wait_for_runs(work, 1, watcher, log_path)
        # While it waits, a second watcher (e.g. --once from cron) cannot start a run: the lock is held.
        with open(os.path.join(work, "pipeline_root", "watch.lock"), encoding="utf-8") as lock:
            with pytest.raises(BlockingIOError):
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        once = subprocess.run([sys.executable, "-m", "maskrcnn_tfx", "watch", "--config", config_file, "--once"],
                              capture_output=True, text=True, env=_env(), cwd=work, check=False)
        assert once.returncode == 0 and "nothing started: another watcher holds" in once.stdout, once

        _arrive(staged_good, data_root)
        state = _wait_for_runs(work, 2, watcher, log_path)
        watcher.send_signal(signal.SIGTERM)
        code = watcher.wait(timeout=120)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    with open(log_path, encoding="utf-8") as f:
        log = f.read()
    assert code == 0, log[-4000:]
    assert "] stopped" in log

    assert [(r["span"], r["status"]) for r in state["runs"]] == [(1, "failed"), (2, "complete")]
    assert state["last_span"] == 2
    assert [r["exit_code"] for r in state["runs"]] == [1, 0]
    assert "span 1: run failed (exit code 1); waiting for the next span" in log
    assert "box_outside_image" in log  # the run's own message names the problem

    config = config_lib.load(config_file)
    runs = [outputs.summarize(r) for r in outputs.pipeline_runs(config)]
    assert len(runs) == 2
    bad, good = runs
    spans = [r.executions["ImportExampleGen"].outputs["examples"][0].custom_properties.get("span") for r in runs]
    assert spans == [1, 2]
    # The bad span stopped at validation: nothing transformed, trained, evaluated or pushed.
    assert not {"Transform", "Trainer", "Evaluator", "Pusher"} & set(bad.executions), bad.executions.keys()
    assert bad.executions["AnnotationValidator"].state == "FAILED"
    # Span 2 ran through every component: trained, evaluated (no blessed model before it: no baseline), pushed.
    assert all(e.state == "COMPLETE" for e in good.executions.values()), good.lines()
    assert {"Transform", "Trainer", "Evaluator", "Pusher"} <= set(good.executions)
    assert good.executions["Evaluator"].inputs.get("baseline_model", []) == []
    assert good.blessed and good.pushed
    assert len(versions(config.resolved_serving_dir)) == 1

    # A report after each run: the index and one page per run, the failed one included, named in the state.
    assert os.path.isfile(os.path.join(report_dir, "index.html"))
    pages = [os.path.join(report_dir, "runs", slug(run.run_id), "index.html") for run in runs]
    assert [r["report"] for r in state["runs"]] == pages
    for page in pages:
        assert os.path.isfile(page), page


def test_watch_refuses_a_configuration_without_spans(tmp_path, capsys):
    from maskrcnn_tfx import cli  # pylint: disable=g-import-not-at-top

    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(f"data: {{root: {tmp_path}}}\npipeline_root: {tmp_path / 'root'}\n")
    assert cli.main(["watch", "--config", str(config_file)]) == 2
    assert "watch needs span patterns" in capsys.readouterr().err
    config_file.write_text(f"data: {{root: {tmp_path}, train_pattern: 's-{{SPAN}}/train/*', "
                           f"eval_pattern: 's-{{SPAN}}/eval/*'}}\nrunner: kubeflow\n"
                           f"pipeline_root: gs://b/root\nserving_dir: gs://b/serving\n")
    assert cli.main(["watch", "--config", str(config_file)]) == 2
    assert "runner local or beam" in capsys.readouterr().err


def test_once_runs_nothing_without_a_complete_new_span(tmp_path, capsys):
    """--once (cron): no span, then a half-written span (train only), then a handled span: nothing runs."""
    from maskrcnn_tfx.pipelines import watcher as watcher_lib  # pylint: disable=g-import-not-at-top

    data_root = tmp_path / "spans"
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(f"data: {{root: {data_root}, train_pattern: 'span-{{SPAN}}/train/*', "
                           f"eval_pattern: 'span-{{SPAN}}/eval/*', label_map_path: {tmp_path / 'lm.json'}}}\n"
                           f"pipeline_root: {tmp_path / 'root'}\n")
    started = []

    class Recording(watcher_lib.Watcher):
        def run_span(self, config, span):
            started.append(span)
            state = self.read_state()
            state.pop("pending", None)
            state["last_span"] = span
            self._write_state(state)
            return 0

    messages = []
    watcher = Recording(str(config_file), settle_seconds=0, log=messages.append)
    assert watcher.watch(once=True) == 0 and started == []
    assert "no complete span" in messages[-1]
    (data_root / "span-1" / "train").mkdir(parents=True)
    (data_root / "span-1" / "train" / "a.tfrecord").write_bytes(b"x")
    assert watcher.watch(once=True) == 0 and started == []  # eval not there yet
    (data_root / "span-1" / "eval").mkdir()
    (data_root / "span-1" / "eval" / "a.tfrecord").write_bytes(b"x")
    assert watcher.watch(once=True) == 0 and started == [1]

    # A span found but still being written (settle time not over) waits for a later check.
    (data_root / "span-2" / "train").mkdir(parents=True)
    (data_root / "span-2" / "eval").mkdir(parents=True)
    for split in ("train", "eval"):
        (data_root / "span-2" / split / "a.tfrecord").write_bytes(b"x")
    settling = Recording(str(config_file), settle_seconds=3600, log=messages.append)
    assert settling.watch(once=True) == 0 and started == [1]
    assert "still changing" in messages[-1]
    assert watcher.watch(once=True) == 0 and started == [1, 2]


def test_stop_during_a_run_interrupts_it_and_keeps_the_span(tmp_path):
    """SIGTERM's handler (Watcher.stop) during a run: the run is stopped, recorded as interrupted, and its span
    is still to be handled at the next start; the watcher returns 0. A run that fails is recorded and the
    watcher carries on."""
    import threading  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx.pipelines import watcher as watcher_lib  # pylint: disable=g-import-not-at-top

    data_root = tmp_path / "spans"
    for split in ("train", "eval"):
        (data_root / "span-1" / split).mkdir(parents=True)
        (data_root / "span-1" / split / "a.tfrecord").write_bytes(b"x")
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(f"data: {{root: {data_root}, train_pattern: 'span-{{SPAN}}/train/*', "
                           f"eval_pattern: 'span-{{SPAN}}/eval/*', label_map_path: {tmp_path / 'lm.json'}}}\n"
                           f"pipeline_root: {tmp_path / 'root'}\n")
    started = tmp_path / "started"
    watcher = watcher_lib.Watcher(str(config_file), poll_seconds=0.2, settle_seconds=0, log=lambda m: None)
    watcher.run_command = [sys.executable, "-c",
                           f"import time; open({str(started)!r}, 'w').close(); time.sleep(600)"]
    watcher.report_command = [sys.executable, "-c", "raise SystemExit(3)"]

    def stop_once_started():
        while not started.exists():
            time.sleep(0.05)
        watcher.stop()

    stopper = threading.Thread(target=stop_once_started, daemon=True)
    stopper.start()
    assert watcher.watch() == 0
    state = watcher.read_state()
    assert state["last_span"] is None
    assert [(r["span"], r["status"]) for r in state["runs"]] == [(1, "interrupted")]

    # The next start runs span 1 again; a failing run is recorded (without a report: the report failed too).
    again = watcher_lib.Watcher(str(config_file), poll_seconds=0.2, settle_seconds=0, max_runs=1,
                                log=lambda m: None)
    again.run_command = [sys.executable, "-c", "raise SystemExit(1)"]
    again.report_command = [sys.executable, "-c", "raise SystemExit(3)"]
    assert again.watch() == 1
    state = again.read_state()
    assert state["last_span"] == 1
    assert [(r["span"], r["status"], r["exit_code"], r["report"]) for r in state["runs"]][-1] == (1, "failed", 1, "")
