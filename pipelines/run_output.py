"""What ``maskrcnn-tfx run`` shows: a line per component on the terminal, every detail in the run's log file.

:class:`RunOutput` is a context around a pipeline run (local or Beam runner):

- it opens ``PIPELINE_ROOT/logs/run-<time>.log`` and sends everything else there: Python logging (TFX, absl,
  TensorFlow, Beam), Python warnings, whatever is printed (Orbit prints its metric dictionaries), and the file
  descriptors 1 and 2, so TensorFlow's C++ messages and Beam's worker processes (which inherit them) land in
  the log too; with ``verbose`` the log lines also reach the terminal;
- it follows the components from the runners' own log records (TFX's launchers say when a node starts, ends,
  or reuses a cached execution) and prints ``[ 7/12] Trainer   complete in 4m 12s``; on a terminal the
  running component is one line updated in place (with how long it has run, and the Trainer's step/total,
  steps per second, loss and time left from :mod:`maskrcnn_tfx.progress`); otherwise a line every N training
  steps and a "still running" line every minute;
- :meth:`RunOutput.failed_component` names the component that was running when the run failed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence, TextIO

from maskrcnn_tfx import progress as progress_lib
from maskrcnn_tfx.files import is_remote

# The log records by which TFX 1.16's runners and launcher say what a node does (absl logging, Python logger
# "absl"): LocalDagRunner's and BeamDagRunner's, then the launcher's.
_STARTED = ("Component %s is running.", "node %s is running.")
_FINISHED = ("Component %s is finished.", "node %s is finished.")
_CACHED = "A cached execution %d is used."
_EXECUTING = "Going to run a new execution %d"
_FAILED = "Execution %d failed."
_SKIPPED = "Skipping execution for %s"

# TFX 1.16's channel resolver tests a proto sub-message's truth value, which is always true, so it warns on
# every input channel of every run although no pipeline (ours included) sets a property predicate.
_FALSE_WARNINGS = ("ArtifactQuery.property_predicate is not supported.",)

# A run without a terminal says that a long component still runs this often (seconds).
STILL_RUNNING_SECONDS = 60.0
_TICK_SECONDS = 1.0
_LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


class _DropFalseWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _FALSE_WARNINGS


def drop_false_warnings() -> None:
    """Keeps TFX's always-false property predicate warning out of the logs (see ``_FALSE_WARNINGS``)."""
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropFalseWarnings) for f in absl_logger.filters):
        absl_logger.addFilter(_DropFalseWarnings())


