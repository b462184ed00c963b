"""Distribution strategies for the Trainer: one device, mirrored GPUs (or given devices), multi-worker, TPU.

Built through Model Garden's ``distribute_utils.get_distribution_strategy`` where it fits; explicit device
lists and the "auto" choice are handled here.

Multi-worker training reads the cluster from the ``TF_CONFIG`` environment variable, which every worker
sets to the same cluster and its own task, e.g.::

    {"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}

Worker 0 (or the "chief" task) is the chief: it alone writes checkpoints and summaries to the model dir and
the serving model; the others write to temporary folders (they still have to take part in the collective
reads that saving involves).

A multi-worker strategy must be created before TensorFlow runs anything else in the process: build the
strategy first.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
import tensorflow as tf
from official.common import distribute_utils

from maskrcnn_tfx.config.schema import ConfigError, RuntimeConfig

logger = logging.getLogger(__name__)

TF_CONFIG = "TF_CONFIG"


def tf_config() -> Dict[str, Any]:
    """The parsed ``TF_CONFIG`` (empty when unset); a clear error when it is not valid JSON."""
    text = os.environ.get(TF_CONFIG, "")
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{TF_CONFIG} is not valid JSON ({e}): {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{TF_CONFIG} must be a JSON object, got {text[:200]!r}")
    return value


def cluster_size() -> int:
    """Number of worker (and chief) tasks declared in ``TF_CONFIG``; 0 when there is no cluster."""
    cluster = tf_config().get("cluster", {})
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def _check_multi_worker_tf_config() -> None:
    config = tf_config()
    if not config:
        raise ConfigError(f"runtime.strategy multi_worker_mirrored needs the {TF_CONFIG} environment variable "
                          f"(cluster and this worker's task); it is not set")
    task = config.get("task", {})
    if cluster_size() < 1 or "type" not in task or "index" not in task:
        raise ConfigError(f"{TF_CONFIG} must define \"cluster\" (chief/worker addresses) and \"task\" "
                          f"(type and index), got {json.dumps(config)[:300]}")


def _mirrored_cross_device_ops(all_reduce_alg: Optional[str]) -> Optional[tf.distribute.CrossDeviceOps]:
    if all_reduce_alg == "nccl":
        return tf.distribute.NcclAllReduce()
    if all_reduce_alg == "hierarchical_copy":
        return tf.distribute.HierarchicalCopyAllReduce()
    return None  # TensorFlow chooses from the devices.


def visible_gpus() -> int:
    return len(tf.config.list_physical_devices("GPU"))


def resolve_kind(runtime: RuntimeConfig, num_visible_gpus: Optional[int] = None) -> str:
    """The concrete strategy ``runtime`` stands for: ``runtime.strategy`` with "auto" decided.

    auto: multi_worker_mirrored when ``TF_CONFIG`` declares several workers, else mirrored when several GPUs
    are used, else one_device (the one GPU, or the CPU).
    """
    if runtime.strategy != "auto":
        return runtime.strategy
    if cluster_size() > 1:
        return "multi_worker_mirrored"
    visible = visible_gpus() if num_visible_gpus is None else num_visible_gpus
    return "mirrored" if _num_gpus(runtime, visible) > 1 else "one_device"


def _num_gpus(runtime: RuntimeConfig, visible: int) -> int:
    """``runtime.num_gpus`` with -1 (every visible GPU) resolved."""
    return visible if runtime.num_gpus < 0 else runtime.num_gpus


def build_strategy(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    """The strategy ``runtime`` asks for (see :class:`maskrcnn_tfx.config.schema.RuntimeConfig` and
    :func:`resolve_kind`)."""
    kind = resolve_kind(runtime)
    all_reduce = runtime.all_reduce_alg or None
    if kind == "one_device":
        num_gpus = min(_num_gpus(runtime, visible_gpus()), 1)
        return distribute_utils.get_distribution_strategy("one_device", num_gpus=num_gpus)
    if kind == "mirrored":
        if runtime.devices:
            # e.g. several logical CPU devices, or a chosen subset of GPUs.
            return tf.distribute.MirroredStrategy(devices=list(runtime.devices),
                                                  cross_device_ops=_mirrored_cross_device_ops(all_reduce))
        num_gpus = _num_gpus(runtime, visible_gpus())
        return distribute_utils.get_distribution_strategy("mirrored", num_gpus=num_gpus, all_reduce_alg=all_reduce)
    if kind == "multi_worker_mirrored":
        _check_multi_worker_tf_config()
        return distribute_utils.get_distribution_strategy("multi_worker_mirrored", all_reduce_alg=all_reduce)
    if kind == "tpu":
        if not runtime.tpu:
            raise ConfigError("runtime.strategy tpu needs runtime.tpu (the TPU name, grpc:// address or \"local\")")
        return distribute_utils.get_distribution_strategy("tpu", tpu_address=runtime.tpu)
    raise ConfigError(f"unknown runtime.strategy {runtime.strategy!r}")


def num_gpu_replicas(strategy: tf.distribute.Strategy) -> int:
    """The GPUs ``strategy`` computes on in this worker."""
    return sum("GPU" in device.upper() for device in strategy.extended.worker_devices)


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether this process writes the run's checkpoints, summaries and serving model."""
    strategy = strategy or tf.distribute.get_strategy()
    return bool(strategy.extended.should_checkpoint)


def describe(strategy: tf.distribute.Strategy) -> str:
    """A one-line description for logs, e.g. ``MirroredStrategy, 2 replicas``."""
    return f"{type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s)"
