"""Model Garden's Mask R-CNN task, with the product's input pipeline and warm start.

:class:`MaskRCNNTrainerTask` is Model Garden's ``MaskRCNNTask`` (model, losses, train and validation steps,
COCO metrics: all unchanged) with two overrides:

- ``build_inputs`` reads the data set's pixel statistics and renormalizes images (see :mod:`trainer.input`);
- ``initialize`` (called only when the run's model dir has no checkpoint yet, i.e. never when resuming)
  warm-starts from a previous model: a TFX base model (SavedModel), a training checkpoint, or Model Garden's
  ``init_checkpoint``.

:func:`restore_weights` loads Mask R-CNN weights from any SavedModel or checkpoint that contains the model,
wherever it sits in the saved object graph: the model is found by its parts' names, not by a fixed path.
"""
from __future__ import annotations

import collections
import logging
import os
from typing import List, Optional, Sequence, Tuple

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
import tensorflow as tf
import tf_keras
from official.core import config_definitions as mg_cfg
from official.vision.configs import maskrcnn as mg_maskrcnn
from official.vision.tasks import maskrcnn as mg_maskrcnn_task
from tensorflow.core.protobuf import trackable_object_graph_pb2

from trainer import input as input_lib

logger = logging.getLogger(__name__)

# The Keras sub-layers of Model Garden's MaskRCNNModel that own variables (the RoI generator, samplers and
# aligners have none). A saved object with the first four as children is taken to be a Mask R-CNN model.
MODEL_PARTS = ("backbone", "decoder", "rpn_head", "detection_head", "mask_head")
_REQUIRED_PARTS = frozenset(MODEL_PARTS[:4])
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


class WeightsError(ValueError):
    """Weights that cannot be found or do not fit the model."""


def checkpoint_prefix(path: str) -> str:
    """The checkpoint prefix of a SavedModel folder, a checkpoint folder, or a checkpoint prefix."""
    if tf.io.gfile.isdir(path):
        if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            return os.path.join(path, "variables", "variables")
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        raise WeightsError(f"{path} holds neither a SavedModel nor a checkpoint")
    if tf.io.gfile.exists(path + ".index"):
        return path
    raise WeightsError(f"{path} is not a SavedModel folder, a checkpoint folder or a checkpoint prefix")


def find_model_path(prefix: str) -> List[str]:
    """The names leading from the checkpoint's root to the saved Mask R-CNN model (``[]`` for the root).

    Breadth first, so the shallowest match wins (in a training checkpoint the root itself lists the model's
    parts beside ``model``; both hold the same variables).
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
    except (tf.errors.OpError, ValueError) as e:
        raise WeightsError(f"cannot read the checkpoint {prefix}: {e}") from None
    queue = collections.deque([(0, [])])
    seen = {0}
    while queue:
        node_id, path = queue.popleft()
        children = graph.nodes[node_id].children
        if _REQUIRED_PARTS <= {c.local_name for c in children}:
            return path
        for child in children:
            if child.node_id not in seen:
                seen.add(child.node_id)
                queue.append((child.node_id, path + [child.local_name]))
    raise WeightsError(f"{prefix} holds no Mask R-CNN model (no object with children {sorted(_REQUIRED_PARTS)})")


def _restore_target(model: tf_keras.Model, path: Sequence[str]) -> tf.train.Checkpoint:
    """A checkpoint object whose graph reaches the model's parts along ``path``."""
    parts = {name: getattr(model, name) for name in MODEL_PARTS if getattr(model, name, None) is not None}
    if not path:
        return tf.train.Checkpoint(**parts)
    node = tf.Module()
    for name, part in parts.items():
        setattr(node, name, part)
    for name in reversed(path[1:]):
        parent = tf.Module()
        setattr(parent, name, node)
        node = parent
    return tf.train.Checkpoint(**{path[0]: node})


