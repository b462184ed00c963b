"""Per-example annotation checks: what can be wrong with one serialized detection tf.Example.

These are pure functions (no TFX, no Beam), shared by the ``AnnotationValidator`` pipeline component and by
anyone who wants to vet records before a pipeline sees them::

    from maskrcnn_tfx.components.annotation_checks import check_example
    for problem in check_example(record_bytes, LabelMap.load("label_map.json")):
        print(problem.describe())

Each :class:`Problem` names the record (``image/source_id``, ``image/filename``, instance index where the
problem is an instance's) and the rule it breaks, one of :data:`RULES`. The rules are those of the example
format's contract (``maskrcnn_tfx/example_format.py``) plus what Model Garden's decoder and Mask R-CNN's
targets need to not fail or, worse, train on garbage: a box outside its image, a mask of another size than its
image, a class id the model has no output for.

Cost: images are decoded once, JPEGs in PIL's draft mode (1/8 scale: every compressed byte is still read, so
truncation is caught, for a fraction of a full decode); masks are decoded in full, since only their pixels
tell whether they are binary.
"""
from __future__ import annotations

import dataclasses
import io
import math
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx.data.coco import BadImageError, ImageTooLargeError, inspect_image, size_mismatch_problem
from maskrcnn_tfx.images import DEFAULT_MAX_IMAGE_PIXELS
from maskrcnn_tfx.label_map import LabelMap

__all__ = ["RULES", "Problem", "ExampleCheck", "check_example", "inspect_example", "BOX_TOLERANCE"]

# Rule names, as they appear in problems and reports, with what each means.
RECORD_UNPARSEABLE = "record_unparseable"
SOURCE_ID_NOT_NUMERIC = "source_id_not_numeric"
IMAGE_SIZE_INVALID = "image_size_invalid"
IMAGE_UNDECODABLE = "image_undecodable"
IMAGE_TOO_LARGE = "image_too_large"
IMAGE_SIZE_MISMATCH = "image_size_mismatch"
INSTANCE_LISTS_MISMATCH = "instance_lists_mismatch"
MASK_COUNT_MISMATCH = "mask_count_mismatch"
BOX_NOT_FINITE = "box_not_finite"
BOX_OUTSIDE_IMAGE = "box_outside_image"
BOX_INVERTED = "box_inverted"
BOX_DEGENERATE = "box_degenerate"
MASK_UNDECODABLE = "mask_undecodable"
MASK_SIZE_MISMATCH = "mask_size_mismatch"
MASK_NOT_BINARY = "mask_not_binary"
LABEL_NOT_IN_MAP = "label_not_in_map"
LABEL_TEXT_MISMATCH = "label_text_mismatch"

RULES: Dict[str, str] = {
    RECORD_UNPARSEABLE: "the record is not a serialized tf.train.Example",
    SOURCE_ID_NOT_NUMERIC: "image/source_id is absent or not a non-negative integer (Model Garden parses it "
                           "as a number)",
    IMAGE_SIZE_INVALID: "image/height or image/width is absent or not one positive integer",
    IMAGE_UNDECODABLE: "image/encoded is absent, corrupt, truncated, or neither JPEG nor PNG",
    IMAGE_TOO_LARGE: "the image's header declares more pixels than the limit (export.max_image_pixels, the "
                     "served model's); it is refused before decoding",
    IMAGE_SIZE_MISMATCH: "the decoded image's size (its stored pixel grid: EXIF orientation is ignored) "
                         "differs from image/height x image/width",
    INSTANCE_LISTS_MISMATCH: "the per-instance lists (4 box coordinates, class label; class text, is_crowd "
                             "and area where present) differ in length",
    MASK_COUNT_MISMATCH: "the number of masks differs from the number of boxes",
    BOX_NOT_FINITE: "a box coordinate is NaN or infinite",
    BOX_OUTSIDE_IMAGE: "a box coordinate is outside [0, 1] (normalized to the image)",
    BOX_INVERTED: "a box has ymin > ymax or xmin > xmax",
    BOX_DEGENERATE: "a box has zero height or width",
    MASK_UNDECODABLE: "a mask is not a decodable PNG",
    MASK_SIZE_MISMATCH: "a mask's size differs from image/height x image/width",
    MASK_NOT_BINARY: "a mask has pixel values other than 0 and 1",
    LABEL_NOT_IN_MAP: "a class id is not in the label map",
    LABEL_TEXT_MISMATCH: "a class text differs from the label map's name for its class id",
}

