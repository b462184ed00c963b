"""The example format: TF Model Garden's detection tf.Example, owned here.

Contract 1 of docs/architecture.md: every part of the product reads and writes examples through this module; no
other module spells a feature key. The keys are the ones Model Garden's ``TfExampleDecoder`` parses
(``official/vision/dataloaders/tf_example_decoder.py``), so its Mask R-CNN input parser reads our records as
they are.

Conventions:
- ``image/source_id`` is a numeric string (Model Garden calls ``tf.strings.to_number`` on it).
- Boxes are normalized to [0, 1] of the image, ``ymin <= ymax`` and ``xmin <= xmax``.
- One PNG per instance in ``image/object/mask``, of the full image size, pixel values 0 or 1.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
from typing import List, Sequence

import numpy as np

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
FILENAME = "image/filename"
SOURCE_ID = "image/source_id"
KEY_SHA256 = "image/key/sha256"
BBOX_XMIN = "image/object/bbox/xmin"
BBOX_YMIN = "image/object/bbox/ymin"
BBOX_XMAX = "image/object/bbox/xmax"
BBOX_YMAX = "image/object/bbox/ymax"
CLASS_LABEL = "image/object/class/label"
CLASS_TEXT = "image/object/class/text"
IS_CROWD = "image/object/is_crowd"
AREA = "image/object/area"
MASK = "image/object/mask"

# Added by the Transform step (tf.Transform full-pass analyzers over the training split): the data set's
# per-channel pixel mean and standard deviation, in [0, 255] RGB units, float [3] on every transformed example.
PIXEL_MEAN = "image/pixel_mean"
PIXEL_STD = "image/pixel_std"

IMAGE_FORMATS = ("jpeg", "png")


@dataclasses.dataclass
class InstanceExample:
    """One image and its instances, in the product's units (see the module docstring)."""

    source_id: int
    encoded: bytes
    format: str
    height: int
    width: int
    filename: str = ""
    # [N, 4] float32, normalized (ymin, xmin, ymax, xmax).
    boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float32))
    classes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int64))
    class_texts: List[str] = dataclasses.field(default_factory=list)
    is_crowd: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int64))
    areas: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.float32))
    # One encoded PNG per instance, full image size, values 0/1.
    masks_png: List[bytes] = dataclasses.field(default_factory=list)

    @property
    def num_instances(self) -> int:
        return int(len(self.classes))

    def decoded_masks(self) -> np.ndarray:
        """[N, H, W] uint8 masks of values 0/1."""
        if not self.masks_png:
            return np.zeros((0, self.height, self.width), np.uint8)
        return np.stack([decode_png_mask(m) for m in self.masks_png])


def encode_png_mask(mask: np.ndarray) -> bytes:
    """A binary [H, W] mask as a PNG of values 0/1 (deterministic bytes for the same mask)."""
    import cv2  # pylint: disable=g-import-not-at-top  (cv2 is 3x faster than PIL at PNG encoding)

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask, dtype=np.uint8))
    if not ok:
        raise ValueError("PNG encoding of a mask failed")
    return buf.tobytes()


def decode_png_mask(png: bytes) -> np.ndarray:
    """The inverse of :func:`encode_png_mask`: [H, W] uint8 of values 0/1."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    arr = np.asarray(Image.open(io.BytesIO(png)))
    if arr.ndim == 3:
        arr = arr[..., 0]
    return (arr > 0).astype(np.uint8)


def _bytes_feature(values: Sequence[bytes]):
    from tensorflow.core.example import feature_pb2  # pylint: disable=g-import-not-at-top

    return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=list(values)))


def _int64_feature(values):
    from tensorflow.core.example import feature_pb2  # pylint: disable=g-import-not-at-top

    return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(v) for v in values]))


def _float_feature(values):
    from tensorflow.core.example import feature_pb2  # pylint: disable=g-import-not-at-top

    return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[float(v) for v in values]))


def to_tf_example(example: InstanceExample):
    """Builds the ``tf.train.Example`` proto of one image."""
    from tensorflow.core.example import example_pb2, feature_pb2  # pylint: disable=g-import-not-at-top

    if example.format not in IMAGE_FORMATS:
        raise ValueError(f"image format {example.format!r} is not one of {IMAGE_FORMATS}")
    n = example.num_instances
    boxes = np.asarray(example.boxes, np.float32).reshape(-1, 4)
    for name, seq in (("boxes", boxes), ("class_texts", example.class_texts), ("is_crowd", example.is_crowd),
                      ("areas", example.areas), ("masks_png", example.masks_png)):
        if len(seq) != n:
            raise ValueError(f"source_id {example.source_id}: {len(seq)} {name} for {n} instances")
    feature = {
        ENCODED: _bytes_feature([example.encoded]),
        FORMAT: _bytes_feature([example.format.encode()]),
        HEIGHT: _int64_feature([example.height]),
        WIDTH: _int64_feature([example.width]),
        FILENAME: _bytes_feature([example.filename.encode()]),
        SOURCE_ID: _bytes_feature([str(int(example.source_id)).encode()]),
        KEY_SHA256: _bytes_feature([hashlib.sha256(example.encoded).hexdigest().encode()]),
        BBOX_YMIN: _float_feature(boxes[:, 0]),
        BBOX_XMIN: _float_feature(boxes[:, 1]),
        BBOX_YMAX: _float_feature(boxes[:, 2]),
        BBOX_XMAX: _float_feature(boxes[:, 3]),
        CLASS_LABEL: _int64_feature(example.classes),
        CLASS_TEXT: _bytes_feature([t.encode() for t in example.class_texts]),
        IS_CROWD: _int64_feature(example.is_crowd),
        AREA: _float_feature(example.areas),
        MASK: _bytes_feature(example.masks_png),
    }
    return example_pb2.Example(features=feature_pb2.Features(feature=feature))


def from_tf_example(serialized: bytes) -> InstanceExample:
    """Parses a serialized example back into an :class:`InstanceExample` (no TensorFlow graph needed)."""
    from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top

    proto = example_pb2.Example.FromString(serialized)
    f = proto.features.feature

    def floats(key):
        return np.asarray(f[key].float_list.value, np.float32) if key in f else np.zeros((0,), np.float32)

    def ints(key):
        return np.asarray(f[key].int64_list.value, np.int64) if key in f else np.zeros((0,), np.int64)

    def bytes_list(key):
        return list(f[key].bytes_list.value) if key in f else []

    def scalar_bytes(key, default=b""):
        values = bytes_list(key)
        return values[0] if values else default

    boxes = np.stack([floats(BBOX_YMIN), floats(BBOX_XMIN), floats(BBOX_YMAX), floats(BBOX_XMAX)], axis=-1)
    return InstanceExample(
        source_id=int(scalar_bytes(SOURCE_ID, b"0").decode()),
        encoded=scalar_bytes(ENCODED),
        format=scalar_bytes(FORMAT).decode(),
        height=int(ints(HEIGHT)[0]) if len(ints(HEIGHT)) else 0,
        width=int(ints(WIDTH)[0]) if len(ints(WIDTH)) else 0,
        filename=scalar_bytes(FILENAME).decode(),
        boxes=boxes.reshape(-1, 4),
        classes=ints(CLASS_LABEL),
        class_texts=[t.decode() for t in bytes_list(CLASS_TEXT)],
        is_crowd=ints(IS_CROWD),
        areas=floats(AREA),
        masks_png=bytes_list(MASK),
    )
