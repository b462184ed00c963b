"""Version discovery of the local server (maskrcnn_tfx.serving.model_store) on real folders, with the SavedModel loading
replaced by a recorder (the loading itself is covered by test_serving_server.py)."""
import os
import time

import pytest

from maskrcnn_tfx import signature as sig
from maskrcnn_tfx.serving import model_store
from maskrcnn_tfx.serving.model_config import ServedModel, VersionPolicy


class _Loads(list):
    broken: set

    def __init__(self):
        super().__init__()
        self.broken = set()


@pytest.fixture
def loads(monkeypatch):
    """Versions loaded so far; a version listed in ``loads.broken`` fails to load."""
    record = _Loads()

    def fake_load(path, version, *, model_name="", warmup=True):
        record.append(version)
        if version in record.broken:
            raise ValueError(f"cannot read {path}")
        return model_store.LoadedVersion(version, path, None, None, None, model_name)

    monkeypatch.setattr(model_store, "load_version", fake_load)
    return record


def _version(base, name, *, complete=True, age_seconds=600.0):
    folder = os.path.join(base, str(name))
    os.makedirs(os.path.join(folder, "variables"), exist_ok=True)
    files = [os.path.join(folder, "variables", "variables.index")]
    if complete:
        files.append(os.path.join(folder, sig.SAVED_MODEL_FILE))
    stamp = time.time() - age_seconds
    for path in files:
        with open(path, "wb") as f:
            f.write(b"x")
        os.utime(path, (stamp, stamp))
    return folder


def _store(base, policy=VersionPolicy(), labels=None, settle=30.0):
    return model_store.ModelStore(ServedModel("m", str(base), policy, labels or {}), settle_seconds=settle)


def test_only_complete_settled_integer_folders_are_versions(tmp_path, loads):
    _version(tmp_path, 1)
    _version(tmp_path, 2, complete=False)  # being copied: saved_model.pb comes last
    _version(tmp_path, "1700000000.tmp")  # not an integer
    _version(tmp_path, 4, age_seconds=0)  # just written
    store = _store(tmp_path)
    assert store.poll() == [1]
    assert store.pending()
    # Unchanged since the previous look: complete.
    assert store.poll() == [4]
    assert loads == [1, 4]
    assert [s.version for s in store.status()] == [4]


def test_a_version_still_changing_is_not_loaded(tmp_path, loads):
    _version(tmp_path, 1)
    store = _store(tmp_path)
    store.poll()
    for age in (0, 0):  # rewritten between the polls
        _version(tmp_path, 2, age_seconds=age)
        time.sleep(0.01)
        assert store.poll() == [1]
    assert store.poll() == [2]


def test_a_version_that_fails_to_load_is_reported_and_the_old_one_keeps_serving(tmp_path, loads):
    _version(tmp_path, 1)
    store = _store(tmp_path, VersionPolicy("latest", num_versions=2))
    assert store.poll() == [1]
    _version(tmp_path, 2)
    _version(tmp_path, 3)
    loads.broken.add(3)
    assert store.poll() == [2, 1]  # 3 failed: the policy's two highest of the rest
    status = {s.version: s for s in store.status()}
    assert status[3].state == model_store.END and "cannot read" in status[3].error_message
    assert status[2].state == status[1].state == model_store.AVAILABLE
    assert store.poll() == [2, 1] and loads.count(3) == 1  # not retried while its files stay the same
    loads.broken.clear()
    _version(tmp_path, 3, age_seconds=300)  # fixed: new files
    assert store.poll() == [3, 2]
    with pytest.raises(model_store.ServingError, match=r"Specific\(m, 1\)"):
        store.resolve(1)


def test_removed_versions_are_unloaded(tmp_path, loads):
    import shutil

    _version(tmp_path, 1)
    _version(tmp_path, 2)
    store = _store(tmp_path)
    assert store.poll() == [2]
    shutil.rmtree(os.path.join(tmp_path, "2"))
    assert store.poll() == [1]


def test_requests_name_versions_and_labels_as_tf_serving(tmp_path, loads):
    _version(tmp_path, 5)
    _version(tmp_path, 9)
    store = _store(tmp_path, VersionPolicy("all"), {"stable": 5, "gone": 7})
    store.poll()
    assert store.resolve().version == 9
    assert store.resolve(5).version == 5
    assert store.resolve(label="stable").version == 5
    cases = [
        (lambda: store.resolve(label="canary"), "INVALID_ARGUMENT", "Unrecognized servable version label: canary"),
        (lambda: store.resolve(label="gone"), "NOT_FOUND", "Servable not found for request: Specific(m, 7)"),
        (lambda: store.resolve(3), "NOT_FOUND", "Servable not found for request: Specific(m, 3)"),
        (lambda: store.status(3), "NOT_FOUND", "Could not find version 3 of model m"),
    ]
    for call, code, message in cases:
        with pytest.raises(model_store.ServingError) as raised:
            call()
        assert (raised.value.code, raised.value.message) == (code, message)


def test_a_missing_base_path_serves_nothing_until_it_appears(tmp_path, loads):
    store = _store(tmp_path / "not_yet")
    assert store.poll() == []
    with pytest.raises(model_store.ServingError, match=r"Servable not found for request: Latest\(m\)"):
        store.resolve()
    with pytest.raises(model_store.ServingError, match="Could not find any versions of model m"):
        store.status()
    _version(tmp_path / "not_yet", 1)
    assert store.poll() == [1]
