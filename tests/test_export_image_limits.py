"""Both exported signatures against pixel bombs, broken bytes and odd images.

The tiny model is exported once per process by ``tests/served.py`` (shared with the serving tests).
The size check reads headers only, so bombs of 20000x20000 and 40000x40000 pixels (a few hundred KB to 1.6 MB
of PNG, 630 bytes of JPEG) are refused with INVALID_ARGUMENT without their pixels ever being allocated: the
process's peak memory barely moves (decoding the 20000x20000 PNG alone would take 1.2 GB).
"""
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

import _odd_images
from maskrcnn_tfx.testing import models as served
import maskrcnn_tfx  # noqa: F401  (before TensorFlow)
import tensorflow as tf

from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx import images as images_lib
from maskrcnn_tfx import signature

BOMBS = {f"{kind} {side}x{side}": (make(side, side), side)
         for side in (20000, 40000) for kind, make in (("png", _odd_images.png_bomb), ("jpeg", _odd_images.jpeg_bomb))}


@pytest.fixture(scope="module")
def loaded():
    return tf.saved_model.load(served.exported_model_dir())


def _serve_images(loaded, images):
    return loaded.signatures[signature.SERVING_SIGNATURE](**{signature.IMAGES_INPUT: tf.constant(images)})


def _serve_examples(loaded, images):
    examples = [tf.train.Example(features=tf.train.Features(feature={
        ef.ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))})).SerializeToString()
        for image in images]
    return loaded.signatures[signature.TF_EXAMPLE_SIGNATURE](**{signature.EXAMPLES_INPUT: tf.constant(examples)})


SIGNATURES = {"image bytes": _serve_images, "tf.Example": _serve_examples}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class _RssSampler:
    """The highest resident memory seen while the block runs (sampled every 2 ms, from its start)."""

    def __enter__(self):
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


@pytest.mark.parametrize("call", sorted(SIGNATURES))
def test_pixel_bombs_are_refused_by_their_header_with_size_and_limit(loaded, call):
    serve = SIGNATURES[call]
    good = served.sample_images()[0]
    serve(loaded, [good])  # traced and warm: what follows is the bombs' own cost
    limit = images_lib.DEFAULT_MAX_IMAGE_PIXELS
    with _RssSampler() as memory:
        for name, (bomb, side) in BOMBS.items():
            with pytest.raises(tf.errors.InvalidArgumentError) as caught:
                serve(loaded, [good, bomb])  # the bomb is the batch's second image
            expected = (f"Input image 1 of the batch is {side}x{side} (WxH) = {side * side} pixels, "
                        f"{signature.IMAGE_TOO_LARGE_MESSAGE} of {limit} pixels (export.max_image_pixels)")
            assert expected in caught.value.message, (name, caught.value.message)
    growth = memory.peak - memory.start
    # Decoding the smallest bomb would need 1.2 GB (20000 x 20000 x 3 bytes).
    assert growth < 300, f"resident memory rose by {growth:.0f} MB over the bombs"
    outputs = serve(loaded, [good])  # and the model still serves
    assert outputs[signature.IMAGE_SIZE].numpy().tolist() == [[64, 80]]


@pytest.mark.parametrize("call", sorted(SIGNATURES))
def test_broken_and_foreign_bytes_give_a_clear_invalid_argument(loaded, call):
    serve = SIGNATURES[call]
    good_png, good_jpeg = served.sample_images()[:2]
    gif = _odd_images.encode(Image.new("RGB", (8, 8)), "GIF")
    cases = {
        "text": (b"this is not an image", signature.NOT_AN_IMAGE_MESSAGE),
        "empty": (b"", signature.NOT_AN_IMAGE_MESSAGE),
        "GIF (decode_image would take it)": (gif, signature.NOT_AN_IMAGE_MESSAGE),
        "PNG cut inside its header": (good_png[:20], "is a truncated or corrupt PNG: no IHDR header"),
        "PNG cut in its pixel data": (good_png[:len(good_png) - 40], "PNG"),
        "JPEG cut inside its header": (good_jpeg[:30], "Invalid JPEG data"),
        "JPEG cut in its pixel data": (good_jpeg[:len(good_jpeg) * 3 // 4], "JPEG"),
    }
    for name, (data, expected) in cases.items():
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            serve(loaded, [good_png, data])
        assert expected in caught.value.message, (name, caught.value.message)


def test_odd_images_are_served_at_their_stored_size(loaded):
    """EXIF orientation is ignored (the stored grid is the image); grey, RGBA and 16-bit PNGs decode to RGB."""
    odd = _odd_images.odd_images()
    names = sorted(odd)
    outputs = _serve_images(loaded, [odd[n] for n in names])
    assert outputs[signature.IMAGE_SIZE].numpy().tolist() == [list(_odd_images.ODD_SIZES[n]) for n in names]
    boxes = outputs[signature.DETECTION_BOXES].numpy()
    assert np.all((boxes >= 0) & (boxes <= 1))
    from_examples = _serve_examples(loaded, [odd[n] for n in names])
    np.testing.assert_allclose(from_examples[signature.DETECTION_SCORES].numpy(),
                               outputs[signature.DETECTION_SCORES].numpy(), atol=1e-5)
