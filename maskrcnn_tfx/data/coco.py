"""Reading COCO instance annotations and converting one image at a time into an ``InstanceExample``.

This module holds every rule of the conversion, so the local driver (``convert.py``) and the Beam pipeline
(``beam_convert.py``) produce the same records:

- :func:`read_coco` parses and indexes the annotations file, rejecting structural damage (malformed JSON,
  missing or duplicate ids) that no ``on_error`` policy can work around.
- :func:`annotation_problem` is the cheap per-annotation check (category, box, segmentation shape); the local
  driver also runs it up front so a bad annotation stops a run in seconds rather than hours in.
- :func:`convert_image` reads and checks one image file, rasterizes its masks with pycocotools (the same calls
  as ``COCO.annToMask``, so masks match it exactly) and returns the example plus whatever it had to skip.

Paths may be local or anything ``tf.io.gfile`` opens (``gs://...``); local files avoid loading TensorFlow.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from maskrcnn_tfx import example_format
from maskrcnn_tfx import images as images_lib
from maskrcnn_tfx.files import read_bytes
from maskrcnn_tfx.label_map import LabelMap, LabelMapError

ON_ERROR_CHOICES = ("fail", "skip")
# COCO boxes are floats rounded from polygon extremes; a box may overshoot its image by a fraction of a
# pixel. Up to this many pixels beyond the border is accepted (and clipped), more is an error.
BOX_TOLERANCE_PX = 1.0
# Image formats the example format carries, by PIL's format name.
_PIL_FORMATS = {"JPEG": "jpeg", "PNG": "png"}


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """One entry of the COCO ``images`` list (the fields the conversion uses)."""

    id: int
    file_name: str
    height: int
    width: int


@dataclasses.dataclass(frozen=True)
class SkippedItem:
    """An image or annotation left out of the output, and why.

    ``file`` is the file at fault: the image file for image problems, the annotations file for annotation
    problems. ``annotation_id`` is None when the whole image was skipped.
    """

    file: str
    reason: str
    image_id: Optional[int] = None
    annotation_id: Optional[int] = None

    @property
    def is_image(self) -> bool:
        return self.annotation_id is None

    def describe(self) -> str:
        where = []
        if self.image_id is not None:
            where.append(f"image {self.image_id}")
        if self.annotation_id is not None:
            where.append(f"annotation {self.annotation_id}")
        return f"{self.file}: {', '.join(where) + ': ' if where else ''}{self.reason}"

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> "SkippedItem":
        return cls(file=body["file"], reason=body["reason"], image_id=body.get("image_id"),
                   annotation_id=body.get("annotation_id"))


class ConversionError(Exception):
    """Input the converter cannot (or, with ``on_error="fail"``, must not) convert.

    ``item`` names the record at fault when there is one (structural problems of the JSON file have none).
    """

    def __init__(self, message: str, item: Optional[SkippedItem] = None):
        super().__init__(message, item)  # both in args, so the error survives pickling from a worker
        self.message = message
        self.item = item

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_item(cls, item: SkippedItem) -> "ConversionError":
        return cls(item.describe(), item)


@dataclasses.dataclass
class CocoDataset:
    """An indexed COCO instances file."""

    annotations_file: str
    images: List[ImageInfo]  # sorted by id
    categories: Dict[int, str]
    annotations_by_image: Dict[int, List[Dict[str, Any]]]  # file order within an image
    # Annotations naming an image id the file does not list; they belong to no image.
    orphans: List[SkippedItem]
    num_annotations: int

    @property
    def images_by_id(self) -> Dict[int, ImageInfo]:
        return {image.id: image for image in self.images}

    def label_map(self) -> LabelMap:
        return LabelMap.from_dict(self.categories)


@dataclasses.dataclass
class ImageConversion:
    """The result of :func:`convert_image`: the example (None when the image was skipped) and what was skipped."""

    example: Optional[example_format.InstanceExample]
    skipped: List[SkippedItem]


def image_path(images_dir: str, image: ImageInfo) -> str:
    return os.path.join(images_dir, image.file_name)


# ---------------------------------------------------------------------------------------------------------
# Reading the annotations file


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_coco(annotations_file: str) -> CocoDataset:
    """Parses and indexes a COCO instances file; raises :class:`ConversionError` on structural damage."""
    source = str(annotations_file)
    try:
        raw = read_bytes(source)
    except FileNotFoundError:
        raise ConversionError(f"{source}: annotations file not found") from None
    except OSError as e:
        raise ConversionError(f"{source}: cannot read the annotations file ({e})") from None
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{source}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise ConversionError(f"{source}: malformed JSON: not UTF-8 text ({e})") from None
    if not isinstance(body, dict):
        raise ConversionError(f"{source}: malformed COCO file: the top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(body.get(key), list):
            raise ConversionError(f"{source}: malformed COCO file: \"{key}\" is missing or not a list")

    categories: Dict[int, str] = {}
    for i, cat in enumerate(body["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise ConversionError(f"{source}: categories[{i}] needs an integer \"id\" and a string \"name\"")
        if cat["id"] in categories:
            raise ConversionError(f"{source}: category id {cat['id']} is listed twice")
        categories[cat["id"]] = cat["name"]
    try:
        LabelMap.from_dict(categories)
    except LabelMapError as e:
        raise ConversionError(f"{source}: the categories do not form a label map: {e}") from None

    images: Dict[int, ImageInfo] = {}
    for i, im in enumerate(body["images"]):
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            raise ConversionError(f"{source}: images[{i}] has no integer \"id\"")
        image_id = im["id"]
        if image_id < 0:
            raise ConversionError(f"{source}: image {image_id}: the id must not be negative")
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise ConversionError(f"{source}: image {image_id}: \"file_name\" is missing")
        for key in ("height", "width"):
            if not _is_int(im.get(key)) or im[key] < 1:
                raise ConversionError(f"{source}: image {image_id}: \"{key}\" must be a positive integer")
        if image_id in images:
            raise ConversionError(f"{source}: image id {image_id} is listed twice")
        images[image_id] = ImageInfo(image_id, im["file_name"], im["height"], im["width"])

    by_image: Dict[int, List[Dict[str, Any]]] = {}
    orphans: List[SkippedItem] = []
    seen_ids = set()
    for i, ann in enumerate(body["annotations"]):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            raise ConversionError(f"{source}: annotations[{i}] has no integer \"id\"")
        if ann["id"] in seen_ids:
            raise ConversionError(f"{source}: annotation id {ann['id']} is listed twice")
        seen_ids.add(ann["id"])
        image_id = ann.get("image_id")
        if not _is_int(image_id):
            raise ConversionError(f"{source}: annotation {ann['id']}: \"image_id\" is missing or not an integer")
        if image_id not in images:
            orphans.append(SkippedItem(source, f"unknown image_id {image_id} (not in \"images\")",
                                       image_id, ann["id"]))
            continue
        by_image.setdefault(image_id, []).append(ann)

    return CocoDataset(annotations_file=source, images=sorted(images.values(), key=lambda im: im.id),
                       categories=categories, annotations_by_image=by_image, orphans=orphans,
                       num_annotations=len(body["annotations"]))


# ---------------------------------------------------------------------------------------------------------
# Checking one annotation


def _rle_string_counts(counts: str) -> List[int]:
    """The run lengths of COCO's compressed RLE string (the LEB128-like code of pycocotools' ``rleFrString``).

    pycocotools decodes RLE without bounds checks, so runs that overshoot the image would write past its
    buffer; the runs are therefore checked before decoding.
    """
    runs: List[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("the counts string ends inside a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {counts[p]!r} in the counts string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _segmentation_problem(segmentation: Any, height: int, width: int) -> Optional[str]:
    if isinstance(segmentation, list):
        if not segmentation:
            return "empty segmentation"
        for k, part in enumerate(segmentation):
            if not isinstance(part, list) or not all(_is_number(v) for v in part):
                return f"malformed polygon: part {k} is not a list of numbers"
            if len(part) % 2:
                return f"malformed polygon: part {k} has an odd number ({len(part)}) of coordinates"
            if len(part) < 6:
                return f"degenerate polygon: part {k} has {len(part) // 2} points, at least 3 are needed"
        # Shoelace area: a polygon whose parts all enclose nothing (collinear points) cannot be a mask.
        if all(_polygon_area(part) == 0.0 for part in segmentation):
            return "degenerate polygon: zero area"
        return None
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            return "malformed RLE: \"size\" must be [height, width]"
        if list(size) != [height, width]:
            return f"RLE size {size[0]}x{size[1]} (HxW) differs from the image's {height}x{width}"
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts):
                return "malformed RLE: \"counts\" must be non-negative integers"
            runs = counts
        elif isinstance(counts, str):
            try:
                runs = _rle_string_counts(counts)
            except ValueError as e:
                return f"malformed compressed RLE: {e}"
            if any(v < 0 for v in runs):
                return "malformed compressed RLE: negative run length"
        else:
            return "malformed RLE: \"counts\" must be a list or a string"
        if sum(runs) != height * width:
            return f"malformed RLE: the runs cover {sum(runs)} pixels, the image has {height * width}"
        return None
    return "no segmentation (a polygon list or an RLE object is needed for a mask)"


def _polygon_area(part: Sequence[float]) -> float:
    xs, ys = part[0::2], part[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2.0


def annotation_problem(ann: Mapping[str, Any], image: ImageInfo, categories: Mapping[int, str]) -> Optional[str]:
    """Why the annotation cannot be converted, or None. Cheap: no pixels are touched."""
    category_id = ann.get("category_id")
    if not _is_int(category_id):
        return "\"category_id\" is missing or not an integer"
    if category_id not in categories:
        return f"unknown category_id {category_id} (not in \"categories\")"
    if ann.get("iscrowd", 0) not in (0, 1):
        return f"\"iscrowd\" must be 0 or 1, got {ann.get('iscrowd')!r}"
    if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
        return f"\"area\" must be a non-negative number, got {ann['area']!r}"
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"\"bbox\" must be [x, y, width, height], got {bbox!r}"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"degenerate box {bbox}: width and height must be positive"
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > image.width + tol or y + h > image.height + tol:
        return (f"box {bbox} (x, y, width, height) lies outside the {image.width}x{image.height} image "
                f"(more than {tol:g} px beyond its border)")
    return _segmentation_problem(ann.get("segmentation"), image.height, image.width)


# ---------------------------------------------------------------------------------------------------------
# Converting one image


class BadImageError(ValueError):
    """Image bytes that cannot go into an example (corrupt, truncated, too large, or not JPEG/PNG)."""


class ImageTooLargeError(BadImageError):
    """An image whose header declares more pixels than the limit (``export.max_image_pixels``)."""


def inspect_image(data: bytes, max_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS) -> Tuple[str, int, int]:
    """(format, height, width) of encoded image bytes, after decoding them to prove they are whole.

    The header is read first (:func:`maskrcnn_tfx.images.declared_size`): an image declaring more than
    ``max_pixels`` pixels raises :class:`ImageTooLargeError` before any pixel is decoded, as the served model
    does. The size is the stored pixel grid's: EXIF orientation is not applied (see maskrcnn_tfx/images.py).
    JPEGs are decoded in PIL's draft mode (DCT scaled to 1/8): every entropy-coded byte is still read, so
    truncation is caught, at a fraction of a full decode's cost.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top

    try:
        images_lib.check_declared_size(data, max_pixels)
    except images_lib.ImageTooLargeError as e:
        raise ImageTooLargeError(str(e)) from None
    except images_lib.ImageHeaderError as e:
        raise BadImageError(str(e)) from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = _PIL_FORMATS.get(img.format or "")
            if fmt is None:
                raise BadImageError(f"unsupported image format {img.format or 'unknown'} (JPEG and PNG are supported)")
            width, height = img.size
            if fmt == "jpeg":
                img.draft(img.mode, (1, 1))
            img.load()
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        raise BadImageError(f"image too large to check ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's ways of saying "not a valid image"
        raise BadImageError(f"corrupt or truncated image ({e})") from None
    return fmt, height, width


def size_mismatch_problem(data: bytes, height: int, width: int, expected_height: int, expected_width: int,
                          expected_by: str) -> str:
    """Why a decoded size differs from the one ``expected_by`` states ("" when they agree).

    A photo whose EXIF orientation turns it by 90 degrees, annotated on its rotated view, has its width and
    height swapped against the stored grid: the message says so, since the product (like COCO and
    TensorFlow's decoders) ignores EXIF orientation and the boxes and masks would land on the wrong pixels.
    """
    if (height, width) == (expected_height, expected_width):
        return ""
    problem = (f"the image is {width}x{height} (WxH) but {expected_by} says {expected_width}x{expected_height}")
    orientation = images_lib.exif_orientation(data)
    if images_lib.swaps_width_and_height(orientation) and (height, width) == (expected_width, expected_height):
        problem += (f"; its {images_lib.describe_orientation(orientation)} turns it to that size, so the "
                    f"annotations were likely made on the rotated view. EXIF orientation is ignored (COCO "
                    f"annotations and TensorFlow's decoders use the stored pixel grid): store the pixels "
                    f"rotated (e.g. PIL.ImageOps.exif_transpose) or annotate the stored image")
    elif orientation != 1:
        problem += f" (it has {images_lib.describe_orientation(orientation)}, which is ignored)"
    return problem


def _annotation_rle(segmentation: Any, height: int, width: int) -> Dict[str, Any]:
    """The RLE of a checked segmentation, by the same calls as ``COCO.annToRLE``."""
    from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top

    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}


