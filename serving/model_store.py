"""The versions of one model the local server serves, found under its base path as TF Serving finds them.

A version is an integer folder ``BASE/<version>/`` holding ``saved_model.pb`` (the Pusher writes that file last,
contract 5 of docs/architecture.md). The store polls the base path: a version is *ready* once its
``saved_model.pb`` exists and its files have not changed since the previous poll (or are older than
``settle_seconds``), so a folder that is still being copied is never loaded. The version policy picks which
ready versions to serve (the highest one by default). A new version is loaded completely (and its warm-up
requests replayed) before requests see it; one that fails to load is logged, reported by the status API, and
skipped until its files change, while the versions already loaded keep serving.

Errors carry TF Serving's status codes and wording (:class:`ServingError`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Dict, List, Mapping, Optional, Tuple

from maskrcnn_tfx import label_map as label_map_lib
from maskrcnn_tfx import signature as sig
from maskrcnn_tfx.serving.model_config import ServedModel

log = logging.getLogger(__name__)

# TF Serving's ServableState names (GetModelStatus's ModelVersionStatus.State).
AVAILABLE = "AVAILABLE"
END = "END"


class ServingError(Exception):
    """An error answered to a request: a gRPC status code name and TF Serving's message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def invalid_argument(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str            # the signature's key (e.g. "images")
    dtype: str           # TF's enum name, e.g. "DT_STRING"
    shape: Tuple[int, ...]  # -1 for unknown dimensions; () also for unknown rank


@dataclasses.dataclass
class LoadedVersion:
    """One loaded SavedModel version."""

    version: int
    path: str
    model: object  # the tf.saved_model.load result (kept alive: its signatures need it)
    signature_defs: object  # get_model_metadata_pb2.SignatureDefMap, as saved in saved_model.pb
    label_map: Optional[label_map_lib.LabelMap]
    model_name: str = ""

    def signature(self, name: str):
        """The callable signature ``name`` (TF Serving's wording when it is absent)."""
        try:
            return self.model.signatures[name or sig.SERVING_SIGNATURE]
        except KeyError:
            raise invalid_argument(f"Serving signature name: \"{name}\" not found in signature def") from None

    def inputs(self, signature_name: str) -> Dict[str, TensorInfo]:
        return self._tensor_infos(signature_name, "inputs")

    def outputs(self, signature_name: str) -> Dict[str, TensorInfo]:
        return self._tensor_infos(signature_name, "outputs")

    def _tensor_infos(self, signature_name: str, which: str) -> Dict[str, TensorInfo]:
        from tensorflow.core.framework import types_pb2  # pylint: disable=import-outside-toplevel

        name = signature_name or sig.SERVING_SIGNATURE
        if name not in self.signature_defs.signature_def:
            raise invalid_argument(f"Serving signature name: \"{name}\" not found in signature def")
        infos = {}
        for key, info in getattr(self.signature_defs.signature_def[name], which).items():
            shape = () if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
            infos[key] = TensorInfo(key, types_pb2.DataType.Name(info.dtype), shape)
        return infos


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


def read_signature_defs(saved_model_dir: str):
    """The SignatureDefs of the serving MetaGraph, as TF Serving's GetModelMetadata returns them."""
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import get_model_metadata_pb2  # pylint: disable=import-outside-toplevel

    with open(os.path.join(saved_model_dir, sig.SAVED_MODEL_FILE), "rb") as f:
        saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    serving = [m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags]
    if not serving:
        raise ValueError(f"{saved_model_dir}: no MetaGraph tagged 'serve'")
    defs = get_model_metadata_pb2.SignatureDefMap()
    for key, value in serving[0].signature_def.items():
        # The loader's own "__saved_model_init_op" is not a signature a client can call.
        if not key.startswith("__"):
            defs.signature_def[key].CopyFrom(value)
    return defs


