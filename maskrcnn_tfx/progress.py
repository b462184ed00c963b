"""Progress of long steps (training), published to whoever shows it, and written to the log every N steps.

The training loop runs :func:`watch_steps` around Model Garden's loop: a thread reads the global step twice a
second and publishes a :class:`Progress` (step/total, steps per second, loss, time left) to the subscribers
(``maskrcnn-tfx run`` draws it as one updating terminal line, see :mod:`maskrcnn_tfx.pipelines.run_output`); every
``log_every`` steps it also logs a line to the ``maskrcnn_tfx.progress`` logger, so a run without a terminal
(Kubeflow, a CI log, the run's log file) shows how far training got.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from typing import Callable, Iterator, List, Optional, Tuple

logger = logging.getLogger("maskrcnn_tfx.progress")

# Steps per second are measured over this many seconds of recent samples.
_RATE_WINDOW_SECONDS = 30.0


def format_duration(seconds: float) -> str:
    """``42 s``, ``3m 05s``, ``1h 02m``: short and readable at a glance."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


@dataclasses.dataclass
class Progress:
    """Where a long step is: ``step`` of ``total`` (``phase`` says what happens after the last step)."""

    task: str
    step: int
    total: int
    steps_per_second: Optional[float] = None
    loss: Optional[float] = None
    seconds_left: Optional[float] = None
    phase: str = "training"
    elapsed: float = 0.0

    def describe(self) -> str:
        parts = [f"step {self.step}/{self.total}"]
        if self.steps_per_second:
            parts.append(f"{self.steps_per_second:.2f} steps/s")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.phase == "training":
            if self.seconds_left is not None:
                parts.append(f"{format_duration(self.seconds_left)} left")
            elif self.step == 0 or not self.steps_per_second:
                parts.append("building the model")
        else:
            parts.append(self.phase)
        return ", ".join(parts)


_subscribers: List[Callable[[Progress], None]] = []
_lock = threading.Lock()


@contextlib.contextmanager
def subscribe(callback: Callable[[Progress], None]) -> Iterator[None]:
    """Calls ``callback`` with every :class:`Progress` published while the context is open."""
    with _lock:
        _subscribers.append(callback)
    try:
        yield
    finally:
        with _lock:
            _subscribers.remove(callback)


def publish(progress: Progress) -> None:
    with _lock:
        subscribers = list(_subscribers)
    for callback in subscribers:
        try:
            callback(progress)
        except Exception:  # pylint: disable=broad-except
            # Showing progress must never stop the work it shows.
            logger.debug("a progress subscriber failed", exc_info=True)


def log_interval(total: int, lines: int = 10) -> int:
    """Steps between two progress lines so that a run logs about ``lines`` of them: a round number."""
    raw = max(1, total // max(1, lines))
    for nice in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000):
        if raw <= nice:
            return nice
    return raw


class _StepWatch:
    def __init__(self, task: str, read_step: Callable[[], int], total: int, loss: Callable[[], Optional[float]],
                 after: str, log_every: int, interval: float):
        self._task, self._read_step, self._total, self._loss = task, read_step, total, loss
        self._after, self._log_every, self._interval = after, log_every, interval
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._samples: List[Tuple[float, int]] = []  # (time, step) at each step change seen
        self._first_step: Optional[int] = None
        self._last_rate: Optional[float] = None
        self._last_logged = -1
        self._thread = threading.Thread(target=self._run, name=f"{task}-progress", daemon=True)

    def start(self) -> "_StepWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._tick()  # the final state, after the loop returned

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick()

    def _rate(self, now: float, step: int) -> Optional[float]:
        """Steps per second over the recent samples, counted from the first step change on (the time before it
        is building and tracing the model, not training); None until two changes were seen."""
        if self._first_step is None:
            self._first_step = step
            return None
        if step == self._first_step:
            return None
        if not self._samples or self._samples[-1][1] != step:
            self._samples.append((now, step))
            # Keep the window (and the sample just before it) only.
            while len(self._samples) > 2 and now - self._samples[1][0] > _RATE_WINDOW_SECONDS:
                self._samples.pop(0)
        if len(self._samples) < 2:
            return self._last_rate
        (t0, s0), (t1, s1) = self._samples[0], self._samples[-1]
        if t1 > t0 and s1 > s0:
            self._last_rate = (s1 - s0) / (t1 - t0)
        return self._last_rate

    def _tick(self) -> None:
        try:
            step = int(self._read_step())
        except Exception:  # pylint: disable=broad-except
            return  # the counter is not readable (yet or any more)
        now = time.monotonic()
        rate = self._rate(now, step)
        done = step >= self._total
        left = (self._total - step) / rate if rate and not done else None
        progress = Progress(task=self._task, step=step, total=self._total, steps_per_second=rate,
                            loss=self._loss(), seconds_left=left, phase=self._after if done else "training",
                            elapsed=now - self._start)
        publish(progress)
        if step // self._log_every > self._last_logged // self._log_every or (done and self._last_logged < step):
            self._last_logged = step
            logger.info("%s: %s", self._task, progress.describe())


@contextlib.contextmanager
def watch_steps(task: str, read_step: Callable[[], int], total: int, *,
                loss: Callable[[], Optional[float]] = lambda: None, after: str = "finishing",
                log_every: Optional[int] = None, interval: float = 0.5, enabled: bool = True) -> Iterator[None]:
    """Publishes ``task``'s progress while the context runs: ``read_step()`` (e.g. a global step variable,
    read from another thread) out of ``total``; ``loss()`` the latest loss; ``after`` what happens once the
    last step is done (e.g. "evaluating")."""
    if not enabled or total <= 0:
        yield
        return
    watch = _StepWatch(task, read_step, total, loss, after, log_every or log_interval(total), interval).start()
    try:
        yield
    finally:
        watch.stop()