def log_path_for(pipeline_root: str, now: Optional[datetime.datetime] = None) -> str:
    """A new log file's path for a run: under the pipeline root, or the temp folder for a remote root."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    folder = (os.path.join(tempfile.gettempdir(), "maskrcnn-tfx-logs") if is_remote(pipeline_root)
              else os.path.join(pipeline_root, "logs"))
    path = os.path.join(folder, f"run-{stamp}.log")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(folder, f"run-{stamp}-{n}.log")
    return path


def previous_durations(metadata_path: str, pipeline_name: str) -> Dict[str, float]:
    """Seconds each component's latest completed execution took, from the metadata store (before a run: the
    estimate of how long it will take again). Empty when the store is absent or unreadable."""
    if is_remote(metadata_path) or not os.path.exists(metadata_path):
        return {}
    try:
        from ml_metadata import metadata_store  # pylint: disable=g-import-not-at-top
        from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top

        connection = metadata_store_pb2.ConnectionConfig()
        connection.sqlite.filename_uri = metadata_path
        connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
        store = metadata_store.MetadataStore(connection)
        prefix = f"{pipeline_name}."
        durations: Dict[str, float] = {}
        for node in store.get_contexts_by_type("node"):
            if not node.name.startswith(prefix):
                continue
            done = [e for e in store.get_executions_by_context(node.id)
                    if e.last_known_state == metadata_store_pb2.Execution.COMPLETE]
            if done:
                latest = max(done, key=lambda e: e.id)
                durations[node.name[len(prefix):]] = max(
                    0.0, (latest.last_update_time_since_epoch - latest.create_time_since_epoch) / 1000.0)
        return durations
    except Exception:  # pylint: disable=broad-except
        logging.getLogger(__name__).debug("no previous durations", exc_info=True)
        return {}


@contextlib.contextmanager
def captured_output() -> Iterator[List[str]]:
    """File descriptors 1 and 2 and sys.stdout/err into a temporary file while the context runs (importing
    TensorFlow prints C++ messages, e.g. its CUDA plugins' registration); the list it yields holds what was
    written once the context ends, for the run's log."""
    text: List[str] = []
    for s in (sys.stdout, sys.stderr):
        if s is not None:  # None: a caller or pythonw dropped the stream
            s.flush()
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as f:
        saved_streams, saved_fds = (sys.stdout, sys.stderr), {}
        for fd in (1, 2):
            try:
                saved_fds[fd] = os.dup(fd)
                os.dup2(f.fileno(), fd)
            except OSError:
                pass
        sys.stdout = sys.stderr = f  # type: ignore[assignment]
        try:
            yield text
        finally:
            f.flush()
            for fd, saved in saved_fds.items():
                os.dup2(saved, fd)
                os.close(saved)
            sys.stdout, sys.stderr = saved_streams
            f.seek(0)
            text.append(f.read())


@dataclasses.dataclass
class _Component:
    index: int
    component_id: str
    state: str = "pending"  # running, complete, cached, skipped, failed
    started: float = 0.0
    ended: float = 0.0
    progress: Optional[progress_lib.Progress] = None
    said_running: float = 0.0  # when a non-terminal run last said it runs


class _ComponentEvents(logging.Handler):
    """Turns the runners' log records into component events for :class:`RunOutput`."""

    def __init__(self, output: "RunOutput"):
        super().__init__(level=logging.INFO)
        self._output = output
        self._by_thread: Dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != "absl" or not isinstance(record.args, tuple) or not record.args:
            return
        component_id = str(record.args[0])
        if record.msg in _STARTED:
            self._by_thread[record.thread] = component_id
            self._output.component_started(component_id)
        elif record.msg in _FINISHED:
            self._by_thread.pop(record.thread, None)
            self._output.component_finished(component_id)
        elif record.msg == _SKIPPED:
            self._output.component_state(component_id, "skipped")
        elif record.thread in self._by_thread:
            state = {_CACHED: "cached", _EXECUTING: "running", _FAILED: "failed"}.get(record.msg)
            if state:
                self._output.component_state(self._by_thread[record.thread], state)


class RunOutput:
    """The terminal and the log file of one pipeline run (see the module docstring).

    Args:
      component_ids: the pipeline's components in order (for ``[i/n]``).
      log_path: the log file (its folder is created).
      verbose: log lines go to the terminal as well, and nothing is redirected.
      stream: where the component lines go (default: ``sys.stdout`` when the run starts).
      previous: seconds each component took last time (:func:`previous_durations`), to say the time left.
      preamble: text for the top of the log (what :func:`captured_output` caught before the run).
    """

    def __init__(self, component_ids: Sequence[str], log_path: str, *, verbose: bool = False,
                 stream: Optional[TextIO] = None, previous: Optional[Dict[str, float]] = None, preamble: str = ""):
        self.log_path = log_path
        self._preamble = preamble  # what was printed before the run (see captured_output), first in the log
        # Seconds each component took last time (see previous_durations): an estimate of the time left.
        self.previous: Dict[str, float] = dict(previous or {})
        self.verbose = verbose
        self._components = {c: _Component(i + 1, c) for i, c in enumerate(component_ids)}
        self._width = len(str(len(self._components)))
        self._name_width = max([len(c) for c in component_ids] + [16])
        self._stream_arg = stream
        self._stream: TextIO = sys.stdout
        self._own_stream = False
        self._entered = 0.0
        self._tty = False
        self._lock = threading.RLock()
        self._live = ""  # the text of the updating line on a terminal ("" when none is shown)
        self._order: List[str] = []  # running components, latest last
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None
        self._saved: Dict[str, object] = {}
        self._subscription = None

    # -- setting up and restoring ------------------------------------------------------------------------
    def __enter__(self) -> "RunOutput":
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        for s in (sys.stdout, sys.stderr):
            if s is not None:
                s.flush()
        self._log = open(self.log_path, "a", buffering=1, encoding="utf-8")  # pylint: disable=consider-using-with
        if self._preamble:
            self._log.write(self._preamble if self._preamble.endswith("\n") else self._preamble + "\n")
        self._stream = self._stream_arg or self._console_stream()
        self._own_stream = self._stream not in (self._stream_arg, sys.stdout)
        self._tty = not self.verbose and _isatty(self._stream)
        self._entered = time.monotonic()
        root = logging.getLogger()
        self._saved.update(root_handlers=list(root.handlers), root_level=root.level,
                           capture=getattr(logging, "_warnings_showwarning", None) is not None)
        file_handler = logging.StreamHandler(self._log)
        file_handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        file_handler.addFilter(_DropFalseWarnings())
        handlers: List[logging.Handler] = [file_handler, _ComponentEvents(self)]
        if self.verbose:
            terminal = logging.StreamHandler(sys.stderr)
            terminal.setFormatter(logging.Formatter(_LOG_FORMAT))
            terminal.addFilter(_DropFalseWarnings())
            handlers.append(terminal)
        root.handlers = handlers
        root.setLevel(logging.INFO)
        # TensorFlow's and absl's loggers may carry their own stderr handlers: the root's handlers decide.
        for name in ("tensorflow", "absl"):
            lg = logging.getLogger(name)
            self._saved[f"logger:{name}"] = (list(lg.handlers), lg.propagate, lg.level)
            lg.handlers, lg.propagate = [], True
        # The components are followed through absl's INFO records (see _ComponentEvents). absl's verbosity flag
        # is what counts: TensorFlow's SavedModel writer sets the absl logger back to it after every save.
        from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

        self._saved["absl_verbosity"] = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.INFO)
        logging.captureWarnings(True)
        drop_false_warnings()
        if not self.verbose:
            self._redirect()
        self._subscription = progress_lib.subscribe(self._on_progress)
        self._subscription.__enter__()  # pylint: disable=unnecessary-dunder-call
        self._ticker = threading.Thread(target=self._tick, name="run-output", daemon=True)
        self._ticker.start()
        logging.getLogger(__name__).info("Log of a pipeline run: %s", self.log_path)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._ticker:
            self._ticker.join()
        if self._subscription is not None:
            self._subscription.__exit__(None, None, None)
        with self._lock:
            self._clear_live()
        self._restore()
        root = logging.getLogger()
        root.handlers = self._saved["root_handlers"]  # type: ignore[assignment]
        root.setLevel(self._saved["root_level"])  # type: ignore[arg-type]
        for name in ("tensorflow", "absl"):
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate, level = self._saved[f"logger:{name}"]  # type: ignore[misc]
            lg.setLevel(level)
        if not self._saved["capture"]:
            logging.captureWarnings(False)
        from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

        absl_logging.set_verbosity(self._saved["absl_verbosity"])
        self._log.close()
        self._stream.flush()
        if self._own_stream:
            self._stream.close()
            self._stream = sys.stdout

    def _console_stream(self) -> TextIO:
        """The terminal: a copy of file descriptor 1 when sys.stdout is it (fd 1 is redirected to the log)."""
        try:
            is_fd1 = sys.stdout.fileno() == 1
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            is_fd1 = False
        if is_fd1 and not self.verbose:
            return os.fdopen(os.dup(1), "w", buffering=1, encoding=sys.stdout.encoding or "utf-8",
                             errors="replace")
        return sys.stdout

    def _redirect(self) -> None:
        """Descriptors 1 and 2 (C++ logging, worker processes) and sys.stdout/err (print, tqdm) to the log."""
        self._saved.update(sys_stdout=sys.stdout, sys_stderr=sys.stderr, fds={})
        for fd in (1, 2):
            try:
                self._saved["fds"][fd] = os.dup(fd)  # type: ignore[index]
                os.dup2(self._log.fileno(), fd)
            except OSError:
                pass
        sys.stdout = sys.stderr = self._log  # type: ignore[assignment]

    def _restore(self) -> None:
        if "sys_stdout" not in self._saved:
            return
        self._log.flush()
        for fd, saved in self._saved["fds"].items():  # type: ignore[attr-defined]
            os.dup2(saved, fd)
            os.close(saved)
        sys.stdout = self._saved.pop("sys_stdout")  # type: ignore[assignment]
        sys.stderr = self._saved["sys_stderr"]  # type: ignore[assignment]

    # -- events ------------------------------------------------------------------------------------------
    def _component(self, component_id: str) -> _Component:
        if component_id not in self._components:  # a node the caller did not list: numbered after the rest
            self._components[component_id] = _Component(len(self._components) + 1, component_id)
        return self._components[component_id]

    def component_started(self, component_id: str) -> None:
        with self._lock:
            c = self._component(component_id)
            c.state, c.started, c.said_running = "running", time.monotonic(), time.monotonic()
            self._order.append(component_id)
            if self._tty:
                self._show_live()
            else:
                self._print(f"{self._prefix(c)} running")

    def component_state(self, component_id: str, state: str) -> None:
        """What a started component turned out to do: cached, skipped, failed (running: it executes)."""
        with self._lock:
            c = self._component(component_id)
            if state == "failed" or c.state == "running":
                c.state = state

    def component_finished(self, component_id: str) -> None:
        with self._lock:
            c = self._component(component_id)
            c.ended = time.monotonic()
            if c.state == "running":
                c.state = "complete"
            if component_id in self._order:
                self._order.remove(component_id)
            self._print(self._final_line(c))

    def fail_running(self, reason: str) -> Optional[str]:
        """Marks the component that was running as failed with ``reason`` and prints its line; returns its id."""
        with self._lock:
            running = [self._components[c] for c in self._order] or [
                c for c in self._components.values() if c.state == "failed" and not c.ended]
            if not running:
                return None
            c = running[-1]
            c.state, c.ended = "failed", time.monotonic()
            if c.component_id in self._order:
                self._order.remove(c.component_id)
            self._print(f"{self._prefix(c)} FAILED after {progress_lib.format_duration(c.ended - c.started)}: "
                        f"{_first_line(reason)}")
            return c.component_id

    @property
    def saw_components(self) -> bool:
        return any(c.state != "pending" for c in self._components.values())

    @property
    def shown_components(self) -> List[str]:
        """The components whose final line (complete, cached, failed...) was printed."""
        return [c.component_id for c in self._components.values() if c.ended]

    def _on_progress(self, progress: progress_lib.Progress) -> None:
        with self._lock:
            c = self._components.get(progress.task)
            if c is None or c.state != "running":
                return
            previous, c.progress = c.progress, progress
            if self._tty:
                self._show_live()
            elif previous is None or progress.step // progress_lib.log_interval(progress.total) > \
                    previous.step // progress_lib.log_interval(progress.total) or \
                    (progress.phase != previous.phase):
                self._print(f"{self._prefix(c)} {progress.describe()}")
                c.said_running = time.monotonic()

    def _tick(self) -> None:
        while not self._stop.wait(_TICK_SECONDS):
            with self._lock:
                if self._tty:
                    self._show_live()
                    continue
                now = time.monotonic()
                for component_id in self._order:
                    c = self._components[component_id]
                    if now - c.said_running >= STILL_RUNNING_SECONDS:
                        c.said_running = now
                        self._print(f"{self._prefix(c)} still running "
                                    f"({progress_lib.format_duration(now - c.started)}{self._estimate(c)})")

    # -- drawing -----------------------------------------------------------------------------------------
    def _prefix(self, c: _Component) -> str:
        return f"[{c.index:>{self._width}}/{len(self._components)}] {c.component_id:<{self._name_width}}"

    def _final_line(self, c: _Component) -> str:
        took = progress_lib.format_duration(c.ended - c.started)
        if c.state == "cached":
            return f"{self._prefix(c)} cached ({took})"
        if c.state == "skipped":
            return f"{self._prefix(c)} skipped (its inputs are not there)"
        if c.state == "failed":
            return f"{self._prefix(c)} FAILED after {took}"
        detail = ""
        if c.progress is not None:
            p = c.progress
            detail = f" ({p.step} steps" + (f", {p.steps_per_second:.2f} steps/s" if p.steps_per_second else "") + \
                (f", loss {p.loss:.4g}" if p.loss is not None else "") + ")"
        return f"{self._prefix(c)} complete in {took}{detail}"

    def _live_text(self) -> str:
        if not self._order:
            if self.saw_components:
                return ""
            # Before the first component: importing TensorFlow and TFX and compiling the pipeline take a while.
            return f"starting ({progress_lib.format_duration(time.monotonic() - self._entered)})"
        c = self._components[self._order[-1]]
        elapsed = progress_lib.format_duration(time.monotonic() - c.started)
        if c.progress is not None:
            return f"{self._prefix(c)} {c.progress.describe()} ({elapsed})"
        others = f" (+{len(self._order) - 1} more)" if len(self._order) > 1 else ""
        return f"{self._prefix(c)} running {elapsed}{self._estimate(c)}{others}"

    def _estimate(self, c: _Component) -> str:
        """How long the component took last time, and what that leaves."""
        before = self.previous.get(c.component_id)
        if not before or before < 5:
            return ""
        left = before - (time.monotonic() - c.started)
        took = progress_lib.format_duration(before)
        return f", about {progress_lib.format_duration(left)} left (last time {took})" if left >= 1 else \
            f" (last time {took})"

    def _show_live(self) -> None:
        text = self._live_text()
        columns = shutil.get_terminal_size((100, 24)).columns
        text = text[:max(10, columns - 1)]
        if text != self._live:
            self._stream.write("\r\x1b[K" + text)
            self._stream.flush()
            self._live = text

    def _clear_live(self) -> None:
        if self._live:
            self._stream.write("\r\x1b[K")
            self._live = ""

    def _print(self, line: str) -> None:
        """A permanent line (above the updating one on a terminal), also written to the log."""
        with self._lock:
            if not self._log.closed:
                self._log.write(line + "\n")
            self._clear_live()
            self._stream.write(line + "\n")
            self._stream.flush()
            if self._tty:
                self._show_live()

    def print(self, line: str = "") -> None:
        self._print(line)

    def set_components(self, component_ids: Sequence[str]) -> None:
        """The pipeline's components in order, once it is built (before it runs)."""
        with self._lock:
            self._components = {c: _Component(i + 1, c) for i, c in enumerate(component_ids)}
            self._width = len(str(len(self._components)))
            self._name_width = max([len(c) for c in component_ids] + [16])


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _first_line(text: str, limit: int = 300) -> str:
    line = (str(text).strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."