def replay_warmup_requests(loaded: LoadedVersion) -> int:
    """Runs the SavedModel's TF Serving warm-up requests (``assets.extra/``), as TF Serving does at load."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=import-outside-toplevel

    path = os.path.join(loaded.path, sig.WARMUP_FILE)
    if not os.path.isfile(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path):
        log_entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log_entry.WhichOneof("log_type") != "predict_log":
            continue
        request = log_entry.predict_log.request
        function = loaded.signature(request.model_spec.signature_name)
        function(**{key: tf.constant(tf.make_ndarray(value)) for key, value in request.inputs.items()})
        count += 1
    return count


def load_version(path: str, version: int, *, model_name: str = "", warmup: bool = True) -> LoadedVersion:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    signature_defs = read_signature_defs(path)
    model = tf.saved_model.load(path, tags=["serve"])
    label_file = os.path.join(path, sig.LABEL_MAP_ASSET)
    label_map = label_map_lib.LabelMap.load(label_file) if os.path.isfile(label_file) else None
    loaded = LoadedVersion(version, path, model, signature_defs, label_map, model_name)
    if warmup:
        replay_warmup_requests(loaded)
    return loaded


def _fingerprint(version_dir: str) -> Tuple[Tuple[str, int, int], ...]:
    """(relative path, size, mtime) of every file: changes while a copy is in progress."""
    entries = []
    for root, _, files in os.walk(version_dir):
        for name in files:
            full = os.path.join(root, name)
            try:
                stat = os.stat(full)
            except FileNotFoundError:
                continue
            entries.append((os.path.relpath(full, version_dir), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


class ModelStore:
    """Discovers, loads and hands out the served versions of one model (thread-safe)."""

    def __init__(self, model: ServedModel, *, settle_seconds: float = 2.0, warmup: bool = True):
        self.config = model
        self._settle_seconds = settle_seconds
        self._warmup = warmup
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._loaded: Dict[int, LoadedVersion] = {}
        self._failed: Dict[int, Tuple[tuple, str]] = {}  # version -> (fingerprint that failed, message)
        self._seen: Dict[int, tuple] = {}  # version -> fingerprint at the previous poll
        self._base_missing = False

    @property
    def name(self) -> str:
        return self.config.name

    def _ready_versions(self) -> Dict[int, Tuple[str, tuple]]:
        """version -> (path, fingerprint) of the complete, unchanging version folders."""
        base = self.config.base_path
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            if not self._base_missing:  # said once, not at every poll
                log.warning("model %s: base path %s does not exist (yet)", self.name, base)
            self._base_missing = True
            self._seen = {}
            return {}
        self._base_missing = False
        ready, seen = {}, {}
        now = time.time()
        for name in names:
            path = os.path.join(base, name)
            if not name.isdigit() or not os.path.isdir(path):
                continue  # TF Serving too ignores what is not an integer folder (e.g. a Pusher's temp dir).
            version = int(name)
            if not os.path.isfile(os.path.join(path, sig.SAVED_MODEL_FILE)):
                continue
            fingerprint = _fingerprint(path)
            seen[version] = fingerprint
            newest = max((mtime for _, _, mtime in fingerprint), default=0) / 1e9
            if self._seen.get(version) == fingerprint or now - newest >= self._settle_seconds:
                ready[version] = (path, fingerprint)
        self._seen = seen
        return ready

    def poll(self) -> List[int]:
        """Looks at the base path once, loading and unloading versions; returns the versions now served."""
        with self._poll_lock:
            ready = self._ready_versions()
            # Forget the failures of folders that were removed.
            self._failed = {v: failure for v, failure in self._failed.items() if v in self._seen}
            newly_loaded: Dict[int, LoadedVersion] = {}
            # A version that fails to load drops out and the policy picks again among the others (with
            # "latest 2", versions 4 (broken), 3 and 2 on disk serve 3 and 2).
            while True:
                candidates = [v for v, (_, fp) in ready.items() if self._failed.get(v, (None,))[0] != fp]
                wanted = self.config.version_policy.select(candidates)
                to_load = [v for v in wanted if v not in self._loaded and v not in newly_loaded]
                if not to_load:
                    break
                for version in to_load:
                    self._load(version, *ready[version], into=newly_loaded)
            keep = {v: self._loaded.get(v) or newly_loaded[v] for v in wanted}
            with self._lock:
                unloaded = sorted(set(self._loaded) - set(keep))
                self._loaded = keep
            for version in unloaded:
                log.info("model %s: unloaded version %d", self.name, version)
            return sorted(keep, reverse=True)

    def _load(self, version: int, path: str, fingerprint: tuple, *, into: Dict[int, LoadedVersion]) -> None:
        start = time.monotonic()
        try:
            into[version] = load_version(path, version, model_name=self.name, warmup=self._warmup)
        except Exception as e:  # pylint: disable=broad-except  (any failure: keep serving the others)
            message = f"{type(e).__name__}: {e}"
            log.error("model %s: version %d at %s failed to load; still serving %s. %s", self.name, version,
                      path, sorted(self._loaded) or "nothing", message)
            self._failed[version] = (fingerprint, message)
            return
        self._failed.pop(version, None)
        log.info("model %s: loaded version %d from %s in %.1f s", self.name, version, path,
                 time.monotonic() - start)

    def pending(self) -> bool:
        """Whether a complete version folder was seen that is neither served nor failed (it may be settling)."""
        with self._lock:
            loaded = set(self._loaded)
        return any(v not in loaded and v not in self._failed for v in self._seen)

    def versions(self) -> List[int]:
        with self._lock:
            return sorted(self._loaded, reverse=True)

    def resolve(self, version: Optional[int] = None, label: Optional[str] = None) -> LoadedVersion:
        """The loaded version a request names: the highest, a number, or a label (TF Serving's errors)."""
        if label:
            labels: Mapping[str, int] = self.config.version_labels
            if label not in labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = labels[label]
        with self._lock:
            if version is None:
                if not self._loaded:
                    raise not_found(f"Servable not found for request: Latest({self.name})")
                return self._loaded[max(self._loaded)]
            if version not in self._loaded:
                raise not_found(f"Servable not found for request: Specific({self.name}, {version})")
            return self._loaded[version]

    def status(self, version: Optional[int] = None, label: Optional[str] = None) -> List[VersionStatus]:
        """GetModelStatus: the loaded versions (AVAILABLE) and the failed ones (END with their error)."""
        if label:
            if label not in self.config.version_labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = self.config.version_labels[label]
        with self._lock:
            statuses = {v: VersionStatus(v, AVAILABLE) for v in self._loaded}
        for v, (_, message) in list(self._failed.items()):
            statuses.setdefault(v, VersionStatus(v, END, "UNKNOWN", message))
        if version is not None:
            if version not in statuses:
                raise not_found(f"Could not find version {version} of model {self.name}")
            return [statuses[version]]
        if not statuses:
            raise not_found(f"Could not find any versions of model {self.name}")
        return [statuses[v] for v in sorted(statuses, reverse=True)]


class ModelRegistry:
    """The served models by name, and the thread that keeps polling their base paths."""

    def __init__(self, models: List[ServedModel], *, poll_seconds: float = 1.0, settle_seconds: float = 2.0,
                 warmup: bool = True):
        if poll_seconds <= 0:
            raise ValueError(f"the poll interval must be > 0 seconds (got {poll_seconds})")
        self.stores = {m.name: ModelStore(m, settle_seconds=settle_seconds, warmup=warmup) for m in models}
        self._settle_seconds = settle_seconds
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def store(self, name: str, version: Optional[int] = None) -> ModelStore:
        try:
            return self.stores[name]
        except KeyError:
            if version is None:
                raise not_found(f"Servable not found for request: Latest({name})") from None
            raise not_found(f"Servable not found for request: Specific({name}, {version})") from None

    def status_store(self, name: str) -> ModelStore:
        try:
            return self.stores[name]
        except KeyError:
            raise not_found(f"Could not find any versions of model {name}") from None

    def poll_all(self) -> None:
        for store in self.stores.values():
            store.poll()

    def start(self) -> None:
        """Polls now (so the server starts with its models loaded), then in the background."""
        self.poll_all()
        # A version copied just before the start is loaded once its files have settled, not a poll later.
        deadline = time.monotonic() + self._settle_seconds + 1.0
        while any(s.pending() and not s.versions() for s in self.stores.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
            self.poll_all()
        self._thread = threading.Thread(target=self._run, name="model-version-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll_all()
            except Exception:  # pylint: disable=broad-except  (the poller must outlive a bad poll)
                log.exception("polling the model base paths failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
