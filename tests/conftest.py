"""Shared test fixtures. Importing maskrcnn_tfx first selects tf_keras before TensorFlow loads."""
import os

import pytest

import maskrcnn_tfx  # noqa: F401
from _pipeline_runs import local_pipeline  # noqa: F401  (session fixture: the local pipeline's runs)

COCO128_ENV = "MASKRCNN_TFX_COCO128"


@pytest.fixture(scope="session")
def coco128_dir():
    """The real COCO sample (128 images), given by $MASKRCNN_TFX_COCO128; tests skip without it."""
    path = os.environ.get(COCO128_ENV, "")
    if not path or not os.path.isfile(os.path.join(path, "annotations", "instances.json")):
        pytest.skip(f"the COCO sample is absent: set {COCO128_ENV} to a folder with annotations/instances.json "
                    f"and images/ (make test sets it when ../shared/datasets/coco128 exists)")
    return path
