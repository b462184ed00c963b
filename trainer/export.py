"""Exports the trained Mask R-CNN as a SavedModel for TF Serving and TFMA.

The exported model takes encoded images (or raw tf.Examples) and does all preprocessing itself, so a client
sends JPEG/PNG bytes and reads boxes, classes, scores and masks in the original image's frame:

- ``serving_default`` (:data:`SERVING_SIGNATURE`): input :data:`IMAGES_INPUT`, string [B] of JPEG or PNG
  bytes, any sizes (each image is decoded and resized on its own, so one request may mix sizes);
- ``serving_tf_example`` (:data:`TF_EXAMPLE_SIGNATURE`): input :data:`EXAMPLES_INPUT`, serialized raw
  tf.Examples (the product's example format), for TFMA; only the encoded image is read.

Before decoding anything, both read each image's declared size from its header (JPEG frame header, PNG IHDR)
and refuse, with INVALID_ARGUMENT naming the image's index, its size and the limit, an image above
``max_image_pixels`` (the export configuration's; see :data:`maskrcnn_tfx.images.DEFAULT_MAX_IMAGE_PIXELS`),
and bytes that are neither JPEG nor PNG. Only standard TensorFlow ops do it, so TF Serving enforces it too.
EXIF orientation is ignored: the stored pixel grid is the image, as in training.

Both return the same outputs (:data:`OUTPUT_KEYS`):

- ``detection_boxes``: float32 [B, N, 4], normalized [ymin, xmin, ymax, xmax] of the original image;
- ``detection_classes``: int32 [B, N], label-map ids (0 in the padding after ``num_detections``);
- ``detection_scores``: float32 [B, N] in [0, 1], sorted descending;
- ``num_detections``: int32 [B], valid detections per image (N is the model's max_num_detections);
- ``detection_masks``: float32 [B, N, M, M], mask probabilities relative to each box (paste them onto the
  image with ``maskrcnn_tfx.masks.paste_masks``);
- ``image_size``: int32 [B, 2], the original (height, width).

Preprocessing is Model Garden's own (``DetectionModule``: ImageNet normalization, aspect-preserving resize,
padding to a multiple of 2**max_level) followed by :func:`maskrcnn_tfx.trainer.preprocessing.renormalize_image` with the
data set's pixel statistics, which the Transform graph, attached to the exported module, computes from the raw
image feature inside the signature: the same two steps, with the same statistics, as the training input path.

Two export options trade nothing in the signatures for speed (see :func:`export_serving_model`):
``precision="bfloat16"`` runs the convolutions and dense layers of the backbone, FPN and heads in bfloat16
(oneDNN on CPUs with AVX512-BF16/AMX, Tensor Cores on GPUs) while the box, class and mask predictions and all
box arithmetic stay float32; ``jit_compile=True`` XLA-compiles the network. ``benchmarks/inference_latency.py``
measures what each buys.

The SavedModel also carries the label map (``assets/label_map.json``, a tracked asset) and TF Serving warm-up
requests (``assets.extra/tf_serving_warmup_requests``). Like Model Garden's exporter it writes no version
folder: the TFX Pusher (or the caller) adds one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
import tensorflow as tf
import tf_keras
from official.core import config_definitions as cfg
from official.vision.ops import preprocess_ops
from official.vision.serving import detection

from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx import images as images_lib
from maskrcnn_tfx import label_map as label_map_lib
from maskrcnn_tfx.config.schema import SERVING_PRECISIONS as PRECISIONS, TrainerConfig
from maskrcnn_tfx.trainer import preprocessing
from maskrcnn_tfx.trainer.experiment import to_experiment_config

if TYPE_CHECKING:
    import tensorflow_transform as tft

# The signature's names live in a TensorFlow-free module, so clients can import them alone.
from maskrcnn_tfx.signature import (EXAMPLES_INPUT, IMAGE_TOO_LARGE_MESSAGE, IMAGES_INPUT,  # noqa: E402,F401
                                    LABEL_MAP_ASSET, NOT_AN_IMAGE_MESSAGE, OUTPUT_KEYS, SERVING_SIGNATURE,
                                    TF_EXAMPLE_SIGNATURE, WARMUP_FILE)

# Serving precisions: float32 (the default) or bfloat16 compute for the heavy layers (see _BFLOAT16_FLOAT32_PARTS).
# With precision="bfloat16", these sub-layers of Model Garden's Mask R-CNN still compute in float32: the final
# predictions of each head (their outputs are decoded into boxes, ranked by score and thresholded) and the
# layers without weights that decode, rank, suppress and crop boxes in image coordinates, where bfloat16's 8
# mantissa bits would move a box edge at x=600 by up to 2 pixels.
_BFLOAT16_FLOAT32_HEAD_LAYERS = {
    "rpn_head": ("_classifier", "_box_regressor"),
    "detection_head": ("_classifier", "_box_regressor"),
    "mask_head": ("_mask_regressor",),
}
_BFLOAT16_FLOAT32_PARTS = ("roi_generator", "detection_generator", "roi_aligner", "mask_roi_aligner",
                           "roi_sampler", "mask_sampler")

_JPEG_MAGIC = images_lib.JPEG_MAGIC
_PNG_MAGIC = images_lib.PNG_MAGIC


def _jpeg_declared_size(encoded: tf.Tensor) -> tf.Tensor:
    """(height, width) int64 [2] from the JPEG frame header; libjpeg reads the header only."""
    return tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64)


def _png_declared_size(encoded: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """(height, width) int64 [2] from the PNG IHDR chunk (big-endian width then height at bytes 16 to 24)."""
    # Padded, so a PNG shorter than its header still yields 24 bytes to look at (and fails the check below).
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(encoded, 0, 24), b"\0" * 24]), 0, 24)
    has_ihdr = tf.logical_and(tf.strings.length(encoded) >= 24,
                              tf.equal(tf.strings.substr(head, 12, 4), b"IHDR"))
    check = tf.debugging.Assert(
        has_ihdr, [tf.strings.format("Input image {} of the batch is a truncated or corrupt PNG: no IHDR header",
                                     (index,))])
    with tf.control_dependencies([check]):
        raw = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)
    big_endian = tf.constant([2 ** 24, 2 ** 16, 2 ** 8, 1], tf.int64)
    width = tf.reduce_sum(raw[16:20] * big_endian)
    height = tf.reduce_sum(raw[20:24] * big_endian)
    return tf.stack([height, width])


def experiment_config_of(config: Union[TrainerConfig, cfg.ExperimentConfig],
                         label_map: label_map_lib.LabelMap) -> cfg.ExperimentConfig:
    """Model Garden's ExperimentConfig of the trainer's config (an ExperimentConfig is used as it is)."""
    if isinstance(config, cfg.ExperimentConfig):
        return config
    if isinstance(config, TrainerConfig):
        return to_experiment_config(config, label_map)
    raise TypeError(f"expected a maskrcnn_tfx.config.TrainerConfig or Model Garden ExperimentConfig, "
                    f"got {type(config).__name__}")


def _raw_image_feature_spec(tf_transform_output: "tft.TFTransformOutput"):
    """How the Transform's raw schema declared the encoded image (fixed-length or variable-length).

    The TFX Transform executor saves the raw schema next to the graph; a graph written by plain tf.Transform
    may lack it, and then the product's own raw spec is what the graph was traced with.
    """
    try:
        return tf_transform_output.raw_feature_spec()[ef.ENCODED]
    except (IOError, OSError, tf.errors.NotFoundError):
        return preprocessing.raw_feature_spec()[ef.ENCODED]


class MaskRCNNServingModule(detection.DetectionModule):
    """Model Garden's DetectionModule, serving encoded images of mixed sizes with the Transform's statistics.

    Model Garden's ``image_bytes`` signature stacks the decoded images before resizing, so every image of a
    request must have the same size; here each image is decoded and preprocessed on its own
    (``DetectionModule._build_inputs``), and the outputs are mapped back to the original image.
    """

    def __init__(self, params: cfg.ExperimentConfig, model: Optional[tf_keras.Model],
                 label_map: label_map_lib.LabelMap, label_map_file: str,
                 tf_transform_output: Optional["tft.TFTransformOutput"] = None, *,
                 precision: str = "float32", jit_compile: bool = False,
                 max_image_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS):
        """``model=None`` builds a fresh inference model from ``params`` (Model Garden's export recipe); only
        such a model can be built in ``precision="bfloat16"``. Images whose header declares more than
        ``max_image_pixels`` pixels are refused before decoding."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if precision != "float32" and model is not None:
            raise ValueError(f"precision {precision!r} needs the module to build its own model (model=None)")
        if int(max_image_pixels) < 1:
            raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
        self._max_image_pixels = int(max_image_pixels)
        # Read by _build_model, which the base class calls.
        self._precision = precision
        self._jit_compile = bool(jit_compile)
        super().__init__(params, batch_size=None, input_image_size=list(params.task.model.input_size[:2]),
                         input_type="image_bytes", model=model)
        # Tracked, so the file is copied to assets/ and its path follows the SavedModel when it moves.
        self.label_map_asset = tf.saved_model.Asset(label_map_file)
        self._transform_output = tf_transform_output
        self._image_feature_spec = None
        if tf_transform_output is not None:
            # Tracked too: the Transform graph (and any assets of its own) is saved inside this SavedModel.
            self.tft_layer = tf_transform_output.transform_features_layer()
            self._image_feature_spec = _raw_image_feature_spec(tf_transform_output)
        self._label_ids = tuple(label_map.ids)

    def _build_model(self) -> tf_keras.Model:
        # Without AutoGraph, as the trainer builds it (maskrcnn_tfx.trainer.model.MaskRCNNTrainerTask.build_model).
        build = tf.autograph.experimental.do_not_convert(super()._build_model)
        if self._precision == "float32":
            return build()
        # Every layer made now (Model Garden's factory builds the whole model) computes in bfloat16 with float32
        # variables; then the layers that must stay float32 are switched back.
        with _keras_policy("mixed_bfloat16"):
            model = build()
        for part in _BFLOAT16_FLOAT32_PARTS:
            # roi_sampler is a list (one per cascade stage).
            for layer in tf.nest.flatten(getattr(model, part, None)):
                if layer is not None:
                    layer._set_dtype_policy("float32")  # pylint: disable=protected-access
        for part, final_layers in _BFLOAT16_FLOAT32_HEAD_LAYERS.items():
            # detection_head is a list too (one per cascade stage).
            for head in tf.nest.flatten(getattr(model, part, None)):
                if head is not None:
                    _build_in_bfloat16_with_float32_outputs(head, final_layers)
        return model

    # --- preprocessing -----------------------------------------------------------------------------------

    def declared_pixels(self, encoded_images: tf.Tensor) -> tf.Tensor:
        """Per image, the pixel count its header declares (int64 [B]), after refusing bad or too large ones.

        Reads only headers: the JPEG frame header (``tf.image.extract_jpeg_shape``, libjpeg's header parser)
        and the PNG IHDR chunk (bytes 16 to 24). Bytes that are neither JPEG nor PNG (GIF, BMP and others,
        which ``tf.io.decode_image`` would also take) and images above ``max_image_pixels`` fail with
        INVALID_ARGUMENT naming the image's index, its size and the limit.
        """
        return tf.map_fn(self._declared_pixels_one,
                         (encoded_images, tf.range(tf.shape(encoded_images)[0])),
                         fn_output_signature=tf.TensorSpec([], tf.int64))

    def _declared_pixels_one(self, elems: Tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        encoded, index = elems
        is_jpeg = tf.equal(tf.strings.substr(encoded, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
        is_png = tf.equal(tf.strings.substr(encoded, 0, len(_PNG_MAGIC)), _PNG_MAGIC)
        check_format = tf.debugging.Assert(
            tf.logical_or(is_jpeg, is_png),
            ["Input image", index, f"of the batch {NOT_AN_IMAGE_MESSAGE} (its first bytes:",
             tf.strings.substr(encoded, 0, 8), ")"])
        with tf.control_dependencies([check_format]):
            height_width = tf.cond(is_jpeg, lambda: _jpeg_declared_size(encoded),
                                   lambda: _png_declared_size(encoded, index))
        height, width = height_width[0], height_width[1]
        pixels = height * width
        check_size = tf.debugging.Assert(
            pixels <= self._max_image_pixels,
            [tf.strings.format(
                "Input image {} of the batch is {}x{} (WxH) = {} pixels, " + IMAGE_TOO_LARGE_MESSAGE
                + " of {} pixels (export.max_image_pixels)",
                (index, width, height, pixels, tf.constant(self._max_image_pixels, tf.int64)))])
        with tf.control_dependencies([check_size]):
            return tf.identity(pixels)

    def _decode(self, encoded: tf.Tensor) -> tf.Tensor:
        """One image's stored pixel grid, uint8 [H, W, 3], as Model Garden's TfExampleDecoder decodes it (EXIF
        orientation ignored, alpha dropped, grey repeated, 16-bit cut to 8), so served pixels equal training
        pixels. Only called after :meth:`declared_pixels` accepted the bytes."""
        image = tf.io.decode_image(encoded, channels=self._num_channels, expand_animations=False)
        image.set_shape([None, None, self._num_channels])
        return image

    def _preprocess_one(self, encoded: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Model Garden's ``_build_inputs`` (normalize, resize keeping the aspect ratio, pad), with the resize
        done first, on the decoded uint8 image: the full-size image is never copied to float32 (12 bytes a
        pixel instead of 3). Bilinear resizing commutes with the per-channel normalization, and the padding
        is added after it as before, so the result equals Model Garden's up to float rounding."""
        image = self._decode(encoded)
        image, image_info = preprocess_ops.resize_and_crop_image(
            image, self._input_image_size, padded_size=None, aug_scale_min=1.0, aug_scale_max=1.0,
            keep_aspect_ratio=self.params.task.train_data.parser.keep_aspect_ratio)
        image = preprocess_ops.normalize_image(image, offset=preprocess_ops.MEAN_RGB,
                                               scale=preprocess_ops.STDDEV_RGB)
        image = tf.image.pad_to_bounding_box(image, 0, 0, self._padded_size[0], self._padded_size[1])
        return image, image_info

    def preprocess_encoded(self, encoded_images: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Encoded images [B] to model-ready images [B, H_pad, W_pad, 3] and image_info [B, 4, 2].

        image_info rows are Model Garden's: original size, scaled size, scale, offset. The images are
        normalized with the data set's statistics (or ImageNet's without a Transform graph). Every header is
        checked (:meth:`declared_pixels`) before any image is decoded; a request whose images together
        declare more than ``max_image_pixels`` is decoded one image at a time, so its memory stays that of
        one image at the limit.
        """
        with tf.device("cpu:0"):
            pixels = self.declared_pixels(encoded_images)
            with tf.control_dependencies([pixels]):
                encoded_images = tf.identity(encoded_images)
            output_signature = (tf.TensorSpec(self._padded_size + [self._num_channels], tf.float32),
                                tf.TensorSpec([4, 2], tf.float32))

            # One trace of the per-image preprocessing, called by both branches (each would trace its own).
            preprocess_one = tf.function(self._preprocess_one, autograph=False).get_concrete_function(
                tf.TensorSpec([], tf.string))

            def decode_all(parallel_iterations: int):
                return lambda: tf.map_fn(preprocess_one, encoded_images, fn_output_signature=output_signature,
                                         parallel_iterations=parallel_iterations)

            images, image_info = tf.cond(tf.reduce_sum(pixels) <= self._max_image_pixels,
                                         decode_all(32), decode_all(1))
            mean, std = self.pixel_statistics(encoded_images)
            images = preprocessing.renormalize_image(images, mean, std)
        return images, image_info

    def pixel_statistics(self, encoded_images: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """The data set's pixel mean and std, [B, 3], from the Transform graph run on the raw image feature."""
        batch_size = tf.shape(encoded_images)[0]
        if self._transform_output is None:
            return (tf.broadcast_to(tf.constant(preprocessing.DEFAULT_PIXEL_MEAN, tf.float32), [batch_size, 3]),
                    tf.broadcast_to(tf.constant(preprocessing.DEFAULT_PIXEL_STD, tf.float32), [batch_size, 3]))
        # Only the image feature is fed; the layer drops the outputs that need other raw features.
        transformed = self.tft_layer({ef.ENCODED: self._as_raw_feature(encoded_images)})
        return (tf.reshape(tf.cast(transformed[ef.PIXEL_MEAN], tf.float32), [batch_size, 3]),
                tf.reshape(tf.cast(transformed[ef.PIXEL_STD], tf.float32), [batch_size, 3]))

    def _as_raw_feature(self, encoded_images: tf.Tensor):
        """The image feature in the form the raw schema declared it: [B], [B, 1] or variable-length."""
        spec = self._image_feature_spec
        if isinstance(spec, tf.io.VarLenFeature):
            batch_size = tf.shape(encoded_images, out_type=tf.int64)[0]
            indices = tf.stack([tf.range(batch_size), tf.zeros([batch_size], tf.int64)], axis=1)
            return tf.SparseTensor(indices, encoded_images, dense_shape=tf.stack([batch_size, 1]))
        if isinstance(spec, tf.io.FixedLenFeature) and list(spec.shape) == [1]:
            return encoded_images[:, tf.newaxis]
        return encoded_images

    # --- inference ---------------------------------------------------------------------------------------

    # One traced graph shared by both signatures: tracing Mask R-CNN is most of the export's time. Without
    # AutoGraph: this module and Model Garden's network are graph code as written (tf.cond, tf.map_fn), and
    # converting them would only add to the tracing.
    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string)])
    def detect(self, encoded_images: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The signatures' body: encoded images [B] to the served outputs (see the module docstring)."""
        # The saved serving_preprocess function, so the preprocessing is traced once for both.
        preprocessed = self.serving_preprocess(encoded_images)
        images, image_info = preprocessed["images"], preprocessed["image_info"]
        run_model = (tf.function(self._run_model, jit_compile=True, autograph=False) if self._jit_compile
                     else self._run_model)
        detections = run_model(images, image_info[:, 1, :])
        # Resized-image pixels -> normalized coordinates of the original image (Model Garden's own helper).
        detections = self._normalize_coordinates(dict(detections), ["detection_boxes"], image_info)
        outputs = {
            "detection_boxes": tf.cast(detections["detection_boxes"], tf.float32),
            "detection_classes": tf.cast(detections["detection_classes"], tf.int32),
            "detection_scores": tf.cast(detections["detection_scores"], tf.float32),
            "num_detections": tf.cast(detections["num_detections"], tf.int32),
            "detection_masks": tf.cast(detections["detection_masks"], tf.float32),
        }
        outputs = keep_label_map_classes(outputs, self._label_ids)
        outputs["image_size"] = tf.cast(tf.round(image_info[:, 0, :]), tf.int32)
        return outputs

    def _run_model(self, images: tf.Tensor, image_shape: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The network alone, from model-ready images to Model Garden's detections (what ``jit_compile``
        compiles: decoding and the string inputs stay outside, XLA compiles numeric ops only)."""
        batch_size = tf.shape(images)[0]
        anchor_boxes = {level: tf.tile(boxes[tf.newaxis], [batch_size, 1, 1, 1])
                        for level, boxes in self._build_anchor_boxes().items()}
        # model.call, not __call__, as Model Garden's DetectionModule does (Keras cannot save the layer call
        # with these extra inputs).
        detections = self.model.call(images=images, image_shape=image_shape, anchor_boxes=anchor_boxes,
                                     training=False)
        return {key: detections[key] for key in ("detection_boxes", "detection_classes", "detection_scores",
                                                 "num_detections", "detection_masks")}

    def create_variables(self) -> None:
        """Runs the network once, eagerly, on one blank image at the model's input size.

        Model Garden builds the heads' layers, and so creates their variables, at their first call; a
        tf.function whose first trace creates variables is traced a second time, and tracing the network is
        most of the export's time. After this call the signatures are traced once.
        """
        height, width = self._padded_size
        self._run_model(tf.zeros([1, height, width, self._num_channels], tf.float32),
                        tf.constant([[height, width]], tf.float32))

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES_INPUT)])
    def serve_encoded_images(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        return self.detect(images)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_tf_examples(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(examples, {ef.ENCODED: tf.io.FixedLenFeature([], tf.string)})
        return self.detect(parsed[ef.ENCODED])

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES_INPUT)])
    def serving_preprocess(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The signatures' preprocessing alone (saved as a function, not a signature), for debugging and
        for checking that serving feeds the model what training did."""
        model_images, image_info = self.preprocess_encoded(images)
        return {"images": model_images, "image_info": image_info}

    def serving_signatures(self, *, traced: bool = True) -> Dict[str, Any]:
        """The served signatures: their concrete functions, or (``traced=False``) the tf.functions, which
        ``tf.saved_model.save`` traces itself. A function traced before the save is traced again within it
        (the save has a tracing context of its own), so saving the tf.functions traces the network once."""
        functions = {SERVING_SIGNATURE: self.serve_encoded_images, TF_EXAMPLE_SIGNATURE: self.serve_tf_examples}
        if not traced:
            return functions
        return {name: function.get_concrete_function() for name, function in functions.items()}


def keep_label_map_classes(outputs: Dict[str, tf.Tensor], label_ids: Sequence[int]) -> Dict[str, tf.Tensor]:
    """Drops detections of class ids that are not in the label map (gaps such as COCO's unused ids).

    The model has one output per id up to the largest, so with gaps it can (barely trained) predict an id
    no client could name. Those detections are removed and the rest moved up, keeping their (score) order;
    the freed slots are zero like the model's own padding. ``outputs`` hold [B, N, ...] tensors and
    ``num_detections`` [B].
    """
    label_ids = tuple(int(i) for i in label_ids)
    if label_ids == tuple(range(1, len(label_ids) + 1)):
        return outputs  # No gaps: every foreground class the model can predict is in the label map.
    classes = tf.cast(outputs["detection_classes"], tf.int32)
    max_detections = tf.shape(classes)[1]
    slots = tf.range(max_detections)[tf.newaxis, :]
    valid = slots < tf.cast(outputs["num_detections"], tf.int32)[:, tf.newaxis]
    known = tf.reduce_any(classes[..., tf.newaxis] == tf.constant(label_ids, tf.int32), axis=-1)
    keep = tf.logical_and(valid, known)
    # Kept detections first, in their order: a stable sort on "not kept" does exactly that.
    order = tf.argsort(tf.cast(tf.logical_not(keep), tf.int32), axis=1, stable=True)
    num_kept = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    filled = slots < num_kept[:, tf.newaxis]
    result = {"num_detections": tf.cast(num_kept, outputs["num_detections"].dtype)}
    for key, value in outputs.items():
        if key == "num_detections":
            continue
        gathered = tf.gather(value, order, batch_dims=1)
        # [B, N] -> [B, N, 1, ...] to broadcast over the per-detection dimensions.
        mask = tf.reshape(filled, tf.concat([tf.shape(filled), tf.ones([value.shape.rank - 2], tf.int32)], 0))
        result[key] = tf.where(mask, gathered, tf.zeros_like(gathered))
    return result


def _check_compatible(params: cfg.ExperimentConfig, label_map: label_map_lib.LabelMap) -> None:
    model_config = params.task.model
    if not model_config.include_mask:
        raise ValueError("the model has no mask head (task.model.include_mask is False)")
    if model_config.num_classes != label_map.num_classes:
        raise ValueError(f"the model has {model_config.num_classes} class outputs but the label map needs "
                         f"{label_map.num_classes} (largest id {max(label_map.ids, default=0)} + background)")


def default_warmup_images() -> Sequence[bytes]:
    """Two small synthetic images, one PNG and one JPEG of another size, for the warm-up requests."""
    y, x = tf.meshgrid(tf.range(48), tf.range(64), indexing="ij")
    gradient = tf.cast(tf.stack([y * 5, x * 4, (x + y) * 2], axis=-1) % 256, tf.uint8)
    return [tf.io.encode_png(gradient).numpy(), tf.io.encode_jpeg(tf.transpose(gradient, [1, 0, 2])).numpy()]


def write_warmup_requests(serving_model_dir: str, images: Sequence[bytes]) -> str:
    """Writes TF Serving warm-up requests: one request per image, then one with all of them.

    TF Serving replays these when it loads the model, so the first real request does not pay for tracing
    and memory allocation. Returns the file's path.
    """
    from tensorflow_serving.apis import model_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top

    images = list(images)
    if not images:
        raise ValueError("no warm-up images")
    path = os.path.join(serving_model_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    batches = [[image] for image in images] + ([images] if len(images) > 1 else [])
    with tf.io.TFRecordWriter(path) as writer:
        for batch in batches:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=SERVING_SIGNATURE))
            request.inputs[IMAGES_INPUT].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string, shape=[len(batch)]))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def export_serving_model(model: tf_keras.Model, config: Union[TrainerConfig, cfg.ExperimentConfig],
                         label_map: label_map_lib.LabelMap, serving_model_dir: str, *,
                         tf_transform_output: Optional["tft.TFTransformOutput"] = None,
                         warmup_images: Optional[Sequence[bytes]] = None,
                         precision: Optional[str] = None, jit_compile: Optional[bool] = None,
                         max_image_pixels: Optional[int] = None) -> str:
    """Exports ``model`` as a SavedModel in ``serving_model_dir`` (no version folder); returns the folder.

    Follows Model Garden's own export recipe: the weights go through a checkpoint into a fresh inference
    copy of the model built from ``config`` in float32, and that copy is saved. Saving the trained Keras
    object itself fails (Keras would trace its training call, which needs ground truth), and the served
    numbers should not depend on the precision training used.

    Args:
      model: the trained Model Garden Mask R-CNN (``MaskRCNNModel``).
      config: the trainer's config, or the Model Garden ExperimentConfig the model was built from (its
        architecture, input size, levels, anchors and detection settings).
      label_map: the data set's label map; copied into the SavedModel as ``assets/label_map.json``.
      serving_model_dir: where to write (local or any ``tf.io.gfile`` path), e.g. the TFX Trainer's
        ``fn_args.serving_model_dir``.
      tf_transform_output: the Transform step's ``tft.TFTransformOutput``; its graph computes the pixel
        statistics inside the signatures. Without it the model uses ImageNet's (Model Garden's default).
      warmup_images: encoded JPEG/PNG images for the TF Serving warm-up requests (default: two small
        synthetic ones).
      precision: ``"float32"`` or ``"bfloat16"``; None (default) takes the TrainerConfig's ``export.precision``
        (float32 for a Model Garden ExperimentConfig). bfloat16: the backbone, FPN and the heads' hidden layers
        compute in bfloat16 (weights stay float32 in the SavedModel), the heads' final predictions and all
        box decoding, NMS and RoI cropping in float32. Signatures and output dtypes are unchanged. Worth it
        where the hardware has bfloat16 arithmetic (CPUs with AVX512-BF16 or AMX through oneDNN, which
        TensorFlow enables by default on x86 Linux; Ampere+ GPUs; TPUs). Measured by
        ``benchmarks/inference_latency.py`` (R50-FPN, 640x640, 2 AVX512-BF16 cores): 1.7x faster than float32
        per image; on the float32 export's top detections, scores within 2e-3, boxes within 0.1 pixel, mask
        probabilities within 5e-3 on average. Where the CPU lacks bfloat16 arithmetic it is emulated and
        slower than float32.
      jit_compile: XLA-compiles the network (preprocessing stays outside), recompiled for each new batch size
        at its first request; None (default) takes the TrainerConfig's ``export.jit_compile`` (off for an
        ExperimentConfig). Off in every preset: on CPU, XLA's convolutions are slower than oneDNN's (0.8x the
        float32 export's speed in the benchmark above); meant for GPUs and TPUs.
      max_image_pixels: the most pixels an image may declare in its header; larger ones are refused with
        INVALID_ARGUMENT before decoding. None (default) takes the TrainerConfig's ``export.max_image_pixels``
        (:data:`maskrcnn_tfx.images.DEFAULT_MAX_IMAGE_PIXELS` for an ExperimentConfig).

    Raises:
      ValueError: the model has no mask head or its class count does not fit the label map.
      AssertionError: a weight of the inference copy found no value in the trained model.
    """
    export_config = config.export if isinstance(config, TrainerConfig) else None
    if precision is None:
        precision = export_config.precision if export_config else "float32"
    if jit_compile is None:
        jit_compile = export_config.jit_compile if export_config else False
    if max_image_pixels is None:
        max_image_pixels = (export_config.max_image_pixels if export_config
                            else images_lib.DEFAULT_MAX_IMAGE_PIXELS)
    # A copy: Model Garden's module may adjust the params (e.g. the NMS version) it builds from.
    params = experiment_config_of(config, label_map).replace()
    _check_compatible(params, label_map)
    staging = tempfile.mkdtemp(prefix="maskrcnn_export_")
    try:
        weights = tf.train.Checkpoint(model=model).write(os.path.join(staging, "weights", "model"))
        # The asset is copied from this file at save time; its name is the name inside assets/.
        label_map_file = os.path.join(staging, label_map_lib.FILE_NAME)
        label_map.save(label_map_file)
        with _float32_policy():
            module = MaskRCNNServingModule(params, None, label_map, label_map_file,
                                           tf_transform_output=tf_transform_output, precision=precision,
                                           jit_compile=jit_compile, max_image_pixels=max_image_pixels)
            # Variables created later (the heads', at their first call) get their values as they appear.
            restored = tf.train.Checkpoint(model=module.model).read(weights)
            if precision == "float32":
                # (bfloat16 keeps building its heads in the trace, where its float32 outputs were measured.)
                module.create_variables()
                # Every variable exists: the save traces the signatures, once.
                signatures = module.serving_signatures(traced=False)
            else:
                # The heads' variables appear in the trace; they are checked before anything is written.
                signatures = module.serving_signatures()
            # Every trained weight must have found its place in the inference copy.
            restored.assert_consumed()
            with _without_keras_layer_traces():
                tf.saved_model.save(module, serving_model_dir, signatures=signatures)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_warmup_requests(serving_model_dir,
                          default_warmup_images() if warmup_images is None else warmup_images)
    return serving_model_dir


