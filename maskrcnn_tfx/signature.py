"""The served signature's names (contract 4 of docs/architecture.md), without TensorFlow.

The exporter (``trainer/export.py``) builds the SavedModel with these names; the client, the local server and
the ``predict`` command speak to it with them. Keeping them here lets a client import them without loading
TensorFlow.
"""
from __future__ import annotations

import os

from maskrcnn_tfx import label_map as label_map_lib

# The image-bytes signature (what clients call) and the tf.Example one (what TFMA calls).
SERVING_SIGNATURE = "serving_default"
TF_EXAMPLE_SIGNATURE = "serving_tf_example"
IMAGES_INPUT = "images"
EXAMPLES_INPUT = "examples"
# The outputs of both signatures, per image.
DETECTION_BOXES = "detection_boxes"  # [N, 4] normalized (ymin, xmin, ymax, xmax) of the original image
DETECTION_CLASSES = "detection_classes"  # [N] label-map ids
DETECTION_SCORES = "detection_scores"  # [N]
NUM_DETECTIONS = "num_detections"  # scalar: valid rows; the rest is padding
DETECTION_MASKS = "detection_masks"  # [N, M, M] probabilities relative to each box
IMAGE_SIZE = "image_size"  # [2] original (height, width)
OUTPUT_KEYS = (DETECTION_BOXES, DETECTION_CLASSES, DETECTION_SCORES, NUM_DETECTIONS, DETECTION_MASKS, IMAGE_SIZE)
# The outputs' dtypes (numpy names): a JSON answer carries numbers only, the client restores these.
OUTPUT_DTYPES = {"detection_boxes": "float32", "detection_classes": "int32", "detection_scores": "float32",
                 "num_detections": "int32", "detection_masks": "float32", "image_size": "int32"}

# Files inside a SavedModel folder.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
LABEL_MAP_ASSET = os.path.join("assets", label_map_lib.FILE_NAME)
SAVED_MODEL_FILE = "saved_model.pb"

# Part of the error the model raises for bytes that are neither JPEG nor PNG.
NOT_AN_IMAGE_MESSAGE = "is not a decodable JPEG or PNG image"
# Part of the error the model raises for an image whose header declares more pixels than the export's
# max_image_pixels; the whole message reads "Input image 0 of the batch is 20000x20000 (WxH) = 400000000 pixels,
# above the limit of 67108864 pixels (export.max_image_pixels)".
IMAGE_TOO_LARGE_MESSAGE = "above the limit"
