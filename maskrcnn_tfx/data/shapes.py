"""The synthetic shapes data set: a seeded, self-checking stand-in for COCO.

In the manner of Matterport's Mask R-CNN "shapes" sample: every image has a random solid background colour
and 1 to 4 shapes (square, circle or triangle), each with a random colour, size and position. The set is
written as COCO JSON plus images, so it enters the product through the same converter as real data.

Properties the rest of the product (and the tests) rely on:

- Reproducible: image ``i`` of seed ``k`` is drawn from ``np.random.default_rng([k, i])`` alone, so the
  files are byte-identical for any worker count and a subset (the first N images) is the same as in a
  larger set.
- Exact masks: shapes are rasterized once, into an "owner" map (pixel -> index of the frontmost shape), and
  the image is painted from that map. An instance's mask is therefore exactly the visible pixels of that
  shape's colour; later shapes occlude earlier ones.
- Every pixel is explained: a shape whose visible part is smaller than ``MIN_VISIBLE_PIXELS`` is removed
  from the scene (its few pixels go back to the background colour) instead of being left unlabelled, so
  each non-background pixel belongs to exactly one labelled instance. Colours within an image are kept
  apart so neighbouring instances never merge visually.
- No empty images: the frontmost shape is never occluded, so an image always keeps at least one instance;
  should one ever end up empty (only possible for degenerate sizes), its scene is redrawn from the same
  generator rather than written without instances, since the set promises 1 to 4 instances per image.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from concurrent import futures
from typing import Dict, List, Sequence, Tuple

import numpy as np

from maskrcnn_tfx.label_map import LabelMap

SQUARE, CIRCLE, TRIANGLE = 1, 2, 3
SHAPES_LABEL_MAP = LabelMap.from_pairs([(SQUARE, "square"), (CIRCLE, "circle"), (TRIANGLE, "triangle")])

MIN_SHAPES_PER_IMAGE = 1
MAX_SHAPES_PER_IMAGE = 4
# Smaller visible fragments are not worth a label: too few pixels for a mask head to learn from.
MIN_VISIBLE_PIXELS = 20
# Smallest image side the geometry below supports (shapes of radius >= 3 pixels).
MIN_IMAGE_SIZE = 32
# Euclidean RGB distance kept between any two colours of one image (background included), so shapes stay
# distinguishable from the background and from each other, also after JPEG compression.
MIN_COLOR_DISTANCE = 60.0
JPEG_QUALITY = 95
IMAGE_FORMATS = {"png": ".png", "jpeg": ".jpg"}

COCO_DIR = "coco"
IMAGES_DIR = "images"
ANNOTATIONS_FILE = "annotations.json"
# Image files this module writes; only these are ever removed from a re-used images folder.
_IMAGE_NAME = re.compile(r"^\d{6,}\.(png|jpg)$")
_MAX_SCENE_ATTEMPTS = 100


@dataclasses.dataclass
class ShapeInstance:
    """One visible shape: its class, its colour and the [H, W] uint8 0/1 mask of its visible pixels."""

    class_id: int
    color: Tuple[int, int, int]
    mask: np.ndarray


@dataclasses.dataclass
class Scene:
    """One rendered image: [H, W, 3] uint8 RGB pixels, the background colour and the instances, back to front."""

    image: np.ndarray
    background: Tuple[int, int, int]
    instances: List[ShapeInstance]


def image_file_name(image_id: int, image_format: str) -> str:
    return f"{image_id:06d}{IMAGE_FORMATS[image_format]}"


def _random_color(rng: np.random.Generator, taken: Sequence[Tuple[int, int, int]]) -> Tuple[int, int, int]:
    """A random RGB colour at least MIN_COLOR_DISTANCE from every colour already used in the image."""
    while True:  # Rejection sampling; at most 5 colours are taken, so a fit is found in a few draws.
        color = rng.integers(0, 256, size=3)
        if all(np.linalg.norm(color - np.asarray(t)) >= MIN_COLOR_DISTANCE for t in taken):
            return tuple(int(c) for c in color)


def _rasterize_shape(class_id: int, cx: int, cy: int, size: int, image_size: int) -> np.ndarray:
    """The [H, W] bool pixels covered by one shape (clipped to the image), drawn with OpenCV without
    anti-aliasing, so a pixel either is the shape's or is not."""
    import cv2  # pylint: disable=g-import-not-at-top

    canvas = np.zeros((image_size, image_size), np.uint8)
    if class_id == SQUARE:
        cv2.rectangle(canvas, (cx - size, cy - size), (cx + size, cy + size), 1, thickness=cv2.FILLED)
    elif class_id == CIRCLE:
        cv2.circle(canvas, (cx, cy), size, 1, thickness=cv2.FILLED, lineType=cv2.LINE_8)
    elif class_id == TRIANGLE:
        # Equilateral, pointing up, of height 2 * size (Matterport's geometry).
        half_base = size / math.sin(math.radians(60))
        points = np.array([[cx, cy - size],
                           [round(cx - half_base), cy + size],
                           [round(cx + half_base), cy + size]], np.int32)
        cv2.fillPoly(canvas, [points], 1, lineType=cv2.LINE_8)
    else:
        raise ValueError(f"unknown shape class id {class_id}")
    return canvas.astype(bool)


