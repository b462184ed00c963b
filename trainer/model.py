"""Model Garden's Mask R-CNN task, with the product's input pipeline and warm start.

:class:`MaskRCNNTrainerTask` is Model Garden's ``MaskRCNNTask`` (model, losses, train and validation steps,
COCO metrics: all unchanged) with two overrides:

- ``build_inputs`` reads the data set's pixel statistics and renormalizes images (see
:mod:`maskrcnn_tfx.trainer.input`);
- ``initialize`` (called only when the run's model dir has no checkpoint yet, i.e. never when resuming)
  warm-starts from a previous model (a TFX base model: SavedModel or training checkpoint), or loads
  ``init_checkpoint`` for fine-tuning: the backbone, the backbone and FPN, the whole model but its
  class-dependent layers (another label map), or the whole model (see :data:`INIT_MODES`).

:func:`restore_weights` loads Mask R-CNN weights from any SavedModel or checkpoint that contains the model,
wherever it sits in the saved object graph: the model is found by its parts' names, not by a fixed path.
"""
from __future__ import annotations

import collections
import logging
import os
from typing import Callable, List, Optional, Sequence, Tuple

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
import tensorflow as tf
import tf_keras
from official.core import config_definitions as mg_cfg
from official.vision.configs import maskrcnn as mg_maskrcnn
from official.vision.modeling import factory as mg_factory
from official.vision.tasks import maskrcnn as mg_maskrcnn_task
from tensorflow.core.protobuf import trackable_object_graph_pb2

from maskrcnn_tfx.config.schema import INIT_CHECKPOINT_MODULES
from maskrcnn_tfx.trainer import input as input_lib

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


def find_model_path(prefix: str, parts: Sequence[str] = tuple(sorted(_REQUIRED_PARTS))) -> List[str]:
    """The names leading from the checkpoint's root to the first object with all of ``parts`` as children
    (default: a saved Mask R-CNN model; ``[]`` for the root).

    Breadth first, so the shallowest match wins (in a training checkpoint the root itself lists the model's
    parts beside ``model``; both hold the same variables; an ImageNet classifier's checkpoint lists
    ``backbone`` at its root).
    """
    wanted = frozenset(parts)
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
        if wanted <= {c.local_name for c in children}:
            return path
        for child in children:
            if child.node_id not in seen:
                seen.add(child.node_id)
                queue.append((child.node_id, path + [child.local_name]))
    what = ("no Mask R-CNN model" if wanted == _REQUIRED_PARTS else f"no {' and '.join(sorted(wanted))}")
    raise WeightsError(f"{prefix} holds {what} (no object with children {sorted(wanted)})")


def _restore_target(model: tf_keras.Model, path: Sequence[str],
                    names: Sequence[str] = MODEL_PARTS) -> tf.train.Checkpoint:
    """A checkpoint object whose graph reaches the model's parts ``names`` along ``path``."""
    parts = {name: getattr(model, name) for name in names if getattr(model, name, None) is not None}
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
        where = path if path == prefix else f"{path} (checkpoint {prefix})"
        raise WeightsError(f"the weights in {where} do not fit this model (a different backbone, head sizes or "
                           f"number of classes?): {_short(e)}") from None
    logger.info("Loaded the model's weights from %s (object path %s)", prefix, "/".join(model_path) or "<root>")
    return prefix


# train.init_checkpoint_modules (maskrcnn_tfx/config/schema.py lists the names) -> the parts each loads. The
# "all_but_class_layers" and "all" modes load the whole model (see MaskRCNNTrainerTask.initialize).
INIT_PARTS = {"backbone": ("backbone",), "backbone_fpn": ("backbone", "decoder")}
ALL_BUT_CLASS_LAYERS = "all_but_class_layers"
# The modes the configuration accepts (train.init_checkpoint_modules); each is handled below.
INIT_MODES = INIT_CHECKPOINT_MODULES
# Keras names of Model Garden's class-dependent layers, whose shapes follow the number of classes: the box
# head's class logits and per-class box regression, the mask head's per-class mask logits.
CLASS_LAYER_NAMES = frozenset({"detection-scores", "detection-boxes", "mask-logits"})
# TensorFlow lists every unmatched object; the first ones name the problem.
_MAX_ERROR_CHARS = 1500


def is_class_layer_variable(variable: tf.Variable) -> bool:
    """Whether a variable belongs to one of the :data:`CLASS_LAYER_NAMES` layers."""
    return any(scope.split("_", 1)[0] in CLASS_LAYER_NAMES or scope in CLASS_LAYER_NAMES
               for scope in variable.name.split("/")[:-1])


def _short(error: BaseException) -> str:
    text = str(error)
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + " ..."


def restore_parts(model: tf_keras.Model, path: str, parts: Sequence[str]) -> str:
    """Loads the model's ``parts`` (e.g. ``("backbone", "decoder")``) from a checkpoint or SavedModel that holds
    them: a Mask R-CNN's, or an ImageNet classifier's for ``("backbone",)``. Every variable of those parts must
    be in the checkpoint with the same shape; the rest of the model keeps its initialization.

    Returns the checkpoint prefix read; raises :class:`WeightsError` naming the checkpoint and the variables.
    """
    prefix = checkpoint_prefix(path)
    node_path = find_model_path(prefix, parts)
    target = _restore_target(model, node_path, parts)
    try:
        target.read(prefix).expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        raise WeightsError(f"the {' and '.join(parts)} weights of the checkpoint {prefix} do not fit this model "
                           f"(another backbone, or other FPN levels or filters?): {_short(e)}") from None
    logger.info("Loaded the %s from %s (object path %s)", " and ".join(parts), prefix,
                "/".join(node_path) or "<root>")
    return prefix