# Normalized boxes are float32 ratios (x / width); rounding puts them up to ~1e-7 past the border. The slack
# stays far below a pixel for any image side under 100,000 pixels.
BOX_TOLERANCE = 1e-5

_NUMERIC_ID = re.compile(r"^[0-9]{1,19}$")
_INT64_MAX = 2 ** 63 - 1
# PIL modes whose pixel array holds the values a PNG decoder returns for one channel; others (palette, RGB,
# with alpha) are converted to grayscale first, as Model Garden's decode_png(channels=1) does.
_SINGLE_CHANNEL_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L")
_MAX_VALUES_SHOWN = 5


@dataclasses.dataclass(frozen=True)
class Problem:
    """One broken rule in one record; ``instance`` is None for a problem of the whole example."""

    source_id: str
    filename: str
    rule: str
    detail: str
    instance: Optional[int] = None
    file: str = ""  # The TFRecord file holding the record, where the caller knows it.

    def describe(self) -> str:
        """One line for logs and error messages, e.g. ``source_id 7 (000007.png) instance 2: rule: detail``."""
        where = f"source_id {self.source_id}" if self.source_id else "record without source_id"
        if self.filename:
            where += f" ({self.filename})"
        if self.file:
            where += f" in {self.file}"
        if self.instance is not None:
            where += f" instance {self.instance}"
        return f"{where}: {self.rule}: {self.detail}"

    def to_dict(self) -> Dict[str, object]:
        return {"source_id": self.source_id, "filename": self.filename, "instance": self.instance,
                "rule": self.rule, "detail": self.detail, "file": self.file}

    @classmethod
    def from_dict(cls, body: Dict[str, object]) -> "Problem":
        instance = body.get("instance")
        return cls(source_id=str(body.get("source_id", "")), filename=str(body.get("filename", "")),
                   rule=str(body["rule"]), detail=str(body.get("detail", "")),
                   instance=None if instance is None else int(instance), file=str(body.get("file", "")))


@dataclasses.dataclass
class ExampleCheck:
    """The result of checking one record: who it is, how many instances it has, and what is wrong with it."""

    source_id: str
    filename: str
    num_instances: int
    problems: List[Problem]


