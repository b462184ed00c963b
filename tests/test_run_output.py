"""The run's console and log file (pipelines/run_output.py) and the training progress (maskrcnn_tfx/progress.py).

Fast: TFX's own log records and a step counter stand in for a pipeline run (the session's first pipeline run,
through ``maskrcnn-tfx run``, is checked in tests/test_pipeline_local.py).
"""
import io
import logging
import os
import re
import sys
import threading
import time
import warnings

from absl import logging as absl_logging

from maskrcnn_tfx import progress
from maskrcnn_tfx.pipelines import run_output

IDS = ["ImportExampleGen", "StatisticsGen", "Trainer", "Pusher"]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _node(component_id, cached=False, runner_message="Component %s is running."):
    absl_logging.info(runner_message, component_id)
    if cached:
        absl_logging.info("A cached execution %d is used.", 7)
    else:
        absl_logging.info("Going to run a new execution %d", 7)
    absl_logging.info(runner_message.replace("running", "finished"), component_id)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_a_line_per_component_and_every_detail_in_the_log(tmp_path):
    stream = io.StringIO()
    log_path = str(tmp_path / "logs" / "run.log")
    with run_output.RunOutput(IDS, log_path, stream=stream) as out:
        _node("ImportExampleGen", cached=True)
        # What TensorFlow's SavedModel writer does after each save (absl's logger back to its verbosity flag).
        absl_logging.set_verbosity(absl_logging.get_verbosity())
        _node("StatisticsGen", runner_message="node %s is running.")  # BeamDagRunner's words
        logging.getLogger("tensorflow").warning("a TensorFlow warning")
        absl_logging.warning("ArtifactQuery.property_predicate is not supported.")
        warnings.warn("a Python warning", UserWarning)
        print("{'total_loss': 1.0}")  # Orbit prints its metric dictionaries
        os.write(2, b"E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:479] Unable to register\n")
        os.write(1, b"a worker process's stdout\n")
        assert out.saw_components
    printed = stream.getvalue()
    assert re.search(r"^\[1/4\] ImportExampleGen\s+cached", printed, re.M), printed
    assert re.search(r"^\[2/4\] StatisticsGen\s+running$", printed, re.M), printed
    assert re.search(r"^\[2/4\] StatisticsGen\s+complete in \d", printed, re.M), printed
    for noise in ("WARNING", "TensorFlow warning", "Python warning", "total_loss", "cuda", "worker process"):
        assert noise not in printed, (noise, printed)
    log = _read(log_path)
    for detail in ("Component ImportExampleGen is running.", "a TensorFlow warning", "a Python warning",
                   "{'total_loss': 1.0}", "Unable to register", "a worker process's stdout",
                   "StatisticsGen"):
        assert detail in log, detail
    # TFX 1.16 warns this on every input channel although nothing sets a property predicate.
    assert "property_predicate" not in log
    # Everything is back as it was.
    print("after the run")
    assert sys.stdout is not None and "after the run" not in _read(log_path)


def test_a_failing_component_is_named(tmp_path):
    stream = io.StringIO()
    with run_output.RunOutput(IDS, str(tmp_path / "run.log"), stream=stream) as out:
        _node("ImportExampleGen")
        absl_logging.info("Component %s is running.", "StatisticsGen")
        absl_logging.error("Execution %d failed.", 8)
        assert out.fail_running("the statistics are wrong\nsecond line") == "StatisticsGen"
    printed = stream.getvalue()
    assert re.search(r"^\[2/4\] StatisticsGen\s+FAILED after .*: the statistics are wrong$", printed, re.M), printed
    assert "second line" not in printed


def test_verbose_shows_the_log_lines(tmp_path, capsys):
    stream = io.StringIO()
    with run_output.RunOutput(IDS, str(tmp_path / "run.log"), stream=stream, verbose=True):
        logging.getLogger("tensorflow").warning("a TensorFlow warning")
    assert "a TensorFlow warning" in capsys.readouterr().err
    assert "a TensorFlow warning" in _read(str(tmp_path / "run.log"))


def _train(total, *, sleep=0.01):
    step = {"value": 0}
    with progress.watch_steps("Trainer", lambda: step["value"], total, loss=lambda: 0.5, interval=0.005,
                              log_every=10):
        for _ in range(total):
            time.sleep(sleep)
            step["value"] += 1
        time.sleep(0.05)


