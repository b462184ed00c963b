"""The Transform step's preprocessing and the pixel renormalization shared by training and serving.

Design: Model Garden's input Parser and its serving ``DetectionModule`` normalize
images with fixed ImageNet constants (``preprocess_ops.MEAN_RGB`` / ``STDDEV_RGB``). We keep that code as it
is and apply :func:`renormalize_image` after it, which undoes the ImageNet normalization and applies the data
set's own per-channel statistics. Those statistics are computed once, by tf.Transform full-pass analyzers over
the training split, and travel with the Transform graph:

- :func:`preprocessing_fn` passes every raw feature through unchanged and adds ``PIXEL_MEAN`` and
  ``PIXEL_STD`` (float [3], [0, 255] RGB units) to every example, so the trainer's input pipeline reads them
  from the transformed examples;
- the exported model runs the same Transform graph on the raw image features inside its signatures, so the
  served model normalizes exactly as training did.

With :data:`DEFAULT_PIXEL_MEAN` / :data:`DEFAULT_PIXEL_STD` (ImageNet's) the renormalization is the identity,
which is how a run without a Transform step behaves.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, Union

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
import tensorflow as tf

from maskrcnn_tfx import example_format as ef

# ImageNet's per-channel statistics in [0, 255] RGB: exactly Model Garden's preprocess_ops.MEAN_RGB and
# STDDEV_RGB (0.485/0.456/0.406 and 0.229/0.224/0.225 times 255), spelled out so that importing this module
# does not pull in Model Garden. tests/test_preprocessing.py checks they agree.
DEFAULT_PIXEL_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
DEFAULT_PIXEL_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Floor of a data set's per-channel standard deviation, in [0, 255] units. A channel that is constant over the
# whole data set (e.g. a grayscale set decoded to RGB has three equal channels, which is fine; a set of one
# solid colour is not) would otherwise make the renormalization divide by zero.
MIN_PIXEL_STD = 1.0

NUM_CHANNELS = 3

# Raw features with one value per example; every other raw feature has one value per instance.
_SCALAR_STRING_KEYS = (ef.ENCODED, ef.FORMAT, ef.FILENAME, ef.SOURCE_ID, ef.KEY_SHA256)
_SCALAR_INT_KEYS = (ef.HEIGHT, ef.WIDTH)
_PER_INSTANCE_FLOAT_KEYS = (ef.BBOX_YMIN, ef.BBOX_XMIN, ef.BBOX_YMAX, ef.BBOX_XMAX, ef.AREA)
_PER_INSTANCE_INT_KEYS = (ef.CLASS_LABEL, ef.IS_CROWD)
_PER_INSTANCE_STRING_KEYS = (ef.CLASS_TEXT, ef.MASK)

FeatureSpec = Union[tf.io.FixedLenFeature, tf.io.VarLenFeature]
TensorLike = Union[tf.Tensor, tf.SparseTensor, tf.RaggedTensor]


def raw_feature_spec() -> Dict[str, FeatureSpec]:
    """The parsing spec of the raw examples written by :func:`maskrcnn_tfx.example_format.to_tf_example`.

    Per-image features are scalars, per-instance features variable-length. A TFX pipeline normally takes the
    raw schema from SchemaGen instead; :func:`preprocessing_fn` accepts either form of the scalar features.
    """
    spec: Dict[str, FeatureSpec] = {}
    for key in _SCALAR_STRING_KEYS:
        spec[key] = tf.io.FixedLenFeature([], tf.string)
    for key in _SCALAR_INT_KEYS:
        spec[key] = tf.io.FixedLenFeature([], tf.int64)
    for key in _PER_INSTANCE_FLOAT_KEYS:
        spec[key] = tf.io.VarLenFeature(tf.float32)
    for key in _PER_INSTANCE_INT_KEYS:
        spec[key] = tf.io.VarLenFeature(tf.int64)
    for key in _PER_INSTANCE_STRING_KEYS:
        spec[key] = tf.io.VarLenFeature(tf.string)
    return spec


def raw_schema():
    """:func:`raw_feature_spec` as a ``tensorflow_metadata`` Schema proto (for Transform without SchemaGen)."""
    from tensorflow_transform.tf_metadata import schema_utils  # pylint: disable=g-import-not-at-top

    return schema_utils.schema_from_feature_spec(raw_feature_spec())


def image_feature_spec() -> Dict[str, FeatureSpec]:
    """The raw features the Transform graph's pixel statistics depend on: just the encoded image.

    The exported model feeds only these to ``transform_features_layer()`` (which drops unused features).
    """
    return {ef.ENCODED: raw_feature_spec()[ef.ENCODED]}


def _one_per_example(values: TensorLike, default: str = "") -> tf.Tensor:
    """A [B] tensor of a feature that has one value per example, whichever form the raw schema gave it.

    SchemaGen may declare scalar features as fixed-length ([B] or [B, 1]) or as variable-length (sparse or
    ragged, [B, None]); the first value is used, ``default`` where an example has none.
    """
    if isinstance(values, tf.SparseTensor):
        values = tf.sparse.to_dense(values, default_value=default)
    elif isinstance(values, tf.RaggedTensor):
        values = values.to_tensor(default_value=default)
    if values.shape.rank == 1:
        return values
    values = tf.reshape(values, [tf.shape(values)[0], -1])
    # Pads a column so that examples without a value read the default instead of failing.
    padded = tf.concat([values, tf.fill([tf.shape(values)[0], 1], tf.constant(default, values.dtype))], axis=1)
    return padded[:, 0]


def _image_pixel_sums(encoded: tf.Tensor) -> tf.Tensor:
    """Per image: [pixel count, sum of each channel, sum of squares of each channel], int64 [7].

    Decoded exactly as Model Garden's TfExampleDecoder decodes (``tf.io.decode_image``, 3 channels). The sums
    come from each channel's histogram of its 256 values: exact integers (a COCO-sized set stays far below
    2**63), so the statistics do not depend on batching, and with little memory: the decoded image and one
    channel as int32 at a time, where squaring all pixels as int64 takes 48 bytes a pixel more (measured on an
    8000x6000 PNG: +0.6 GB of peak resident memory, against +2.3 GB).
    """
    image = tf.io.decode_image(encoded, channels=NUM_CHANNELS, expand_animations=False)
    channel_counts = []
    for c in range(NUM_CHANNELS):
        # One channel after the other, so only one int32 copy of a channel exists at a time.
        with tf.control_dependencies(channel_counts[-1:]):
            channel_counts.append(tf.math.bincount(tf.cast(image[:, :, c], tf.int32), minlength=256,
                                                   maxlength=256, dtype=tf.int64))
    counts = tf.stack(channel_counts)  # [3, 256]
    values = tf.range(256, dtype=tf.int64)
    count = tf.reduce_sum(counts[0])[tf.newaxis]
    return tf.concat([count, tf.reduce_sum(counts * values, axis=1),
                      tf.reduce_sum(counts * values * values, axis=1)], axis=0)


def pixel_statistics(encoded_images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Full-pass analyzers: the data set's per-channel pixel mean and std (float32 [3], [0, 255] units).

    Pixel-weighted over all decoded pixels of the analyzed split (a large image counts more than a small one),
    the population standard deviation, floored at :data:`MIN_PIXEL_STD`. Must be called inside a
    tf.Transform ``preprocessing_fn``.
    """
    import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top

    # Decoding one image at a time keeps the memory of a batch to one decoded image, whatever the batch size.
    per_image = tf.map_fn(_image_pixel_sums, encoded_images,
                          fn_output_signature=tf.TensorSpec([1 + 2 * NUM_CHANNELS], tf.int64))
    totals = tf.cast(tft.sum(per_image, reduce_instance_dims=False), tf.float64)
    count, sums, squares = totals[0], totals[1:1 + NUM_CHANNELS], totals[1 + NUM_CHANNELS:]
    has_pixels = count > 0
    safe_count = tf.maximum(count, 1.0)
    mean = sums / safe_count
    variance = tf.maximum(squares / safe_count - mean * mean, 0.0)
    # An empty analyzed split has no statistics of its own: fall back to ImageNet's (the identity).
    mean = tf.where(has_pixels, mean, tf.constant(DEFAULT_PIXEL_MEAN, tf.float64))
    std = tf.where(has_pixels, tf.sqrt(variance), tf.constant(DEFAULT_PIXEL_STD, tf.float64))
    std = tf.maximum(std, MIN_PIXEL_STD)
    return {ef.PIXEL_MEAN: tf.cast(mean, tf.float32), ef.PIXEL_STD: tf.cast(std, tf.float32)}