def convert_image(image: ImageInfo, annotations: Sequence[Mapping[str, Any]], images_dir: str,
                  categories: Mapping[int, str], annotations_file: str,
                  on_error: str = "fail",
                  max_image_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS) -> ImageConversion:
    """Converts one image and its annotations (in their file order) into an ``InstanceExample``.

    With ``on_error="fail"`` the first problem raises :class:`ConversionError`; with ``"skip"`` a bad
    annotation is left out, a bad image yields no example, and each is listed in the result. An image whose
    header declares more than ``max_image_pixels`` pixels is a bad image (refused before it is decoded).
    """
    from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top

    skipped: List[SkippedItem] = []

    def problem(item: SkippedItem) -> None:
        if on_error == "fail":
            raise ConversionError.from_item(item)
        skipped.append(item)

    path = image_path(images_dir, image)
    image_problem = None
    try:
        encoded = read_bytes(path)
        fmt, height, width = inspect_image(encoded, max_image_pixels)
        image_problem = size_mismatch_problem(encoded, height, width, image.height, image.width,
                                              "the annotations file") or None
    except FileNotFoundError:
        image_problem = "image file not found"
    except (BadImageError, OSError) as e:
        image_problem = str(e)
    if image_problem is not None:  # raised out here, so the error carries no unrelated exception context
        problem(SkippedItem(path, image_problem, image.id))
        return ImageConversion(None, skipped)

    kept: List[Mapping[str, Any]] = []
    rles: List[Dict[str, Any]] = []
    pixel_areas: List[int] = []
    for ann in annotations:
        reason = annotation_problem(ann, image, categories)
        if reason is None:
            rle = _annotation_rle(ann["segmentation"], height, width)
            pixels = int(mask_utils.area(rle))
            # Polygons thinner than a pixel can enclose no pixel centre: an empty mask teaches nothing.
            if pixels == 0:
                reason = "degenerate segmentation: the mask covers no pixel"
        if reason is not None:
            problem(SkippedItem(annotations_file, reason, image.id, ann["id"]))
            continue
        kept.append(ann)
        rles.append(rle)
        pixel_areas.append(pixels)

    masks_png: List[bytes] = []
    if rles:
        import cv2  # pylint: disable=g-import-not-at-top

        # One decode call for all instances: [H, W, N] in Fortran order, so masks[:, :, i].T is a C-ordered
        # [W, H] block; cv2.transpose turns it into [H, W] about 9x faster than np.ascontiguousarray.
        masks = mask_utils.decode(rles)
        masks_png = [example_format.encode_png_mask(cv2.transpose(masks[:, :, i].T)) for i in range(len(rles))]

    boxes = np.zeros((len(kept), 4), np.float64)
    for i, ann in enumerate(kept):
        x, y, w, h = ann["bbox"]
        # Clip within the image (overshoot is at most BOX_TOLERANCE_PX here), then normalize.
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        boxes[i] = (y0 / height, x0 / width, y1 / height, x1 / width)
    # COCO's own area (of the polygon, as its evaluation uses it); the mask's pixel count if absent.
    areas = [float(ann["area"]) if "area" in ann else float(pixel_areas[i]) for i, ann in enumerate(kept)]

    example = example_format.InstanceExample(
        source_id=image.id,
        encoded=encoded,
        format=fmt,
        height=height,
        width=width,
        filename=image.file_name,
        boxes=boxes.astype(np.float32),
        classes=np.asarray([ann["category_id"] for ann in kept], np.int64),
        class_texts=[categories[ann["category_id"]] for ann in kept],
        is_crowd=np.asarray([int(ann.get("iscrowd", 0)) for ann in kept], np.int64),
        areas=np.asarray(areas, np.float32),
        masks_png=masks_png,
    )
    return ImageConversion(example, skipped)


def serialize_example(example: example_format.InstanceExample) -> bytes:
    """The record bytes; ``deterministic`` orders the feature map so equal examples give equal bytes."""
    return example_format.to_tf_example(example).SerializeToString(deterministic=True)