def restore_weights(model: tf_keras.Model, path: str) -> str:
    """Loads every weight of ``model`` (a built Model Garden MaskRCNNModel) from a SavedModel or checkpoint.

    Returns the checkpoint prefix read. Raises :class:`WeightsError` when the file holds no Mask R-CNN or its
    weights do not fit (another backbone, head size or class count).
    """
    prefix = checkpoint_prefix(path)
    model_path = find_model_path(prefix)
    target = _restore_target(model, model_path)
    try:
        status = target.read(prefix)
        status.expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        raise WeightsError(f"the weights in {path} do not fit this model (a different backbone, head sizes or "
                           f"number of classes?): {e}") from None
    logger.info("Loaded the model's weights from %s (object path %s)", prefix, "/".join(model_path) or "<root>")
    return prefix


class MaskRCNNTrainerTask(mg_maskrcnn_task.MaskRCNNTask):
    """Model Garden's MaskRCNNTask reading the product's examples, with warm start.

    Args:
      params: Model Garden's task config (``ExperimentConfig.task``).
      logging_dir: where Model Garden writes the eval split's COCO annotation file.
      statistics_from_examples: read PIXEL_MEAN/PIXEL_STD from every example (a run with a Transform step);
        otherwise ImageNet's statistics are used (the renormalization is then the identity).
      warm_start_from: a previous model (SavedModel folder, checkpoint folder or prefix) whose weights
        initialize a fresh run; it takes precedence over ``params.init_checkpoint``.
    """

    def __init__(self, params: mg_maskrcnn.MaskRCNNTask, logging_dir: Optional[str] = None,
                 name: Optional[str] = None, *, statistics_from_examples: bool = False,
                 warm_start_from: Optional[str] = None):
        super().__init__(params, logging_dir=logging_dir, name=name)
        self._statistics_from_examples = statistics_from_examples
        self._warm_start_from = warm_start_from or None

    @property
    def statistics_from_examples(self) -> bool:
        return self._statistics_from_examples

    def build_inputs(self, params: mg_maskrcnn.DataConfig,
                     input_context: Optional[tf.distribute.InputContext] = None,
                     dataset_fn=None) -> tf.data.Dataset:
        if dataset_fn is not None:
            raise ValueError("MaskRCNNTrainerTask reads TFRecords only; set params.file_type instead of dataset_fn")
        return input_lib.build_dataset(self.task_config, params,
                                       statistics_from_examples=self._statistics_from_examples,
                                       input_context=input_context)

    def initialize(self, model: tf_keras.Model) -> None:
        """Initializes a fresh run's weights (not called when the model dir already has a checkpoint)."""
        if self._warm_start_from:
            if self.task_config.init_checkpoint:
                logger.info("Warm start from %s; init_checkpoint %s is not used", self._warm_start_from,
                            self.task_config.init_checkpoint)
            restore_weights(model, self._warm_start_from)
            return
        if self.task_config.init_checkpoint and self.task_config.init_checkpoint_modules == "all":
            # Any saved Mask R-CNN, not only a checkpoint whose root names the model "model".
            restore_weights(model, self.task_config.init_checkpoint)
            return
        super().initialize(model)


def build_task(experiment: mg_cfg.ExperimentConfig, *, logging_dir: Optional[str] = None,
               statistics_from_examples: bool = False,
               warm_start_from: Optional[str] = None) -> MaskRCNNTrainerTask:
    return MaskRCNNTrainerTask(experiment.task, logging_dir=logging_dir,
                               statistics_from_examples=statistics_from_examples,
                               warm_start_from=warm_start_from)


def build_model(experiment: mg_cfg.ExperimentConfig) -> tf_keras.Model:
    """A freshly initialized, built Model Garden MaskRCNNModel for the experiment (e.g. to load weights into)."""
    return MaskRCNNTrainerTask(experiment.task).build_model()


def model_parts_variables(model: tf_keras.Model) -> List[Tuple[str, tf.Variable]]:
    """(name, variable) of every weight of the model's parts, in a stable order (for comparisons).

    Names are ``<part>/<index>/<weight>`` (e.g. ``backbone/0003/kernel``): Keras' own variable names carry
    layer counters that differ between two identical models built in one process.
    """
    out = []
    for part in MODEL_PARTS:
        layer = getattr(model, part, None)
        if layer is not None:
            for index, variable in enumerate(layer.weights):
                short = variable.name.rsplit("/", 1)[-1].split(":", 1)[0]
                out.append((f"{part}/{index:04d}/{short}", variable))
    return out
