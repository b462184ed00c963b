"""Typed detections from the served outputs, COCO results JSON, and overlay images.

The served signature (contract 4 of docs/architecture.md) gives per image normalized boxes, label-map class
ids, scores, a count and box-relative masks; :func:`from_outputs` turns a batch of those into :class:`ImageDetections`
with boxes in pixels and normalized, class names, and full-image masks pasted by :mod:`maskrcnn_tfx.masks` (the one
utility for it). No TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from maskrcnn_tfx import images as images_lib
from maskrcnn_tfx import masks as masks_lib
from maskrcnn_tfx.label_map import LabelMap

DEFAULT_SCORE_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class Detection:
    class_id: int
    class_name: Optional[str]  # None when no label map is known
    score: float
    box: Tuple[float, float, float, float]  # normalized [ymin, xmin, ymax, xmax] of the original image
    box_pixels: Tuple[float, float, float, float]  # [xmin, ymin, xmax, ymax] in pixels
    mask: np.ndarray  # [height, width] uint8 0/1: the instance on the whole image

    def coco_bbox(self) -> List[float]:
        """COCO's [x, y, width, height] in pixels."""
        x0, y0, x1, y1 = self.box_pixels
        return [x0, y0, x1 - x0, y1 - y0]


@dataclasses.dataclass(frozen=True)
class ImageDetections:
    height: int
    width: int
    detections: Tuple[Detection, ...]

    def __len__(self) -> int:
        return len(self.detections)


def from_outputs(outputs: Mapping[str, np.ndarray], *, label_map: Optional[LabelMap] = None,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 mask_threshold: float = masks_lib.DEFAULT_THRESHOLD) -> List[ImageDetections]:
    """One :class:`ImageDetections` per image of a batch of served outputs (detections at or above
    ``score_threshold``, best first)."""
    boxes = np.asarray(outputs["detection_boxes"], np.float64)
    classes = np.asarray(outputs["detection_classes"]).astype(np.int64)
    scores = np.asarray(outputs["detection_scores"], np.float64)
    counts = np.asarray(outputs["num_detections"]).astype(np.int64).reshape(-1)
    box_masks = np.asarray(outputs["detection_masks"], np.float32)
    sizes = np.asarray(outputs["image_size"]).astype(np.int64).reshape(-1, 2)
    results = []
    for i, (height, width) in enumerate(sizes):
        keep = [j for j in range(int(counts[i])) if scores[i, j] >= score_threshold]
        full_masks = masks_lib.paste_masks(box_masks[i, keep].reshape(len(keep), *box_masks.shape[2:]),
                                           boxes[i, keep], int(height), int(width), threshold=mask_threshold)
        detections = []
        for k, j in enumerate(keep):
            ymin, xmin, ymax, xmax = (float(v) for v in boxes[i, j])
            class_id = int(classes[i, j])
            name = label_map.as_dict().get(class_id) if label_map is not None else None
            detections.append(Detection(
                class_id=class_id, class_name=name, score=float(scores[i, j]), box=(ymin, xmin, ymax, xmax),
                box_pixels=(xmin * width, ymin * height, xmax * width, ymax * height), mask=full_masks[k]))
        results.append(ImageDetections(int(height), int(width), tuple(detections)))
    return results


def to_coco_results(images: Sequence[Tuple[int, ImageDetections]]) -> List[Dict]:
    """COCO's results format (what ``COCO.loadRes`` reads): one entry per detection with its box, score and
    mask as compressed RLE. ``images`` are (image_id, detections) pairs."""
    results = []
    for image_id, image in images:
        if not image.detections:
            continue
        rles = masks_lib.encode_rle(np.stack([d.mask for d in image.detections]))
        for detection, rle in zip(image.detections, rles):
            results.append({"image_id": int(image_id), "category_id": detection.class_id,
                            "bbox": [round(v, 2) for v in detection.coco_bbox()],
                            "score": round(detection.score, 5), "segmentation": rle})
    return results


def write_coco_results(path: str, images: Sequence[Tuple[int, ImageDetections]]) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(to_coco_results(images), f)
    os.replace(temporary, path)
    return path


# Distinct colours for instances (RGB), cycled.
_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                     (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)], np.uint8)


def overlay(image_bytes: bytes, image: ImageDetections, alpha: float = 0.45):
    """The image with each instance's mask tinted, its box drawn and ``name score`` written (a PIL image)."""
    from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

    # The stored pixel grid as the model decoded it (EXIF orientation ignored, 16-bit grey not saturated).
    picture = Image.fromarray(images_lib.decode_rgb(image_bytes))
    if picture.size != (image.width, image.height):
        raise ValueError(f"the image is {picture.size[0]}x{picture.size[1]} but the detections are for "
                         f"{image.width}x{image.height}")
    pixels = np.asarray(picture).astype(np.float32)
    for k, detection in enumerate(image.detections):
        colour = _PALETTE[k % len(_PALETTE)].astype(np.float32)
        inside = detection.mask.astype(bool)
        pixels[inside] = (1 - alpha) * pixels[inside] + alpha * colour
    result = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for k, detection in enumerate(image.detections):
        colour = tuple(int(c) for c in _PALETTE[k % len(_PALETTE)])
        x0, y0, x1, y1 = detection.box_pixels
        draw.rectangle([x0, y0, max(x1 - 1, x0), max(y1 - 1, y0)], outline=colour, width=2)
        name = detection.class_name or f"class {detection.class_id}"
        draw.text((x0 + 2, max(y0 - 11, 0)), f"{name} {detection.score:.2f}", fill=colour)
    return result


def write_overlay_png(path: str, image_bytes: bytes, image: ImageDetections) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    overlay(image_bytes, image).save(path, format="PNG")
    return path
