"""The slow trainer tests' training subprocesses, started together so that they share the machine.

tests/test_trainer_resume.py (a run killed with SIGKILL and started again) and
tests/test_trainer_distributed.py (two multi-worker processes) need four training processes. Each spends most
of its time building and tracing graphs in one Python thread, so one after the other they leave a core idle;
started together they take about half the wall time. Whichever of the two modules runs first starts the
processes of every one of them selected in this pytest session; the tests then wait for their own.
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional

import portpicker

import _trainer_helpers as helpers

RESUME = "test_trainer_resume"
MULTI_WORKER = "test_trainer_distributed"

# Long enough never to finish before the kill.
LONG_RUN_STEPS = 10000
MULTI_WORKER_STEPS = 2
TIMEOUT = 1200
# Several processes share the machine: one intra-op thread each avoids oversubscribing it (the runs are
# dominated by single-threaded graph building anyway).
_THREADS = {"TF_NUM_INTRAOP_THREADS": "1"}

_started: Dict[str, Any] = {}
_processes: List[subprocess.Popen] = []


@dataclasses.dataclass
class Run:
    """One training subprocess (tests/_train_worker.py)."""

    process: subprocess.Popen
    spec: Dict[str, Any]
    log: str

    def result(self, timeout: float = TIMEOUT) -> Dict[str, Any]:
        helpers.wait_worker(self.process, self.log, timeout)
        return helpers.read_json(self.spec["result"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _start(spec: Dict[str, Any], root: str, name: str, env: Optional[Dict[str, str]] = None) -> Run:
    log = os.path.join(root, f"{name}.log")
    process = helpers.start_worker(spec, os.path.join(root, f"{name}_spec.json"), log, {**_THREADS, **(env or {})})
    _processes.append(process)
    return Run(process, spec, log)


class KilledAndResumed:
    """A run killed with SIGKILL as soon as it has a checkpoint, then started again on the same model dir.

    The restart trains two steps more than the checkpoint holds, with MirroredStrategy over two logical CPU
    devices (checkpoints do not depend on the strategy). A watcher thread does the kill and the restart, so
    the first run does not keep the CPU busy past its checkpoint while the tests wait for something else.
    """

    def __init__(self, root: str, data: helpers.ShapesData):
        self.root = root
        self.data = data
        self.model_dir = os.path.join(root, "model_run")
        self.first = _start({"config": helpers.quick_overrides(train_steps=LONG_RUN_STEPS),
                             "label_map": data.label_map, "train_files": data.train, "model_dir": self.model_dir,
                             "result": os.path.join(root, "first.json")}, root, "first")
        self.first_returncode: Optional[int] = None
        self.killed_at = 0
        self.first_event_files: List[str] = []
        self.second: Optional[Run] = None
        self._error: Optional[BaseException] = None
        self._restarted = threading.Event()
        threading.Thread(target=self._kill_and_restart, daemon=True).start()

    def _kill_and_restart(self) -> None:
        from maskrcnn_tfx.trainer import train as train_lib  # pylint: disable=g-import-not-at-top

        try:
            deadline = time.monotonic() + TIMEOUT
            while train_lib.latest_step(self.model_dir) == 0:
                if self.first.process.poll() is not None:
                    raise AssertionError(f"training exited ({self.first.process.returncode}) before a checkpoint:"
                                         f"\n{helpers.tail(self.first.log)}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"no checkpoint after {TIMEOUT}s:\n{helpers.tail(self.first.log)}")
                time.sleep(0.5)
            os.kill(self.first.process.pid, signal.SIGKILL)  # A real kill: no handler, no final checkpoint.
            self.first_returncode = self.first.process.wait(timeout=60)
            self.killed_at = train_lib.latest_step(self.model_dir)
            self.first_event_files = sorted(os.listdir(os.path.join(self.model_dir, "train")))
            config = helpers.quick_overrides(train_steps=self.killed_at + 2)
            config["runtime"] = {"strategy": "mirrored", "devices": ["/cpu:0", "/cpu:1"]}
            self.second = _start({"config": config, "label_map": self.data.label_map, "train_files": self.data.train,
                                  "model_dir": self.model_dir,
                                  "result": os.path.join(self.root, "second.json"), "logical_cpus": 2},
                                 self.root, "second")
        except BaseException as e:  # pylint: disable=broad-except  (re-raised in the test's thread)
            self._error = e
        finally:
            self._restarted.set()

    def wait_restarted(self, timeout: float = TIMEOUT) -> Run:
        """The restarted run, once the first one has been killed (raises what went wrong before that)."""
        if not self._restarted.wait(timeout):
            raise AssertionError(f"the first run was not killed within {timeout}s:\n{helpers.tail(self.first.log)}")
        if self._error is not None:
            raise self._error
        assert self.second is not None
        return self.second

    def stop(self) -> None:
        self.first.stop()
        if self.second is not None:
            self.second.stop()


def _start_multi_worker(root: str, data: helpers.ShapesData) -> Dict[str, Run]:
    """Two processes, one replica each, one model dir (worker 0 is the chief)."""
    cluster = {"worker": [f"127.0.0.1:{portpicker.pick_unused_port()}" for _ in range(2)]}
    config = helpers.quick_overrides(train_steps=MULTI_WORKER_STEPS)
    config["runtime"] = {"strategy": "multi_worker_mirrored"}
    runs = {}
    for index in range(2):
        name = f"worker{index}"
        spec = {"config": config, "label_map": data.label_map, "train_files": data.train,
                "model_dir": os.path.join(root, "multi_worker"),
                "result": os.path.join(root, f"{name}.json")}
        env = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        runs[name] = _start(spec, root, name, env)
    return runs


def start_selected(request, tmp_path_factory) -> None:
    """Starts, once per session, the runs of every selected module among test_trainer_resume and
    test_trainer_distributed."""
    selected = {item.module.__name__ for item in request.session.items if item.module is not None}
    wanted = [name for name in (RESUME, MULTI_WORKER) if name in selected and name not in _started]
    if not wanted:
        return
    data = helpers.shapes_data(str(tmp_path_factory.getbasetemp() / "trainer_data"))
    for name in wanted:
        root = str(tmp_path_factory.mktemp(name))
        _started[name] = KilledAndResumed(root, data) if name == RESUME else _start_multi_worker(root, data)


def get(name: str) -> Any:
    return _started[name]


@atexit.register
def _stop_all() -> None:
    # Runs that a module started for another one that then did not run (e.g. pytest -x stopped first).
    for process in _processes:
        if process.poll() is None:
            process.kill()
