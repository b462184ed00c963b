"""One exported tiny Mask R-CNN for the serving tests and benchmarks, made once per process.

The ``tiny`` preset, random-init weights (nothing is downloaded), exported by the product's own
``maskrcnn_tfx.trainer.export.export_serving_model`` with the shapes label map. Without a Transform graph the model uses
ImageNet's pixel statistics: the signatures, assets and warm-up requests are the same as a pipeline's export.
"""
from __future__ import annotations

import atexit
import functools
import io
import os
import shutil
import tempfile
from typing import List

import numpy as np

from maskrcnn_tfx.label_map import LabelMap

LABEL_MAP = LabelMap.from_pairs([(1, "square"), (2, "circle"), (3, "triangle")])
MODEL_NAME = "maskrcnn"
# A folder holding an export made by an earlier run (exported_model_dir's result) skips the export: for
# iterating on the serving tests; the suite itself always exports.
REUSE_ENV = "MASKRCNN_TFX_SERVING_TEST_MODEL"


@functools.lru_cache(maxsize=None)
def exported_model_dir() -> str:
    """The SavedModel folder (no version); made at the first call, removed when the process ends."""
    reuse = os.environ.get(REUSE_ENV, "")
    if reuse and os.path.isfile(os.path.join(reuse, "saved_model.pb")):
        return reuse
    from maskrcnn_tfx import config as config_lib  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx.trainer import experiment as experiment_lib  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx.trainer import export  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx.trainer import model as model_lib  # pylint: disable=import-outside-toplevel

    work_dir = tempfile.mkdtemp(prefix="serving_model_")
    atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
    config = config_lib.load_trainer_config("tiny")
    model = model_lib.build_model(experiment_lib.to_experiment_config(config, LABEL_MAP))
    model_dir = os.path.join(work_dir, "saved_model")
    export.export_serving_model(model, config, LABEL_MAP, model_dir, warmup_images=sample_images()[:2])
    return model_dir


def push(model_dir: str, base_dir: str, version: int) -> str:
    """What the Pusher does: the SavedModel copied to ``base_dir/<version>/``, saved_model.pb last."""
    target = os.path.join(base_dir, str(version))
    staging = target + ".partial"
    shutil.copytree(model_dir, staging, ignore=shutil.ignore_patterns("saved_model.pb"))
    shutil.copy2(os.path.join(model_dir, "saved_model.pb"), os.path.join(staging, "saved_model.pb"))
    os.rename(staging, target)
    return target


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """A few bright rectangles on a dark textured background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    for _ in range(3):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[y0:y0 + height // 3, x0:x0 + width // 3] = rng.integers(120, 255, 3)
    return image


@functools.lru_cache(maxsize=None)
def sample_images() -> List[bytes]:
    """Three small encoded images of different sizes: PNG, JPEG, PNG."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    encoded = []
    for i, (height, width, image_format) in enumerate([(64, 80, "PNG"), (96, 48, "JPEG"), (72, 72, "PNG")]):
        buf = io.BytesIO()
        Image.fromarray(_image(height, width, i)).save(buf, format=image_format)
        encoded.append(buf.getvalue())
    return encoded