def test_training_progress_is_one_updating_line_on_a_terminal(tmp_path):
    terminal = _Terminal()
    with run_output.RunOutput(IDS, str(tmp_path / "run.log"), stream=terminal):
        absl_logging.info("Component %s is running.", "Trainer")
        _train(30)
        absl_logging.info("Component %s is finished.", "Trainer")
    shown = terminal.getvalue()
    updates = shown.split("\r\x1b[K")
    assert sum("step " in u for u in updates) >= 3, shown  # updated in place, several times
    assert "\n" not in "".join(u for u in updates if "step " in u and "complete" not in u)
    assert re.search(r"step \d+/30, [\d.]+ steps/s, loss 0.5, .* left", shown), shown
    assert re.search(r"\[3/4\] Trainer\s+complete in .*\(30 steps, [\d.]+ steps/s, loss 0.5\)\n", shown), shown
    log = _read(str(tmp_path / "run.log"))
    assert "Trainer: step 10/30" in log and "Trainer: step 30/30" in log


def test_training_progress_without_a_terminal_is_a_line_every_n_steps(tmp_path):
    stream = io.StringIO()
    with run_output.RunOutput(IDS, str(tmp_path / "run.log"), stream=stream):
        absl_logging.info("Component %s is running.", "Trainer")
        _train(40)
        absl_logging.info("Component %s is finished.", "Trainer")
    steps = [int(m) for m in re.findall(r"Trainer\s+step (\d+)/40", stream.getvalue())]
    # progress.log_interval(40) is 5: a line per 5 steps at most, never one per poll.
    assert 2 <= len(steps) <= 40 // progress.log_interval(40) + 2, stream.getvalue()
    assert "\r" not in stream.getvalue()


def test_rate_and_time_left():
    seen = []
    step = {"value": 0}
    with progress.subscribe(seen.append):
        with progress.watch_steps("Trainer", lambda: step["value"], 100, interval=0.005):
            time.sleep(0.05)  # building the model: no steps yet
            for _ in range(20):
                time.sleep(0.01)
                step["value"] += 1
    assert seen[0].step == 0 and "building the model" in seen[0].describe()
    moving = [p for p in seen if p.steps_per_second]
    assert moving and all(10 < p.steps_per_second < 200 for p in moving), [p.steps_per_second for p in moving]
    assert moving[-1].seconds_left is not None and moving[-1].seconds_left > 0


def test_log_interval_is_a_round_number():
    assert progress.log_interval(500) == 50 and progress.log_interval(3) == 1 and progress.log_interval(40) == 5
    assert progress.log_interval(90000) == 10000


def test_log_path_is_under_the_pipeline_root(tmp_path):
    path = run_output.log_path_for(str(tmp_path))
    assert os.path.dirname(path) == str(tmp_path / "logs") and path.endswith(".log")
    assert run_output.log_path_for("gs://bucket/root").startswith(os.path.join(os.path.sep, "tmp")) or \
        "maskrcnn-tfx-logs" in run_output.log_path_for("gs://bucket/root")


def test_the_progress_thread_stops_with_the_work():
    before = threading.active_count()
    _train(5, sleep=0.001)
    assert threading.active_count() == before


def test_a_long_component_shows_how_long_it_runs_and_the_time_left_by_its_last_run(tmp_path, monkeypatch):
    monkeypatch.setattr(run_output, "_TICK_SECONDS", 0.01)
    monkeypatch.setattr(run_output, "STILL_RUNNING_SECONDS", 0.05)
    terminal, plain = _Terminal(), io.StringIO()
    for stream in (terminal, plain):
        with run_output.RunOutput(IDS, str(tmp_path / "run.log"), stream=stream, previous={"StatisticsGen": 100.0}):
            absl_logging.info("Component %s is running.", "StatisticsGen")
            time.sleep(0.2)
            absl_logging.info("Component %s is finished.", "StatisticsGen")
    assert re.search(r"StatisticsGen\s+running [\d.]+ s, about 1m 40s left \(last time 1m 40s\)", terminal.getvalue())
    assert re.search(r"StatisticsGen\s+still running \([\d.]+ s, about 1m 40s left", plain.getvalue()), plain.getvalue()


def test_previous_durations_without_a_store(tmp_path):
    assert run_output.previous_durations(str(tmp_path / "missing.sqlite"), "p") == {}


def test_captured_output_keeps_what_imports_print(capfd):
    with run_output.captured_output() as text:
        os.write(2, b"Unable to register cuDNN factory\n")
        print("printed")
    assert "Unable to register cuDNN factory" in text[0] and "printed" in text[0]
    assert capfd.readouterr() == ("", "")
