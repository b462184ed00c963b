"""A training process killed with SIGKILL and started again continues from its last checkpoint.

The restart also changes the hardware: the run is killed on one device and resumed with MirroredStrategy over
two logical CPU devices (checkpoints do not depend on the strategy), which is how a preempted job comes back
on another machine, and doubles as the test that MirroredStrategy trains. The processes are started by
tests/_trainer_runs.py, together with those of tests/test_trainer_distributed.py.
"""
import os
import signal

import pytest

import _trainer_helpers as helpers
import _trainer_runs as runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def killed_and_resumed(request, tmp_path_factory):
    runs.start_selected(request, tmp_path_factory)
    run = runs.get(runs.RESUME)
    yield run
    run.stop()


def test_killed_run_continues_from_the_last_checkpoint_on_two_mirrored_replicas(killed_and_resumed):
    run = killed_and_resumed
    second = run.wait_restarted()
    assert run.first_returncode == -signal.SIGKILL
    assert 2 <= run.killed_at < runs.LONG_RUN_STEPS
    assert not os.path.exists(run.first.spec["result"])  # The first run did not get to its end.

    result = second.result()
    assert result["strategy"] == "MirroredStrategy" and result["num_replicas"] == 2
    assert result["global_step"] == run.killed_at + 2
    loss = result["train_metrics"]["total_loss"]
    assert loss == loss and 0 < loss < 100  # Finite.
    log = open(second.log, errors="replace").read()
    assert f"restored from checkpoint: {os.path.join(run.model_dir, f'ckpt-{run.killed_at}')}" in log
    assert helpers.checkpoint_steps(run.model_dir)[-1] == run.killed_at + 2
    # The restarted process trained only the two missing steps: its summaries start after the checkpoint
    # (a run restarted from step 0 would have written step 2 again).
    new_events = set(os.listdir(os.path.join(run.model_dir, "train"))) - set(run.first_event_files)
    assert len(new_events) == 1
    scalars = helpers.read_scalars_of(os.path.join(run.model_dir, "train", new_events.pop()))
    assert [step for step, _ in scalars["total_loss"]] == [run.killed_at + 2]