@contextlib.contextmanager
def _keras_policy(name: str) -> Iterator[None]:
    """Builds Keras layers with the global mixed-precision policy ``name`` within the block."""
    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def _without_keras_layer_traces() -> Iterator[None]:
    """Saves Keras layers within the block without their own call traces.

    ``tf.saved_model.save`` otherwise traces every Keras layer's call again for Keras' revival (Keras' own
    ``save_traces``), which cost about half of the save and slowed every load of the model, while the served
    signatures and functions never use those traces. Where tf_keras no longer has the option, traces are
    saved as before (slower, same model).
    """
    try:
        from tf_keras.src.saving.legacy.saved_model import utils as keras_saved_model_utils  # pylint: disable=g-import-not-at-top
        scope = keras_saved_model_utils.keras_option_scope(
            save_traces=False, in_tf_saved_model_scope=keras_saved_model_utils.in_tf_saved_model_scope())
    except (ImportError, AttributeError, TypeError):
        scope = contextlib.nullcontext()
    with scope:
        yield


def _float32_policy():
    """Builds Keras layers in float32 within the block, whatever global mixed-precision policy is set."""
    return _keras_policy("float32")


def _build_in_bfloat16_with_float32_outputs(head: tf_keras.layers.Layer, final_layers: Sequence[str]) -> None:
    """Makes the sub-layers ``final_layers`` (the predictions) of a Model Garden head made under the
    mixed_bfloat16 policy compute in float32 (so the head returns float32), the others staying bfloat16.

    Model Garden's factory builds the heads with the model; a head not built yet makes its layers when first
    called, so then its ``build`` is wrapped to do the same under the bfloat16 policy."""

    def final_layers_in_float32():
        for name in final_layers:
            # Its weights, made under mixed_bfloat16, are float32 variables read in the layer's compute dtype.
            getattr(head, name)._set_dtype_policy("float32")  # pylint: disable=protected-access

    if head.built:
        final_layers_in_float32()
        return
    build = head.build

    def build_mixed(input_shape):
        with _keras_policy("mixed_bfloat16"):
            build(input_shape)
        final_layers_in_float32()

    head.build = build_mixed


def load_label_map(serving_model_dir: str) -> label_map_lib.LabelMap:
    """The label map exported with a model."""
    return label_map_lib.LabelMap.load(os.path.join(serving_model_dir, LABEL_MAP_ASSET))
