"""Converted shapes data sets for tests and benchmarks (the product's own generator and converter)."""
from __future__ import annotations

import dataclasses
import json
import os


def shapes_tfrecords(root: str, *, num_images: int, image_size: int = 64, seed: int = 0,
                     eval_fraction: float = 0.25) -> str:
    """``num_images`` shapes images generated under ``root`` and converted to ``root/tfrecords`` (train/ and
    eval/ split by ``eval_fraction``, label_map.json): the folder ``maskrcnn-tfx run --data`` takes."""
    from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.data.shapes import generate_shapes  # pylint: disable=g-import-not-at-top

    annotations = generate_shapes(os.path.join(root, "raw"), num_images=num_images, image_size=image_size,
                                  seed=seed)
    output = os.path.join(root, "tfrecords")
    convert_coco(annotations, os.path.join(os.path.dirname(annotations), "images"), output,
                 eval_fraction=eval_fraction, progress=False)
    return output


# Seed of the held-out images: another seed than the training set's, so no held-out image is a training one.
EVAL_SEED_OFFSET = 1000


@dataclasses.dataclass(frozen=True)
class ShapesSplits:
    """A converted shapes set: training TFRecords, held-out TFRecords, and the held-out set's COCO files."""

    train_pattern: str
    eval_pattern: str
    label_map: str
    eval_annotations: str  # COCO JSON of the held-out images (ground truth for COCOeval)
    eval_images_dir: str
    num_train: int
    num_eval: int
    image_size: int
    seed: int


def prepare_shapes(base_dir: str, *, num_train: int, num_eval: int, image_size: int, seed: int = 0,
                   num_workers: int = 2) -> ShapesSplits:
    """Generates and converts (once; reused when ``base_dir`` already holds the same set) ``num_train`` training
    shapes images of seed ``seed`` and ``num_eval`` held-out ones of seed ``seed + EVAL_SEED_OFFSET``."""
    from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.data.shapes import generate_shapes  # pylint: disable=g-import-not-at-top

    out = os.path.join(base_dir, f"shapes_{num_train}+{num_eval}x{image_size}_seed{seed}")
    done = os.path.join(out, "DONE.json")
    if not os.path.exists(done):
        body = {}
        for split, count, split_seed in (("train", num_train, seed), ("eval", num_eval, seed + EVAL_SEED_OFFSET)):
            annotations = generate_shapes(os.path.join(out, f"raw_{split}"), num_images=count,
                                          image_size=image_size, seed=split_seed, num_workers=num_workers)
            images_dir = os.path.join(os.path.dirname(annotations), "images")
            report = convert_coco(annotations, images_dir, os.path.join(out, f"tfrecords_{split}"),
                                  split_name=split, eval_fraction=0.0, progress=False, num_workers=num_workers)
            body[f"{split}_pattern"] = report.file_pattern(split)
            body["label_map"] = report.label_map_file  # same classes in both
            if split == "eval":
                body["eval_annotations"] = annotations
                body["eval_images_dir"] = images_dir
        body.update(num_train=num_train, num_eval=num_eval, image_size=image_size, seed=seed)
        with open(done, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=1)
    with open(done, encoding="utf-8") as f:
        return ShapesSplits(**json.load(f))
