"""Local recurring runs: watch the data root for a new ``{SPAN}`` and run the pipeline on it, one run at a time.

:class:`Watcher` polls the span patterns of the configuration (TFX's own span resolution, the one ExampleGen
applies, so the watcher sees exactly the span a run will take). When a span newer than the last one handled
appears and its files stopped changing (``settle_seconds``), it runs ``maskrcnn-tfx run --config FILE`` in a
child process (ExampleGen takes the latest span, the Evaluator compares the new model with the last blessed
one, the Pusher pushes only a blessed model), then ``maskrcnn-tfx report`` for that run, and waits for the
next span. The configuration file is read again for every run, so edits apply to the next one.

- Never two runs at once: runs are sequential in one watcher, and a lock file beside the metadata store
  (``watch.lock``, an OS lock released when the process ends, even by a crash) keeps a second watcher, or a
  ``--once`` from cron, from starting one while another is going.
- A failed run (bad data stopped by a validator, a crash, an invalid configuration) is reported, its span is
  recorded as handled with its exit code, and the watcher waits for the next span.
- SIGTERM or SIGINT stop it cleanly: a run in progress is stopped (its span is handled again at the next
  start), the state is saved and the process exits 0.

Its state (the last span handled and every run: span, times, exit code, report page) is
``watch_state.json`` beside the metadata store.
"""
from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional, Tuple

from maskrcnn_tfx.files import is_remote
from maskrcnn_tfx import config as config_lib
from maskrcnn_tfx.config import loader
from maskrcnn_tfx.config.schema import SPAN_TOKEN, ConfigError, PipelineConfig

STATE_FILE = "watch_state.json"
LOCK_FILE = "watch.lock"
# A run asked to stop gets this long to exit before it is killed.
STOP_GRACE_SECONDS = 30


class WatcherBusy(RuntimeError):
    """Another watcher (or a ``--once`` run) holds the lock: a run may be in progress."""


