"""Shared test fixtures. Importing maskrcnn_tfx first selects tf_keras before TensorFlow loads."""
import os

import pytest

import maskrcnn_tfx  # noqa: F401
from _pipeline_runs import local_pipeline  # noqa: F401  (session fixture: the local pipeline's runs)

COCO128_ENV = "MASKRCNN_TFX_COCO128"


@pytest.fixture(scope="session")
def coco128_dir():
    """The real COCO sample (128 images), given by $MASKRCNN_TFX_COCO128; tests skip without it."""
    path = os.environ.get(COCO128_ENV, "")
    if not path or not os.path.isfile(os.path.join(path, "annotations", "instances.json")):
        pytest.skip(f"the COCO sample is absent: set {COCO128_ENV} to a folder with annotations/instances.json "
                    f"and images/ (make test sets it when ../shared/datasets/coco128 exists)")
    return path


# ---------------------------------------------------------------------------------------------------------
# Running on two processes (pytest-xdist; `make test` runs `pytest -n 2 --dist loadgroup --no-loadscope-reorder`).
#
# Each test module is one unit of work, kept whole on one worker so that its module fixtures are built once.
# Modules that share something costlier than a module fixture are one unit: those using the session's local
# pipeline runs (built once per worker process), those exporting the serving tests' model (once per process,
# maskrcnn_tfx.testing.models), and the two trainer modules whose training processes start together
# (tests/_trainer_runs.py). The heaviest units go first so that no worker is left alone at the end
# with a long one (the order also holds without xdist; the tests do not depend on it).
#
# pytest-xdist reads the xdist_group marks in its own pytest_collection_modifyitems on each worker, appending
# "@<group>" to every node id, and loadgroup sends the ids sharing a suffix to one worker. Two conditions:
# the marks must be added before that hook runs (tryfirst below: the worker's xdist hook is registered after
# this conftest, so by default it runs first and sees no marks), and pytest must still read the id xdist
# rewrites: pytest 9.2 keeps a structured id that xdist 3.8 does not update (pytest-xdist issue 1386), hence
# pytest 9.1.1 in requirements/constraints.txt. pytest_xdist_node_collection_finished says so if the groups
# are lost again.
LOCAL_PIPELINE_GROUP = "local_pipeline"
SERVING_MODEL_GROUP = "serving_model"
SHARED_GROUPS = {"test_trainer_resume": "trainer_processes", "test_trainer_distributed": "trainer_processes"}
# Measured on 2 cores: about 460, 390, 180 and 210 s for the first four units, 20-120 s for each of the rest
# of the list, under 10 s for any other module.
HEAVIEST_FIRST = [LOCAL_PIPELINE_GROUP, "test_coco128_pipeline", "test_watch", SERVING_MODEL_GROUP,
                  "trainer_processes", "test_trainer_finetune", "test_export", "test_trainer_train", "test_metrics",
                  "test_annotation_validator", "test_preprocessing"]
_UNGROUPED = pytest.StashKey[list]()


def pytest_configure(config):
    # Registered here as well so that the mark is known when pytest-xdist is absent or disabled (-p no:xdist).
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one pytest-xdist worker")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    del config
    from maskrcnn_tfx.testing import models as serving_model  # pylint: disable=import-outside-toplevel

    pipeline_modules = {item.module.__name__ for item in items if "local_pipeline" in item.fixturenames}
    groups = {}
    for item in items:
        module = item.module.__name__
        if module in pipeline_modules:
            group = LOCAL_PIPELINE_GROUP
        elif any(value is serving_model for value in vars(item.module).values()):
            group = SERVING_MODEL_GROUP
        else:
            group = SHARED_GROUPS.get(module, module)
        groups[item.nodeid] = group
        item.add_marker(pytest.mark.xdist_group(group))
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    # A stable sort: within a unit, and among the units not listed, the collection order stays.
    items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """On the controller: every test has a group, so with loadgroup every id a worker sends ends in "@<group>"."""
    if node.config.getvalue("dist") == "loadgroup":
        # As xdist's loadgroup reads a group: after the last "@", unless it is inside a parameter id.
        node.config.stash[_UNGROUPED] = [nodeid for nodeid in ids if nodeid.rfind("@") <= nodeid.rfind("]")]


def pytest_terminal_summary(terminalreporter, config):
    ungrouped = config.stash.get(_UNGROUPED, [])
    if ungrouped:
        terminalreporter.write_sep(
            "!", f"--dist loadgroup ignored the groups of {len(ungrouped)} tests (e.g. {ungrouped[0]}): shared "
                 f"fixtures may have been built on both workers; see the xdist notes in tests/conftest.py", red=True)
