"""The gallery: the evaluated model run on a few eval-split examples, its masks drawn beside the ground truth.

The model is the SavedModel the Trainer exported (the one the Evaluator scored and the Pusher pushed when
blessed), called through its image-bytes signature (``maskrcnn_tfx.signature``) as a client would. Its
box-relative masks are pasted with ``maskrcnn_tfx.masks`` (the product's one paste); the ground truth comes from
the examples (``maskrcnn_tfx.example_format``). Each example gives two PNGs of the same size.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx import images as images_lib
from maskrcnn_tfx import masks as masks_lib
from maskrcnn_tfx import signature
from maskrcnn_tfx.label_map import LabelMap

DEFAULT_SCORE_THRESHOLD = 0.5
# Images are shown at least this large (small images are enlarged) and at most (large ones shrunk).
MIN_SIDE, MAX_SIDE = 256, 512
MASK_ALPHA = 0.45
# At most this many detections (the highest-scoring) are drawn on one image: more would hide it.
MAX_DRAWN = 20
PALETTE = ((0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
           (240, 228, 66), (120, 120, 120))


@dataclasses.dataclass
class Detection:
    class_name: str
    score: float


@dataclasses.dataclass
class GalleryItem:
    source_id: int
    filename: str
    truth_image: str  # file name beside the page
    prediction_image: str
    ground_truth: List[str]  # class names ("(crowd)" marked)
    shown: List[Detection]  # detections at or above the score threshold, at most MAX_DRAWN, best first
    num_detections: int  # all the model returned
    best_score: Optional[float]
    # Small images (the shapes set) are enlarged for display and shown with crisp pixels; photos are shrunk.
    enlarged: bool = False


@dataclasses.dataclass
class Gallery:
    model_path: str
    score_threshold: float
    items: List[GalleryItem]


def class_color(label_map: LabelMap, class_id: int) -> Tuple[int, int, int]:
    ids = label_map.ids
    index = ids.index(int(class_id)) if int(class_id) in ids else len(ids)
    return PALETTE[index % len(PALETTE)]


def _class_name(label_map: LabelMap, class_id: int) -> str:
    return label_map.name_of(class_id) if int(class_id) in label_map else f"class {int(class_id)}"


def _display_scale(height: int, width: int) -> float:
    side = max(height, width, 1)
    if side < MIN_SIDE:
        return float(max(1, MIN_SIDE // side))
    return min(1.0, MAX_SIDE / side)


def _font(size: int):
    from PIL import ImageFont  # pylint: disable=g-import-not-at-top

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, labels: Sequence[str],
         colors: Sequence[Tuple[int, int, int]], dashed: Sequence[bool] = ()) -> bytes:
    """One panel as PNG bytes: ``image`` [H, W, 3] uint8 with binary ``masks`` [N, H, W] blended in, their
    outlines, and ``boxes`` [N, 4] (normalized ymin, xmin, ymax, xmax) labelled; ``dashed`` boxes (crowd
    regions) get a thin outline."""
    import cv2  # pylint: disable=g-import-not-at-top
    from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

    height, width = image.shape[:2]
    canvas = image.astype(np.float32)
    for mask, color in zip(masks, colors):
        on = mask.astype(bool)
        canvas[on] = (1 - MASK_ALPHA) * canvas[on] + MASK_ALPHA * np.asarray(color, np.float32)
    canvas = canvas.clip(0, 255).astype(np.uint8)
    scale = _display_scale(height, width)
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    interpolation = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    canvas = np.ascontiguousarray(cv2.resize(canvas, size, interpolation=interpolation))
    for mask, color in zip(masks, colors):
        outline = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in color), 1)
    picture = Image.fromarray(canvas)
    pen = ImageDraw.Draw(picture)
    font = _font(11)
    for k, (box, label, color) in enumerate(zip(boxes, labels, colors)):
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        corners = [xmin * size[0], ymin * size[1], xmax * size[0] - 1, ymax * size[1] - 1]
        pen.rectangle(corners, outline=tuple(color), width=1 if (k < len(dashed) and dashed[k]) else 2)
        left, top = corners[0], max(0.0, corners[1] - 13)
        text_box = pen.textbbox((left + 2, top), label, font=font)
        pen.rectangle([text_box[0] - 2, text_box[1] - 1, text_box[2] + 2, text_box[3] + 1], fill=tuple(color))
        pen.text((left + 2, top), label, fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _decode(example: ef.InstanceExample) -> np.ndarray:
    """The pixels the model saw: the stored grid (EXIF orientation ignored), RGB, 16-bit cut to 8."""
    try:
        return images_lib.decode_rgb(example.encoded)
    except Exception as e:  # pylint: disable=broad-except  (PIL's many ways of refusing bytes)
        raise ValueError(f"gallery: cannot decode the image of source_id {example.source_id} "
                         f"({example.filename}): {e}") from None


def truth_panel(example: ef.InstanceExample, label_map: LabelMap) -> Tuple[bytes, List[str]]:
    masks = example.decoded_masks()
    crowd = [bool(c) for c in example.is_crowd] if len(example.is_crowd) == example.num_instances else \
        [False] * example.num_instances
    labels = [_class_name(label_map, c) + (" (crowd)" if is_crowd else "")
              for c, is_crowd in zip(example.classes, crowd)]
    colors = [class_color(label_map, c) for c in example.classes]
    return draw(_decode(example), masks, example.boxes, labels, colors, dashed=crowd), labels


def prediction_panel(example: ef.InstanceExample, outputs: dict, label_map: LabelMap,
                     score_threshold: float) -> Tuple[bytes, List[Detection], int, Optional[float]]:
    """The model's detections of one image (one row of the signature's outputs) at ``score_threshold``."""
    num = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    scores = np.asarray(outputs["detection_scores"], np.float64).reshape(-1)[:num]
    classes = np.asarray(outputs["detection_classes"]).reshape(-1)[:num].astype(np.int64)
    boxes = np.asarray(outputs["detection_boxes"], np.float64).reshape(-1, 4)[:num]
    box_masks = np.asarray(outputs["detection_masks"], np.float32)
    box_masks = box_masks.reshape((-1,) + box_masks.shape[-2:])[:num]
    keep = np.flatnonzero(scores >= score_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:MAX_DRAWN]
    image = _decode(example)
    height, width = image.shape[:2]
    full = masks_lib.paste_masks(box_masks[keep], boxes[keep], height, width)
    labels = [f"{_class_name(label_map, classes[i])} {scores[i]:.2f}" for i in keep]
    colors = [class_color(label_map, classes[i]) for i in keep]
    shown = [Detection(_class_name(label_map, classes[i]), float(scores[i])) for i in keep]
    best = float(scores.max()) if num else None
    return draw(image, full, boxes[keep], labels, colors), shown, num, best


def build(model_path: str, examples: Sequence[ef.InstanceExample], label_map: LabelMap, output_dir: str, *,
          score_threshold: float = DEFAULT_SCORE_THRESHOLD, prefix: str = "gallery") -> Gallery:
    """Runs the SavedModel at ``model_path`` on ``examples`` and writes the panels into ``output_dir``."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    model = tf.saved_model.load(model_path)
    if signature.SERVING_SIGNATURE not in model.signatures:
        raise ValueError(f"the model {model_path} has no {signature.SERVING_SIGNATURE!r} signature "
                         f"(it has {sorted(model.signatures)})")
    serve = model.signatures[signature.SERVING_SIGNATURE]
    os.makedirs(output_dir, exist_ok=True)
    items = []
    for n, example in enumerate(examples):
        try:
            result = serve(**{signature.IMAGES_INPUT: tf.constant([example.encoded])})
        except tf.errors.InvalidArgumentError as e:
            raise ValueError(f"gallery: the model refused the image of source_id {example.source_id} "
                             f"({example.filename}): {_model_error(e.message)}") from None
        outputs = {key: value.numpy()[0] for key, value in result.items()}
        truth_png, truth_labels = truth_panel(example, label_map)
        prediction_png, shown, num, best = prediction_panel(example, outputs, label_map, score_threshold)
        truth_name, prediction_name = f"{prefix}-{n:02d}-truth.png", f"{prefix}-{n:02d}-prediction.png"
        for name, body in ((truth_name, truth_png), (prediction_name, prediction_png)):
            with open(os.path.join(output_dir, name), "wb") as f:
                f.write(body)
        items.append(GalleryItem(source_id=example.source_id, filename=example.filename, truth_image=truth_name,
                                 prediction_image=prediction_name, ground_truth=truth_labels, shown=shown,
                                 num_detections=num, best_score=best,
                                 enlarged=_display_scale(example.height, example.width) > 1))
    return Gallery(model_path=model_path, score_threshold=score_threshold, items=items)


def _model_error(message: str) -> str:
    """The line of a TensorFlow error that says what was wrong (not the graph's traceback)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if "assertion failed" in line or "Invalid" in line:
            return line
    return lines[0] if lines else message


def model_label_map(model_path: str) -> LabelMap:
    """The label map the exported model carries (its ``assets/label_map.json``)."""
    return LabelMap.load(os.path.join(model_path, signature.LABEL_MAP_ASSET))