def checkpoint_num_classes(prefix: str, model_path: Sequence[str]) -> int:
    """The number of classes of the Mask R-CNN saved at ``model_path`` in a checkpoint (its class logits' width)."""
    head = "/".join(list(model_path) + ["detection_head"]) + "/"
    for key, shape in tf.train.load_checkpoint(prefix).get_variable_to_shape_map().items():
        # Model Garden's box head keeps its class logits layer in the attribute _classifier.
        if key.startswith(head) and "/_classifier/kernel/" in key:
            return int(shape[-1])
    raise WeightsError(f"{prefix}: the saved Mask R-CNN has no class logits layer under {head}")


def restore_all_but_class_layers(model: tf_keras.Model, path: str,
                                 build_model: Callable[[int], tf_keras.Model]) -> str:
    """Loads every weight of ``model`` except its class-dependent layers (:data:`CLASS_LAYER_NAMES`) from a saved
    Mask R-CNN of the same architecture and any number of classes; those layers keep their initialization.

    The saved model is first restored whole, strictly, into ``build_model(its number of classes)`` (the same
    architecture with the checkpoint's classes), so any other mismatch fails by variable name; then every
    variable but the class layers' is copied over.

    Returns the checkpoint prefix read; raises :class:`WeightsError`.
    """
    prefix = checkpoint_prefix(path)
    num_classes = checkpoint_num_classes(prefix, find_model_path(prefix))
    source = build_model(num_classes)
    try:
        restore_weights(source, prefix)
    except WeightsError as e:
        raise WeightsError(f"all but the class layers: {e}") from None
    targets, sources = model_parts_variables(model), model_parts_variables(source)
    if [n for n, _ in targets] != [n for n, _ in sources]:
        raise WeightsError(f"{prefix}: the model built for the checkpoint's {num_classes} classes differs from "
                           f"this one beyond its class layers")
    copied = 0
    for (name, variable), (_, value) in zip(targets, sources):
        if not is_class_layer_variable(variable):
            variable.assign(value)
            copied += 1
    logger.info("Loaded %d of %d weights from %s (its %d classes' layers left out)", copied, len(targets), prefix,
                num_classes)
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
        checkpoint = self.task_config.init_checkpoint
        if not checkpoint:
            return
        # Our own loading rather than Model Garden's, for every mode: it accepts checkpoint folders, prefixes and
        # SavedModels wherever the model sits in them, and its errors name the checkpoint and the variables.
        mode = self.task_config.init_checkpoint_modules
        if mode == "all":
            restore_weights(model, checkpoint)
        elif mode == ALL_BUT_CLASS_LAYERS:
            restore_all_but_class_layers(model, checkpoint, self.build_model_with_classes)
        elif mode in INIT_PARTS:
            restore_parts(model, checkpoint, INIT_PARTS[mode])
        else:
            raise WeightsError(f"init_checkpoint_modules {mode!r} is not one of {', '.join(INIT_MODES)}")

    def build_model(self) -> tf_keras.Model:
        """Model Garden's Mask R-CNN (``factory.build_maskrcnn``, as ``MaskRCNNTask.build_model`` builds it),
        its variables created by one eager call on a blank image.

        Model Garden creates them with a symbolic call on Keras inputs, which traces the whole inference
        network, as costly as tracing it in a tf.function; the training step traces the network anyway, and
        the eager call runs it once on one image. The variables, their shapes and initial values are the same.
        """
        model_config = self.task_config.model
        weight_decay = self.task_config.losses.l2_weight_decay
        # Half the weight decay: Model Garden's convention (it matches tf.nn.l2_loss).
        regularizer = tf_keras.regularizers.l2(weight_decay / 2.0) if weight_decay else None
        # Without AutoGraph, like the steps below: the backbone and FPN are Keras functional models, whose
        # construction otherwise converts every layer's call.
        model = tf.autograph.experimental.do_not_convert(mg_factory.build_maskrcnn)(
            input_specs=tf_keras.layers.InputSpec(shape=[None] + list(model_config.input_size)),
            model_config=model_config, l2_regularizer=regularizer)
        if self.task_config.freeze_backbone:
            model.backbone.trainable = False
        height, width, channels = model_config.input_size
        model(tf.zeros([1, height, width, channels]), image_shape=tf.constant([[height, width]], tf.float32),
              training=False)
        return model

    # Model Garden's steps are graph code already (tf.cond, tf.while_loop, Python conditions on Python values):
    # AutoGraph's conversion of them, and of every Keras layer and op they call, is a large part of the cost of
    # tracing them and changes no op in the traced graph. They are traced as written.
    def train_step(self, inputs, model, optimizer, metrics=None):
        return tf.autograph.experimental.do_not_convert(super().train_step)(inputs, model, optimizer,
                                                                             metrics=metrics)

    def validation_step(self, inputs, model, metrics=None):
        return tf.autograph.experimental.do_not_convert(super().validation_step)(inputs, model, metrics=metrics)

    def build_model_with_classes(self, num_classes: int) -> tf_keras.Model:
        """This task's model with another number of classes (to read a checkpoint of other classes)."""
        params = self.task_config.replace(model={"num_classes": num_classes}, init_checkpoint=None)
        return MaskRCNNTrainerTask(params).build_model()


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
