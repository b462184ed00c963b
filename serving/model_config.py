"""TF Serving's configuration files for the Pusher's base directory: ``models.config`` and batching parameters.

``models.config`` is TF Serving's text-format ``ModelServerConfig`` (``--model_config_file``): one entry per
served model with its name, base path (the folder holding ``<integer version>/saved_model.pb``, as the Pusher
writes it), platform ``tensorflow``, version policy and version labels. It is built with TF Serving's own
proto (``tensorflow_serving.config.model_server_config_pb2``), so what is written is what the server parses;
the local server (``maskrcnn-tfx serve --model-config-file``) reads the same file.

The batching parameters file (``--batching_parameters_file`` with ``--enable_batching``) is the text form of
TF Serving's ``BatchingParameters``. That proto is not part of the tensorflow-serving-api package, so it is
written here field by field (each field an ``Int64Value`` wrapper: ``max_batch_size { value: 8 }``).

No TensorFlow is loaded.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

MODEL_PLATFORM = "tensorflow"
DEFAULT_MODEL_NAME = "maskrcnn"
MODELS_CONFIG_FILE = "models.config"
BATCHING_PARAMETERS_FILE = "batching_parameters.txt"
# Inside the TF Serving container (docker-compose.yml, k8s/deployment.yaml): where the base dir is mounted.
CONTAINER_MODELS_DIR = "/models"
CONTAINER_CONFIG_DIR = "/config"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_POLICIES = ("latest", "all", "specific")


class ModelConfigError(ValueError):
    """A model configuration that TF Serving would refuse (or that says something other than meant)."""


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which versions under the base path are served: the ``num_versions`` highest (TF Serving's default, one),
    all of them, or the listed ones."""

    kind: str = "latest"
    num_versions: int = 1
    versions: Tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in _POLICIES:
            raise ModelConfigError(f"version policy {self.kind!r} is not one of {', '.join(_POLICIES)}")
        if self.kind == "latest" and self.num_versions < 1:
            raise ModelConfigError(f"the latest policy needs num_versions >= 1 (got {self.num_versions})")
        if self.kind == "specific":
            if not self.versions:
                raise ModelConfigError("the specific policy needs at least one version")
            if any(v < 0 for v in self.versions):
                raise ModelConfigError(f"versions must be >= 0 (got {list(self.versions)})")
        object.__setattr__(self, "versions", tuple(sorted(int(v) for v in self.versions)))

    def select(self, available: Sequence[int]) -> List[int]:
        """The versions of ``available`` this policy serves, highest first."""
        ordered = sorted(set(available), reverse=True)
        if self.kind == "latest":
            return ordered[:self.num_versions]
        if self.kind == "all":
            return ordered
        return [v for v in ordered if v in self.versions]


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """One entry of ``model_config_list``."""

    name: str
    base_path: str
    version_policy: VersionPolicy = VersionPolicy()
    version_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not _NAME_PATTERN.match(self.name or ""):
            raise ModelConfigError(f"model name {self.name!r} must be letters, digits, '_', '.' or '-' "
                                   f"(it is a URL path part: /v1/models/NAME)")
        if not self.base_path:
            raise ModelConfigError(f"model {self.name!r} has no base_path")
        labels = {}
        for label, version in dict(self.version_labels).items():
            if not _NAME_PATTERN.match(label) or label.isdigit():
                raise ModelConfigError(f"version label {label!r} of model {self.name!r} must be a name "
                                       f"(letters, digits, '_', '.', '-'; not only digits)")
            if int(version) < 0:
                raise ModelConfigError(f"version label {label!r} of model {self.name!r} names version {version}")
            labels[label] = int(version)
        if self.version_policy.kind == "specific":
            unserved = sorted(set(labels.values()) - set(self.version_policy.versions))
            if unserved:
                raise ModelConfigError(f"model {self.name!r}: labels name versions {unserved} that the specific "
                                       f"policy {list(self.version_policy.versions)} does not serve")
        object.__setattr__(self, "version_labels", labels)


def to_proto(models: Sequence[ServedModel]):
    """The ``ModelServerConfig`` proto of ``models``."""
    from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=import-outside-toplevel

    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelConfigError(f"model names listed twice: {', '.join(duplicates)}")
    if not models:
        raise ModelConfigError("no model to configure")
    config = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = config.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = model.base_path
        entry.model_platform = MODEL_PLATFORM
        policy = model.version_policy
        if policy.kind == "latest":
            entry.model_version_policy.latest.num_versions = policy.num_versions
        elif policy.kind == "all":
            entry.model_version_policy.all.SetInParent()
        else:
            entry.model_version_policy.specific.versions.extend(policy.versions)
        for label, version in sorted(model.version_labels.items()):
            entry.version_labels[label] = version
    return config


