"""Instance masks from the model's outputs to full-image masks and COCO RLE (contract 4 of docs/architecture.md).

The served model (like Model Garden's Mask R-CNN) returns one small mask per detection, ``[N, M, M]``
probabilities relative to the detection's box. Everything that needs masks on the image itself, the client,
the evaluator and the report, goes through :func:`paste_masks` here, so that all of them draw the same pixels.

The pasting follows Model Garden's own evaluator (``official.vision.ops.mask_ops.paste_instance_masks``, the
Detectron convention): the mask is zero-padded by one cell, resized bilinearly (OpenCV) onto the box expanded
by the same margin in integer pixel coordinates, thresholded, and cropped to the image. Agreeing with it means
our mask mAP is the number Model Garden's COCO evaluator would report for the same detections.

Only numpy, OpenCV and pycocotools: no TensorFlow, so clients stay light.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5

RLE = Dict[str, Any]


def _pixel_boxes_with_margin(boxes: np.ndarray, image_height: int, image_width: int,
                             mask_height: int, mask_width: int) -> np.ndarray:
    """Normalized [ymin, xmin, ymax, xmax] to integer pixel boxes [x0, y0, x1, y1] grown by a 1-cell margin.

    The margin is the one added to the mask by zero-padding: the box grows about its centre by
    max((M + 2) / M) so that the padded mask's border cells fall just outside the original box.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ymin, xmin = boxes[:, 0] * image_height, boxes[:, 1] * image_width
    ymax, xmax = boxes[:, 2] * image_height, boxes[:, 3] * image_width
    scale = max((mask_width + 2.0) / mask_width, (mask_height + 2.0) / mask_height)
    half_w, half_h = (xmax - xmin) * 0.5, (ymax - ymin) * 0.5
    center_x, center_y = xmin + half_w, ymin + half_h
    grown = np.stack([center_x - half_w * scale, center_y - half_h * scale,
                      center_x + half_w * scale, center_y + half_h * scale], axis=-1)
    # Truncation toward zero (not floor), as Model Garden's integer cast does.
    return np.trunc(grown).astype(np.int64)


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_height: int, image_width: int,
                threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Pastes box-relative mask probabilities into full-image binary masks.

    Args:
      masks: [N, M_h, M_w] mask probabilities, each relative to its box (the served ``detection_masks``).
      boxes: [N, 4] normalized [ymin, xmin, ymax, xmax] of the original image (the served
        ``detection_boxes``); boxes may extend beyond the image or have zero size.
      image_height: height of the original image in pixels.
      image_width: width of the original image in pixels.
      threshold: a pixel belongs to the instance where the resized probability is above this.

    Returns:
      [N, image_height, image_width] uint8 masks of values 0/1.
    """
    import cv2  # pylint: disable=g-import-not-at-top  (keeps `import maskrcnn_tfx.masks` cheap)

    masks = np.asarray(masks, np.float32)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, M_h, M_w], got shape {masks.shape}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(boxes)} boxes")
    image_height, image_width = int(image_height), int(image_width)
    out = np.zeros((len(masks), image_height, image_width), np.uint8)
    if not len(masks):
        return out
    num, mask_height, mask_width = masks.shape
    pixel_boxes = _pixel_boxes_with_margin(boxes, image_height, image_width, mask_height, mask_width)
    # Zero padding keeps OpenCV from repeating border values outward ("top hat" artifacts at box edges).
    padded = np.zeros((mask_height + 2, mask_width + 2), np.float32)
    for i in range(num):
        x0, y0, x1, y1 = (int(v) for v in pixel_boxes[i])
        # Inclusive pixel corners, at least one pixel: a zero-size box still covers the pixel it sits on.
        box_w, box_h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        padded[1:-1, 1:-1] = masks[i]
        resized = cv2.resize(padded, (box_w, box_h)) > threshold
        # The part of the box inside the image, in image and in box coordinates (empty for inverted boxes).
        img_x0, img_x1 = min(max(x0, 0), image_width), min(max(x1 + 1, 0), image_width)
        img_y0, img_y1 = min(max(y0, 0), image_height), min(max(y1 + 1, 0), image_height)
        if img_x1 > img_x0 and img_y1 > img_y0:
            out[i, img_y0:img_y1, img_x0:img_x1] = resized[img_y0 - y0:img_y1 - y0, img_x0 - x0:img_x1 - x0]
    return out


def encode_rle(binary_masks: np.ndarray) -> List[RLE]:
    """[N, H, W] binary masks as COCO compressed RLE dicts ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    from pycocotools import mask as mask_api  # pylint: disable=g-import-not-at-top

    binary_masks = np.asarray(binary_masks)
    if binary_masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {binary_masks.shape}")
    if not len(binary_masks):
        return []
    # pycocotools wants [H, W, N] uint8 in Fortran order.
    stacked = np.asfortranarray(np.transpose(binary_masks > 0, (1, 2, 0)).astype(np.uint8))
    rles = mask_api.encode(stacked)
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles]


def decode_rle(rles: Sequence[RLE]) -> np.ndarray:
    """The inverse of :func:`encode_rle`; also reads COCO's uncompressed RLE (``counts`` a list of ints).

    Returns [N, H, W] uint8 of values 0/1 (an empty sequence gives [0, 0, 0]).
    """
    from pycocotools import mask as mask_api  # pylint: disable=g-import-not-at-top

    decoded = []
    for rle in rles:
        height, width = (int(s) for s in rle["size"])
        counts = rle["counts"]
        if isinstance(counts, list):
            compressed = mask_api.frPyObjects(dict(rle), height, width)
        else:
            compressed = {"size": [height, width],
                          "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        decoded.append(mask_api.decode(compressed))
    if not decoded:
        return np.zeros((0, 0, 0), np.uint8)
    return np.stack(decoded).astype(np.uint8)


def masks_to_rle(masks: np.ndarray, boxes: np.ndarray, image_height: int, image_width: int,
                 threshold: float = DEFAULT_THRESHOLD) -> List[RLE]:
    """:func:`paste_masks` then :func:`encode_rle`: the served outputs of one image as COCO segmentations."""
    return encode_rle(paste_masks(masks, boxes, image_height, image_width, threshold))