@dataclasses.dataclass
class SpanRun:
    span: int
    started: str
    finished: str = ""
    exit_code: Optional[int] = None
    status: str = ""  # complete | failed | interrupted
    report: str = ""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Watcher:
    """Runs the pipeline of ``config_file`` on each new span (see the module docstring)."""

    def __init__(self, config_file: str, *, poll_seconds: float = 300.0, settle_seconds: float = 60.0,
                 report_dir: str = "", gallery_size: Optional[int] = None, max_runs: int = 0,
                 log: Callable[[str], None] = print):
        self.config_file = os.path.abspath(config_file)
        self.poll_seconds = poll_seconds
        self.settle_seconds = settle_seconds
        self.gallery_size = gallery_size
        self.max_runs = max_runs
        self.log = log
        self._stop = threading.Event()
        # The run and report commands (the same program as this one).
        self.run_command = [sys.executable, "-m", "maskrcnn_tfx", "run", "--config", self.config_file]
        self.report_command = [sys.executable, "-m", "maskrcnn_tfx", "report"]
        config = self.load_config()  # a broken configuration stops the watcher before it starts
        self.state_dir = os.path.dirname(config.resolved_metadata_path)
        self.report_dir = os.path.abspath(report_dir) if report_dir else os.path.join(self.state_dir, "report")
        self.state_path = os.path.join(self.state_dir, STATE_FILE)
        self._lock_file = None

    # -- configuration and spans ---------------------------------------------------------------------------

    def load_config(self) -> PipelineConfig:
        # Said first: a cluster configuration would otherwise fail on what its pods can read.
        values = loader.read_yaml(self.config_file)
        runner = values.get("runner", "local")
        if runner not in ("local", "beam"):
            raise ConfigError(f"{self.config_file}: watch runs the pipeline on this machine (runner "
                              f"local or beam), not {runner!r}; Kubeflow and Vertex AI schedule "
                              f"runs themselves (maskrcnn-tfx run --runner kubeflow --schedule ...)")
        # The data need not exist yet: the watcher waits for its spans.
        config = config_lib.from_dict(values, source=self.config_file, check_files=False)
        d = config.data
        patterns = [d.pattern] if d.uses_hash_buckets else [d.train_pattern, d.eval_pattern]
        if not all(SPAN_TOKEN in p for p in patterns):
            raise ConfigError(f"{self.config_file}: watch needs span patterns: data patterns with "
                              f"{SPAN_TOKEN} (e.g. span-{SPAN_TOKEN}/train/*), not {patterns}")
        if is_remote(config.resolved_metadata_path):
            raise ConfigError(f"{self.config_file}: the metadata store must be a local file")
        return config

    @staticmethod
    def latest_span(config: PipelineConfig) -> Optional[Tuple[int, str]]:
        """(span, fingerprint of its files) of the latest span every split has; None when there is none."""
        from tfx.components.example_gen import utils  # pylint: disable=g-import-not-at-top
        from tfx.proto import example_gen_pb2  # pylint: disable=g-import-not-at-top

        d = config.data
        if d.uses_hash_buckets:
            splits = [example_gen_pb2.Input.Split(name="single_split", pattern=d.pattern)]
        else:
            splits = [example_gen_pb2.Input.Split(name="train", pattern=d.train_pattern),
                      example_gen_pb2.Input.Split(name="eval", pattern=d.eval_pattern)]
        try:
            fingerprint, span, _ = utils.calculate_splits_fingerprint_span_and_version(d.root, splits)
        except (ValueError, FileNotFoundError, OSError):
            return None  # no (complete) span yet
        return span, fingerprint

    # -- state -------------------------------------------------------------------------------------------

    def read_state(self) -> dict:
        if not os.path.isfile(self.state_path):
            return {"last_span": None, "runs": []}
        with open(self.state_path, encoding="utf-8") as f:
            return json.load(f)

    def _write_state(self, state: dict) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        tmp = f"{self.state_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, self.state_path)

    def _lock(self) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        self._lock_file = open(os.path.join(self.state_dir, LOCK_FILE), "a+", encoding="utf-8")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise WatcherBusy(f"another watcher holds {os.path.join(self.state_dir, LOCK_FILE)}: a run of this "
                              f"pipeline may be in progress") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()

    def _unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- stopping ------------------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Asks the watcher to stop (a signal handler): it wakes, and a run in progress is stopped."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    # -- the loop ------------------------------------------------------------------------------------------

    def watch(self, *, once: bool = False) -> int:
        """Polls until stopped (or, with ``once``, checks once and runs at most one span).

        Returns the exit code of the command: 0, or 1 when ``once`` ran a span that failed.
        """
        self._lock()
        try:
            return self._loop(once)
        finally:
            self._unlock()

    def _loop(self, once: bool) -> int:
        runs = 0
        code = 0
        self.log(f"watching {self.config_file}: new spans run the pipeline; state in {self.state_path}")
        while not self._stop.is_set():
            try:
                config = self.load_config()
            except ConfigError as e:
                self.log(f"error: {e} (waiting for a fixed configuration)")
                config = None
            found = self.latest_span(config) if config is not None else None
            state = self.read_state()
            last = state.get("last_span")
            if found is not None and (last is None or found[0] > last):
                span, fingerprint = found
                # A span is run once its files stopped changing; kept in the state so that --once from cron,
                # a new process each time, sees it too.
                pending = state.get("pending")
                if not pending or (pending[0], pending[1]) != (span, fingerprint):
                    pending = [span, fingerprint, time.time()]
                    state["pending"] = pending
                    self._write_state(state)
                    if last is not None and span > last + 1:
                        self.log(f"spans {last + 1}..{span - 1} skipped: span {span} is the latest")
                    if self.settle_seconds > 0:
                        self.log(f"span {span} found; it runs once its files stay unchanged for "
                                 f"{self.settle_seconds:g} s")
                if time.time() - pending[2] >= self.settle_seconds:
                    code = self.run_span(config, span)
                    runs += 1
                    if once or (self.max_runs and runs >= self.max_runs):
                        break
                    continue  # look again at once: another span may have landed during the run
                if once:
                    self.log(f"span {span} is still changing; a later check runs it")
                    break
            elif once:
                self.log("no new span" if found is not None else
                         f"no complete span under {config.data.root if config else self.config_file}")
                break
            self._stop.wait(self.poll_seconds)
        if self._stop.is_set():
            self.log("stopped")
            return 0
        return code

    def run_span(self, config: PipelineConfig, span: int) -> int:
        """Runs the pipeline (a child ``maskrcnn-tfx run``), records it and builds its report; the exit code."""
        record = SpanRun(span=span, started=_now())
        self.log(f"span {span}: running the pipeline ({self.config_file})")
        code, _ = self._child_process(self.run_command)
        record.finished = _now()
        record.exit_code = code
        state = self.read_state()
        state.pop("pending", None)
        if self._stop.is_set():
            # Stopped from outside: the span was not handled; the next start runs it again.
            record.status = "interrupted"
            state["runs"].append(dataclasses.asdict(record))
            self._write_state(state)
            self.log(f"span {span}: run interrupted; it runs again at the next start")
            return code
        record.status = "complete" if code == 0 else "failed"
        report = self.report_command + ["--pipeline-root", config.pipeline_root,
                  "--metadata-path", config.resolved_metadata_path, "--pipeline-name", config.pipeline_name,
                  "--output", self.report_dir]
        if self.gallery_size is not None:
            report += ["--gallery-size", str(self.gallery_size)]
        report_code, printed = self._child_process(report, capture=True)
        sys.stdout.write(printed)
        if report_code == 0:
            # `maskrcnn-tfx report` prints "run ID: PAGE" for the run's page, then "report: INDEX".
            pages = [line.split(": ", 1)[1] for line in printed.splitlines() if line.startswith("run ")]
            record.report = pages[-1] if pages else os.path.join(self.report_dir, "index.html")
        else:
            self.log(f"span {span}: the report could not be built (see above)")
        state["last_span"] = span
        state["runs"].append(dataclasses.asdict(record))
        self._write_state(state)
        if code == 0:
            self.log(f"span {span}: run complete; report {record.report or 'none'}")
        else:
            self.log(f"span {span}: run failed (exit code {code}); waiting for the next span; "
                     f"report {record.report or 'none'}")
        return code

    def _child_process(self, argv: List[str], *, capture: bool = False) -> Tuple[int, str]:
        """Runs ``argv`` to its end (stopped early by :meth:`stop`); its exit code and, with ``capture``, its
        standard output (small: the report's page paths)."""
        if self._stop.is_set():
            return -signal.SIGTERM, ""
        sys.stdout.flush()
        # Its own session: a Ctrl-C in the terminal reaches the watcher alone, which then stops the child.
        child = subprocess.Popen(argv, start_new_session=True, text=True,  # pylint: disable=consider-using-with
                                 stdout=subprocess.PIPE if capture else None)
        deadline = None
        while True:
            try:
                out, _ = child.communicate(timeout=1.0)
                return child.returncode, out or ""
            except subprocess.TimeoutExpired:
                if not self._stop.is_set():
                    continue
                if deadline is None:
                    child.terminate()
                    deadline = time.monotonic() + STOP_GRACE_SECONDS
                elif time.monotonic() > deadline:
                    child.kill()