def preprocessing_fn(inputs: Mapping[str, TensorLike]) -> Dict[str, TensorLike]:
    """The tf.Transform preprocessing: raw features unchanged, plus PIXEL_MEAN and PIXEL_STD on every example.

    Feature values (images, boxes, masks) are not transformed here: Model Garden's decoder and Parser read the
    transformed examples exactly as they read raw ones, and do the per-example preprocessing (resize,
    augmentation) in the trainer where it belongs. Only the data set statistics need a full pass.
    """
    outputs: Dict[str, TensorLike] = dict(inputs)
    encoded = _one_per_example(inputs[ef.ENCODED])
    batch_size = tf.shape(encoded)[0]
    for key, stat in pixel_statistics(encoded).items():
        outputs[key] = tf.broadcast_to(stat, [batch_size, NUM_CHANNELS])
    return outputs


def renormalize_image(images: tf.Tensor, pixel_mean: Union[tf.Tensor, Sequence[float]],
                      pixel_std: Union[tf.Tensor, Sequence[float]]) -> tf.Tensor:
    """Turns an ImageNet-normalized image into one normalized with the data set's statistics.

    ``images`` come out of Model Garden's ``normalize_image`` (``(x - MEAN_RGB) / STDDEV_RGB``); the result
    is ``(x - pixel_mean) / pixel_std``. Computed as one per-channel affine map, so it also holds for resized
    images (bilinear resizing commutes with it) and applies equally to padding, which therefore has the same
    value in training and serving.

    Args:
      images: float [H, W, 3] or [B, H, W, 3].
      pixel_mean: [3] or [B, 3] in [0, 255] units (per image when batched).
      pixel_std: [3] or [B, 3] in [0, 255] units; floored at :data:`MIN_PIXEL_STD`.

    Returns:
      The renormalized images, same shape and dtype as ``images``. The identity with the default statistics.
    """
    images = tf.convert_to_tensor(images)
    dtype = images.dtype
    mean = tf.convert_to_tensor(pixel_mean, tf.float32)
    std = tf.maximum(tf.convert_to_tensor(pixel_std, tf.float32), MIN_PIXEL_STD)
    imagenet_mean = tf.constant(DEFAULT_PIXEL_MEAN, tf.float32)
    imagenet_std = tf.constant(DEFAULT_PIXEL_STD, tf.float32)
    # out = (x * s0 + m0 - m) / s  =  x * scale + offset
    scale = imagenet_std / std
    offset = (imagenet_mean - mean) / std
    # Per-image stats [B, 3] broadcast over [B, H, W, 3]: insert the two spatial axes.
    if scale.shape.rank == 2:
        scale = scale[:, tf.newaxis, tf.newaxis, :]
        offset = offset[:, tf.newaxis, tf.newaxis, :]
    return tf.cast(tf.cast(images, tf.float32) * scale + offset, dtype)
