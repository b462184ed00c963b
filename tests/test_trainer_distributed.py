"""Multi-worker training: MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1 that must end
with identical weights.

Each worker is a subprocess (collective ops must be set up before TensorFlow starts), started by
tests/_trainer_runs.py together with those of tests/test_trainer_resume.py, whose restarted run also covers
MirroredStrategy over two logical CPU devices.
"""
import os

import pytest

import _trainer_helpers as helpers
import _trainer_runs as runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workers(request, tmp_path_factory):
    runs.start_selected(request, tmp_path_factory)
    started = runs.get(runs.MULTI_WORKER)
    yield started
    for run in started.values():
        run.stop()


def test_multi_worker_mirrored_workers_end_with_identical_weights(workers):
    chief, other = workers["worker0"].result(), workers["worker1"].result()
    for result in (chief, other):
        assert result["num_replicas"] == 2  # One replica per worker, in sync.
        assert result["global_step"] == runs.MULTI_WORKER_STEPS
    # Each worker reads its own shard of the data; only synchronized gradients keep the weights equal.
    assert chief["weights_sha256"] == other["weights_sha256"]
    assert chief["train_metrics"]["total_loss"] == pytest.approx(other["train_metrics"]["total_loss"])
    # Only the chief writes to the shared model dir: one checkpoint series, one event file.
    model_dir = workers["worker0"].spec["model_dir"]
    assert helpers.checkpoint_steps(model_dir) == [runs.MULTI_WORKER_STEPS]
    assert len(os.listdir(os.path.join(model_dir, "train"))) == 1