def _draw_scene(rng: np.random.Generator, image_size: int) -> Scene:
    background = _random_color(rng, [])
    colors: List[Tuple[int, int, int]] = [background]
    class_ids: List[int] = []
    # owner[y, x] = 1 + index of the frontmost shape covering the pixel, 0 for background.
    owner = np.zeros((image_size, image_size), np.int32)
    min_size, max_size = max(3, image_size // 10), image_size // 4
    margin = image_size // 8  # Centres stay inside the image; shapes may still be cut by its border.
    for index in range(int(rng.integers(MIN_SHAPES_PER_IMAGE, MAX_SHAPES_PER_IMAGE + 1))):
        class_id = int(rng.choice(SHAPES_LABEL_MAP.ids))
        size = int(rng.integers(min_size, max_size + 1))  # Half side, radius, or half height.
        cx, cy = (int(v) for v in rng.integers(margin, image_size - margin, size=2))
        colors.append(_random_color(rng, colors))
        class_ids.append(class_id)
        owner[_rasterize_shape(class_id, cx, cy, size, image_size)] = index + 1

    # Remove shapes left with too few visible pixels from the scene (back to background), so no unlabelled
    # fragment remains. Removing one never shrinks another's visible part, so one pass suffices.
    visible_counts = np.bincount(owner.ravel(), minlength=len(class_ids) + 1)
    kept = [i for i in range(len(class_ids)) if visible_counts[i + 1] >= MIN_VISIBLE_PIXELS]
    palette = np.array(colors, np.uint8)
    for i in set(range(len(class_ids))) - set(kept):
        palette[i + 1] = palette[0]
    image = palette[owner]
    instances = [ShapeInstance(class_ids[i], colors[i + 1], (owner == i + 1).astype(np.uint8)) for i in kept]
    return Scene(image=image, background=background, instances=instances)


def render_image(seed: int, image_index: int, image_size: int) -> Scene:
    """Renders image ``image_index`` (0-based) of the set of ``seed``; depends on nothing else."""
    if seed < 0 or image_index < 0:
        raise ValueError(f"seed ({seed}) and image index ({image_index}) must be >= 0")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is below the minimum of {MIN_IMAGE_SIZE}")
    rng = np.random.default_rng([seed, image_index])
    for _ in range(_MAX_SCENE_ATTEMPTS):
        scene = _draw_scene(rng, image_size)
        if scene.instances:
            return scene
    raise RuntimeError(f"image {image_index} of seed {seed}: no scene with a visible shape "
                       f"in {_MAX_SCENE_ATTEMPTS} attempts (image size {image_size})")


def encode_image(image: np.ndarray, image_format: str) -> bytes:
    """RGB pixels as PNG or JPEG (quality JPEG_QUALITY, 4:4:4) bytes; deterministic for the same pixels."""
    import cv2  # pylint: disable=g-import-not-at-top

    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format {image_format!r} is not one of {sorted(IMAGE_FORMATS)}")
    params = []
    if image_format == "jpeg":
        # No chroma subsampling (4:4:4): with the default 4:2:0, colours bleed up to ~2 pixels across shape
        # edges, where the pixel-exact masks matter most (mean error 2.9 -> 0.6 levels).
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
                  cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(IMAGE_FORMATS[image_format], np.ascontiguousarray(image[..., ::-1]), params)
    if not ok:
        raise ValueError(f"{image_format} encoding failed")
    return buf.tobytes()


def _instance_annotation(instance: ShapeInstance) -> Dict:
    """COCO fields of one instance (without ids): compressed RLE, tight bbox and visible area."""
    from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top

    rle = mask_utils.encode(np.asfortranarray(instance.mask))
    ys, xs = np.nonzero(instance.mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "category_id": instance.class_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        "area": int(instance.mask.sum()),
        "iscrowd": 0,
    }


def _write_image(task: Tuple[int, int, int, str, str]) -> List[Dict]:
    """Renders and writes one image; returns its instances' annotations. Runs in worker processes."""
    seed, image_index, image_size, image_format, images_dir = task
    scene = render_image(seed, image_index, image_size)
    path = os.path.join(images_dir, image_file_name(image_index + 1, image_format))
    with open(path, "wb") as f:
        f.write(encode_image(scene.image, image_format))
    return [_instance_annotation(instance) for instance in scene.instances]


def _remove_stale_images(images_dir: str, keep: set) -> None:
    """A re-used output folder may hold images of an earlier, larger or other-format run; remove those
    (only files named like ours) so the folder matches the annotations."""
    for name in os.listdir(images_dir):
        if _IMAGE_NAME.match(name) and name not in keep:
            os.remove(os.path.join(images_dir, name))


def _worker_context():
    """"fork" (works from any script, no ``if __name__ == "__main__"`` guard needed) unless TensorFlow is
    loaded: forking a process while TensorFlow's threads run can deadlock the child, so then "spawn"."""
    import multiprocessing  # pylint: disable=g-import-not-at-top

    return multiprocessing.get_context("spawn" if "tensorflow" in sys.modules else "fork")


def generate_shapes(output_dir: str, *, num_images: int, image_size: int, seed: int = 0,
                    image_format: str = "png", num_workers: int = 1) -> str:
    """Writes ``output_dir/coco/annotations.json`` and ``output_dir/coco/images/000001.png``... and returns
    the annotations path.

    Image ids are 1..num_images in file order; within an image, annotations are listed back to front (drawing
    order). Files are identical for the same (num_images, image_size, seed, image_format), whatever
    ``num_workers``; the first N images of a larger set equal a set of N. Re-running into the same folder
    replaces the earlier set (image files named like ours that the new set does not list are removed).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")

    coco_dir = os.path.join(output_dir, COCO_DIR)
    images_dir = os.path.join(coco_dir, IMAGES_DIR)
    os.makedirs(images_dir, exist_ok=True)
    annotations_path = os.path.join(coco_dir, ANNOTATIONS_FILE)
    # An earlier run's annotations must not outlive the images about to be replaced.
    if os.path.exists(annotations_path):
        os.remove(annotations_path)
    file_names = [image_file_name(i + 1, image_format) for i in range(num_images)]
    _remove_stale_images(images_dir, set(file_names))

    tasks = [(seed, i, image_size, image_format, images_dir) for i in range(num_images)]
    if num_workers == 1 or num_images < 2:
        per_image = [_write_image(t) for t in tasks]
    else:
        # Results come back in task order, so ids do not depend on scheduling.
        with futures.ProcessPoolExecutor(max_workers=num_workers, mp_context=_worker_context()) as pool:
            chunk = max(1, num_images // (4 * num_workers))
            per_image = list(pool.map(_write_image, tasks, chunksize=chunk))

    images, annotations = [], []
    for i, (file_name, instance_annotations) in enumerate(zip(file_names, per_image)):
        images.append({"id": i + 1, "file_name": file_name, "height": image_size, "width": image_size})
        for annotation in instance_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **annotation})
    coco = {
        "info": {"description": "maskrcnn-tfx synthetic shapes", "version": "1", "seed": seed,
                 "image_size": image_size, "image_format": image_format},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in SHAPES_LABEL_MAP.entries],
    }
    # Written last and atomically: an interrupted run never leaves annotations that name missing images.
    tmp_path = annotations_path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as f:
        json.dump(coco, f, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp_path, annotations_path)
    return annotations_path