def check_example(serialized: bytes, label_map: LabelMap,
                  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> List[Problem]:
    """The problems of one serialized example (empty when it satisfies every rule of :data:`RULES`)."""
    return inspect_example(serialized, label_map, max_image_pixels).problems


def inspect_example(serialized: bytes, label_map: LabelMap,
                    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ExampleCheck:
    """Checks one serialized example against every rule of :data:`RULES`.

    An image whose header declares more than ``max_image_pixels`` pixels is not decoded (IMAGE_TOO_LARGE).

    Every rule is checked independently, so one call lists all of a record's problems, not only the first;
    an instance-level check runs on the instances whose data is present (e.g. with 3 boxes and 2 masks, the
    masks of instances 0 and 1 are still checked).
    """
    from google.protobuf.message import DecodeError  # pylint: disable=g-import-not-at-top
    from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top

    try:
        proto = example_pb2.Example.FromString(serialized)
    except DecodeError as e:
        return ExampleCheck("", "", 0, [Problem("", "", RECORD_UNPARSEABLE, f"not a tf.train.Example ({e})")])
    features = proto.features.feature

    def bytes_values(key: str) -> List[bytes]:
        return list(features[key].bytes_list.value) if key in features else []

    def int_values(key: str) -> List[int]:
        return list(features[key].int64_list.value) if key in features else []

    def float_values(key: str) -> List[float]:
        return list(features[key].float_list.value) if key in features else []

    def text(key: str) -> str:
        values = bytes_values(key)
        return values[0].decode("utf-8", errors="replace") if values else ""

    source_id, filename = text(ef.SOURCE_ID), text(ef.FILENAME)
    problems: List[Problem] = []

    def add(rule: str, detail: str, instance: Optional[int] = None) -> None:
        problems.append(Problem(source_id, filename, rule, detail, instance))

    if not _NUMERIC_ID.match(source_id) or int(source_id) > _INT64_MAX:
        add(SOURCE_ID_NOT_NUMERIC, f"image/source_id is {source_id!r}" if ef.SOURCE_ID in features
            else "image/source_id is absent")

    height, width = _image_size(int_values(ef.HEIGHT), int_values(ef.WIDTH), add)
    _check_image(bytes_values(ef.ENCODED), height, width, max_image_pixels, add)

    ymin, xmin = float_values(ef.BBOX_YMIN), float_values(ef.BBOX_XMIN)
    ymax, xmax = float_values(ef.BBOX_YMAX), float_values(ef.BBOX_XMAX)
    labels, masks = int_values(ef.CLASS_LABEL), bytes_values(ef.MASK)
    texts = bytes_values(ef.CLASS_TEXT)
    optional_lists = {"class texts": texts, "is_crowd flags": int_values(ef.IS_CROWD),
                      "areas": float_values(ef.AREA)}
    num_boxes = _check_list_lengths(ymin, xmin, ymax, xmax, labels, masks, optional_lists, add)

    for i in range(num_boxes):
        _check_box(i, ymin[i], xmin[i], ymax[i], xmax[i], add)
    for i, label in enumerate(labels):
        if label not in label_map:
            add(LABEL_NOT_IN_MAP, f"class id {label} is not in the label map ({_describe_ids(label_map)})", i)
        elif i < len(texts):
            name = texts[i].decode("utf-8", errors="replace")
            if name != label_map.name_of(label):
                add(LABEL_TEXT_MISMATCH, f"class id {label} is {label_map.name_of(label)!r} in the label map but "
                                         f"the record's class text is {name!r}", i)
    for i, png in enumerate(masks):
        _check_mask(i, png, height, width, add)

    num_instances = max(len(ymin), len(xmin), len(ymax), len(xmax), len(labels), len(masks))
    return ExampleCheck(source_id, filename, num_instances, problems)


_AddProblem = Callable[..., None]


def _image_size(heights: Sequence[int], widths: Sequence[int], add: _AddProblem) -> Tuple[int, int]:
    """(height, width) from the features, or (0, 0) when they are unusable (then size checks are skipped)."""
    if len(heights) == 1 and len(widths) == 1 and heights[0] > 0 and widths[0] > 0:
        return int(heights[0]), int(widths[0])
    add(IMAGE_SIZE_INVALID, f"image/height is {_show(heights)} and image/width is {_show(widths)}; one positive "
                            f"integer each is expected")
    return 0, 0


def _check_image(encoded: Sequence[bytes], height: int, width: int, max_image_pixels: int,
                 add: _AddProblem) -> None:
    if len(encoded) != 1 or not encoded[0]:
        add(IMAGE_UNDECODABLE, "image/encoded is absent or empty" if not encoded or not encoded[0]
            else f"image/encoded holds {len(encoded)} values; one image is expected")
        return
    try:
        _, decoded_height, decoded_width = inspect_image(encoded[0], max_image_pixels)
    except ImageTooLargeError as e:
        add(IMAGE_TOO_LARGE, str(e))
        return
    except BadImageError as e:
        add(IMAGE_UNDECODABLE, str(e))
        return
    if height:
        mismatch = size_mismatch_problem(encoded[0], decoded_height, decoded_width, height, width,
                                         "image/width x image/height")
        if mismatch:
            add(IMAGE_SIZE_MISMATCH, mismatch)


def _check_list_lengths(ymin: Sequence[float], xmin: Sequence[float], ymax: Sequence[float],
                        xmax: Sequence[float], labels: Sequence[int], masks: Sequence[bytes],
                        optional_lists: Dict[str, Sequence], add: _AddProblem) -> int:
    """Reports per-instance lists of different lengths; returns the number of complete boxes."""
    box_lengths = {"ymin": len(ymin), "xmin": len(xmin), "ymax": len(ymax), "xmax": len(xmax)}
    num_boxes = min(box_lengths.values())
    if len(set(box_lengths.values())) > 1:
        add(INSTANCE_LISTS_MISMATCH, "the box coordinate lists differ in length: "
            + ", ".join(f"{name} {n}" for name, n in box_lengths.items()))
    if len(labels) != num_boxes:
        add(INSTANCE_LISTS_MISMATCH, f"{len(labels)} class labels for {num_boxes} boxes")
    if len(masks) != num_boxes:
        add(MASK_COUNT_MISMATCH, f"{len(masks)} masks for {num_boxes} boxes")
    # Model Garden's decoder fills in absent crowd flags and areas (and never reads class texts); a list that
    # is present must still line up with the boxes, or flags would land on the wrong instances.
    for name, values in optional_lists.items():
        if values and len(values) != num_boxes:
            add(INSTANCE_LISTS_MISMATCH, f"{len(values)} {name} for {num_boxes} boxes (absent or one per box "
                                         f"is expected)")
    return num_boxes


def _check_box(i: int, ymin: float, xmin: float, ymax: float, xmax: float, add: _AddProblem) -> None:
    coords = {"ymin": ymin, "xmin": xmin, "ymax": ymax, "xmax": xmax}
    not_finite = [f"{name}={value}" for name, value in coords.items() if not math.isfinite(value)]
    if not_finite:
        add(BOX_NOT_FINITE, ", ".join(not_finite), i)
        return
    outside = [f"{name}={value:.6g}" for name, value in coords.items()
               if not -BOX_TOLERANCE <= value <= 1.0 + BOX_TOLERANCE]
    if outside:
        add(BOX_OUTSIDE_IMAGE, f"{', '.join(outside)} outside [0, 1]", i)
    inverted = [f"{lo}={coords[lo]:.6g} > {hi}={coords[hi]:.6g}"
                for lo, hi in (("ymin", "ymax"), ("xmin", "xmax")) if coords[lo] > coords[hi]]
    if inverted:
        add(BOX_INVERTED, ", ".join(inverted), i)
        return
    # An empty box has no extent to regress to (Model Garden's box coder takes log(height / anchor height)).
    empty = [f"{side} is 0 ({lo}={hi}={coords[lo]:.6g})"
             for side, lo, hi in (("height", "ymin", "ymax"), ("width", "xmin", "xmax")) if coords[lo] == coords[hi]]
    if empty:
        add(BOX_DEGENERATE, ", ".join(empty), i)


def _check_mask(i: int, png: bytes, height: int, width: int, add: _AddProblem) -> None:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    try:
        with Image.open(io.BytesIO(png)) as img:
            if img.format != "PNG":
                add(MASK_UNDECODABLE, f"the mask is {img.format or 'of an unknown format'}, not PNG", i)
                return
            mask_width, mask_height = img.size
            img.load()  # Decodes every row, so a truncated or corrupt PNG fails here.
            pixels = np.asarray(img if img.mode in _SINGLE_CHANNEL_MODES else img.convert("L"))
    except Image.DecompressionBombError as e:
        add(MASK_UNDECODABLE, f"mask too large to decode ({e})", i)
        return
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's ways of saying "not a valid image"
        add(MASK_UNDECODABLE, f"corrupt or truncated PNG ({e})", i)
        return
    if height and (mask_height, mask_width) != (height, width):
        add(MASK_SIZE_MISMATCH, f"the mask is {mask_width}x{mask_height} (WxH) but the image is "
                                f"{width}x{height}", i)
    if pixels.size and pixels.max() > 1:
        values = np.unique(pixels)
        shown = ", ".join(str(v) for v in values[:_MAX_VALUES_SHOWN])
        if len(values) > _MAX_VALUES_SHOWN:
            shown += ", ..."
        add(MASK_NOT_BINARY, f"pixel values {shown} (0 and 1 are expected)", i)


def _describe_ids(label_map: LabelMap) -> str:
    ids = label_map.ids
    if not ids:
        return "which is empty"
    if len(ids) <= 10:
        return "ids " + ", ".join(str(i) for i in ids)
    return f"{len(ids)} classes, ids {ids[0]} to {ids[-1]}"


def _show(values: Sequence[int]) -> str:
    if not values:
        return "absent"
    return str(values[0]) if len(values) == 1 else str(list(values))