def from_proto(config) -> List[ServedModel]:
    """``ServedModel``s of a ``ModelServerConfig`` proto (only ``model_config_list`` is supported)."""
    if config.WhichOneof("config") != "model_config_list":
        raise ModelConfigError("only a model_config_list configuration is supported")
    models = []
    for entry in config.model_config_list.config:
        if entry.model_platform not in ("", MODEL_PLATFORM):
            raise ModelConfigError(f"model {entry.name!r}: platform {entry.model_platform!r} is not "
                                   f"{MODEL_PLATFORM!r}")
        which = entry.model_version_policy.WhichOneof("policy_choice")
        if which == "all":
            policy = VersionPolicy("all")
        elif which == "specific":
            policy = VersionPolicy("specific", versions=tuple(entry.model_version_policy.specific.versions))
        else:
            num = entry.model_version_policy.latest.num_versions if which == "latest" else 1
            policy = VersionPolicy("latest", num_versions=num or 1)
        models.append(ServedModel(entry.name, entry.base_path, policy, dict(entry.version_labels)))
    return models


def model_config_text(models: Sequence[ServedModel]) -> str:
    from google.protobuf import text_format  # pylint: disable=import-outside-toplevel

    return text_format.MessageToString(to_proto(models))


def parse_model_config(text: str, source: str = "<string>") -> List[ServedModel]:
    from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=import-outside-toplevel

    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ModelConfigError(f"{source}: not a TF Serving ModelServerConfig ({e})") from None
    try:
        return from_proto(config)
    except ModelConfigError as e:
        raise ModelConfigError(f"{source}: {e}") from None


def write_model_config(path: str, models: Sequence[ServedModel]) -> str:
    """Writes ``models.config`` (atomically: TF Serving may poll it with --model_config_file_poll_wait_seconds)."""
    _write_atomically(path, model_config_text(models))
    return path


def read_model_config(path: str) -> List[ServedModel]:
    with open(path, encoding="utf-8") as f:
        return parse_model_config(f.read(), source=path)


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's server-side batching (``BatchingParameters``).

    Defaults suit a CPU Mask R-CNN: each image is expensive, so batches stay small and the wait short; one
    batch thread per core runs batches in parallel.
    """

    max_batch_size: int = 8
    batch_timeout_micros: int = 5000
    max_enqueued_batches: int = 32
    num_batch_threads: int = 2
    allowed_batch_sizes: Tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ModelConfigError(f"batching {name} must be >= 1 (got {getattr(self, name)})")
        if self.batch_timeout_micros < 0:
            raise ModelConfigError(f"batching batch_timeout_micros must be >= 0 (got {self.batch_timeout_micros})")
        sizes = tuple(int(s) for s in self.allowed_batch_sizes)
        # TF Serving's own rule: increasing, and the last one is max_batch_size.
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size or sizes[0] < 1):
            raise ModelConfigError(f"allowed_batch_sizes {list(sizes)} must increase and end with max_batch_size "
                                   f"{self.max_batch_size}")
        object.__setattr__(self, "allowed_batch_sizes", sizes)


def batching_parameters_text(params: BatchingParameters) -> str:
    lines = [f"max_batch_size {{ value: {params.max_batch_size} }}",
             f"batch_timeout_micros {{ value: {params.batch_timeout_micros} }}",
             f"max_enqueued_batches {{ value: {params.max_enqueued_batches} }}",
             f"num_batch_threads {{ value: {params.num_batch_threads} }}"]
    lines += [f"allowed_batch_sizes: {size}" for size in params.allowed_batch_sizes]
    if params.pad_variable_length_inputs:
        lines.append("pad_variable_length_inputs: true")
    return "\n".join(lines) + "\n"


_BATCHING_LINE = re.compile(r"^\s*(\w+)\s*(?:\{\s*value\s*:\s*(\d+)\s*\}|:\s*(\w+))\s*$")


def parse_batching_parameters(text: str, source: str = "<string>") -> BatchingParameters:
    """Reads the text :func:`batching_parameters_text` writes (one field per line)."""
    fields: Dict[str, object] = {}
    sizes: List[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        match = _BATCHING_LINE.match(line)
        if not match:
            raise ModelConfigError(f"{source}:{number}: cannot read {line.strip()!r}")
        name, wrapped, plain = match.groups()
        if name == "allowed_batch_sizes":
            sizes.append(int(plain if plain is not None else wrapped))
        elif name == "pad_variable_length_inputs":
            fields[name] = plain == "true"
        elif name in {f.name for f in dataclasses.fields(BatchingParameters)} and wrapped is not None:
            fields[name] = int(wrapped)
        else:
            raise ModelConfigError(f"{source}:{number}: unknown batching field {name!r}")
    return BatchingParameters(allowed_batch_sizes=tuple(sizes), **fields)


def write_batching_parameters(path: str, params: Optional[BatchingParameters] = None) -> str:
    _write_atomically(path, batching_parameters_text(params or BatchingParameters()))
    return path


def write_serving_config(config_dir: str, models: Sequence[ServedModel],
                         batching: Optional[BatchingParameters] = None) -> Tuple[str, str]:
    """Writes ``models.config`` and ``batching_parameters.txt`` into ``config_dir``; returns their paths."""
    os.makedirs(config_dir, exist_ok=True)
    return (write_model_config(os.path.join(config_dir, MODELS_CONFIG_FILE), models),
            write_batching_parameters(os.path.join(config_dir, BATCHING_PARAMETERS_FILE), batching))


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)
