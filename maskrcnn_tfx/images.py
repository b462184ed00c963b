"""Image rules shared by the converter, the annotation validator, training, serving and the report (no TensorFlow).

Two rules hold for every image the product reads:

- **Size limit.** An image is first measured by its header alone (the JPEG SOFn frame header, the PNG IHDR
  chunk), and one declaring more than the limit's pixels is refused before any pixel is decoded. The served
  model does the same inside its graph (``trainer/export.py``) with the limit of the export configuration
  (``export.max_image_pixels``, default :data:`DEFAULT_MAX_IMAGE_PIXELS`).
- **EXIF orientation is ignored: the stored pixel grid is the image.** COCO's width, height, boxes and
  polygons refer to the stored grid, TensorFlow's decoders (training and serving) ignore EXIF, and so do the
  converter, the validator and the report. A photo whose annotations were drawn on its rotated view has a
  width and height swapped against its stored grid; the converter refuses it with an error saying so.

Only JPEG and PNG are accepted (the formats of the example format); GIF, BMP and others are refused.
"""
from __future__ import annotations

import io
import struct
from typing import Tuple

import numpy as np

# The default limit on an image's pixel count, for serving (export.max_image_pixels) and for training data.
# 2**26 = 67,108,864 pixels (8192 x 8192): a 48-megapixel phone photo (8000 x 6000 = 48,000,000) and a
# 64-megapixel one (9248 x 6936 = 64,144,128) pass. What one image can cost in the served graph, which resizes
# the decoded uint8 image before any float copy (trainer/export.py): 3 bytes per pixel of decoded RGB plus, for
# a progressive or multi-scan JPEG, libjpeg's whole-image coefficient buffers of 2 bytes per coefficient, at
# most 3 components per pixel: 6 bytes; 9 bytes x 67.1 M = 604 MB at worst (201 MB for a PNG or baseline JPEG).
# With the network itself (tens to a few hundred MB) and the request's bytes, one request stays under about
# 1 GB; a request whose images together exceed the limit is decoded one image at a time, so the bound holds for
# any batch.
DEFAULT_MAX_IMAGE_PIXELS = 2 ** 26

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG markers that start a frame header (SOF0-3, 5-7, 9-11, 13-15; 0xC4, 0xC8 and 0xCC are not frames).
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and the restart markers (SOI, EOI handled apart).
_JPEG_STANDALONE_MARKERS = frozenset([0x01] + list(range(0xD0, 0xD8)))
# EXIF orientation values and what they ask a viewer to do (values 5 to 8 swap width and height).
EXIF_ORIENTATIONS = {
    1: "normal", 2: "mirrored", 3: "rotated 180 degrees", 4: "flipped vertically",
    5: "mirrored and rotated 90 degrees", 6: "rotated 90 degrees clockwise",
    7: "mirrored and rotated 270 degrees", 8: "rotated 90 degrees counter-clockwise",
}
_EXIF_ORIENTATION_TAG = 0x0112


class ImageHeaderError(ValueError):
    """Bytes whose header does not give a JPEG or PNG image's size (another format, truncated, corrupt)."""


class ImageTooLargeError(ValueError):
    """An image whose header declares more pixels than the limit."""


def image_format(data: bytes) -> str:
    """"jpeg" or "png" by the magic bytes; :class:`ImageHeaderError` for anything else."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    if not data:
        raise ImageHeaderError("empty image file")
    kind = _other_format(data)
    raise ImageHeaderError(f"unsupported image format {kind} (JPEG and PNG are supported)" if kind
                           else f"not a JPEG or PNG image (its first bytes: {data[:8]!r})")


def _other_format(data: bytes) -> str:
    for magic, name in ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"RIFF", "RIFF/WebP"),
                        (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")):
        if data.startswith(magic):
            return name
    return ""


def declared_size(data: bytes) -> Tuple[str, int, int]:
    """(format, height, width) as the image's header declares them, reading no pixel.

    JPEG: the first SOFn frame header (what libjpeg's ``jpeg_read_header`` and so TensorFlow's
    ``tf.image.extract_jpeg_shape`` read); PNG: the IHDR chunk, which the PNG standard puts first.
    """
    fmt = image_format(data)
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageHeaderError("truncated or corrupt PNG: no IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return fmt, height, width
    return fmt, *_jpeg_frame_size(data)


def _jpeg_frame_size(data: bytes) -> Tuple[int, int]:
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise ImageHeaderError(f"corrupt JPEG: no marker at byte {pos} before the frame header")
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            raise ImageHeaderError("corrupt JPEG: no frame header (SOFn) before the image data")
        if pos + 2 > end:
            break
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            raise ImageHeaderError(f"corrupt JPEG: marker 0x{marker:02X} has length {length}")
        if marker in _JPEG_SOF_MARKERS:
            if pos + 7 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 3:pos + 7])
            return height, width
        pos += length
    raise ImageHeaderError("truncated JPEG: the data ends before the frame header (SOFn)")


def pixel_limit_problem(height: int, width: int, max_pixels: int) -> str:
    """Why an image of this size is refused under ``max_pixels``, or "" when it is within the limit."""
    pixels = int(height) * int(width)
    if pixels <= max_pixels:
        return ""
    return (f"the image is {width}x{height} (WxH) = {pixels} pixels, above the limit of {max_pixels} pixels "
            f"(export.max_image_pixels)")


def check_declared_size(data: bytes, max_pixels: int) -> Tuple[str, int, int]:
    """:func:`declared_size`, raising :class:`ImageTooLargeError` above ``max_pixels``."""
    fmt, height, width = declared_size(data)
    problem = pixel_limit_problem(height, width, max_pixels)
    if problem:
        raise ImageTooLargeError(problem)
    return fmt, height, width


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag of JPEG or PNG bytes (1, "normal", when there is none or it is unreadable).

    Read from the header only. The product does not apply it (see the module docstring); it explains a size
    that disagrees with the annotations.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top

    try:
        with Image.open(io.BytesIO(data)) as img:
            value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # pylint: disable=broad-except  (a broken EXIF block means no usable orientation)
        return 1
    return int(value) if value in EXIF_ORIENTATIONS else 1


def describe_orientation(orientation: int) -> str:
    return f"EXIF orientation {orientation} ({EXIF_ORIENTATIONS.get(orientation, 'unknown')})"


def swaps_width_and_height(orientation: int) -> bool:
    return orientation in (5, 6, 7, 8)


def decode_rgb(data: bytes) -> np.ndarray:
    """uint8 [H, W, 3] RGB of the stored pixel grid, as ``tf.io.decode_image(channels=3)`` gives it.

    What the model sees, for drawing: EXIF orientation ignored, alpha dropped (not blended), grey repeated to
    three channels, 16-bit samples cut to their high byte (as libpng's ``png_set_strip_16`` in TensorFlow's
    decoder; PIL's own conversion of 16-bit grey would saturate everything above 255 to white).
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top

    with Image.open(io.BytesIO(data)) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            grey = (np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
            return np.repeat(grey[:, :, np.newaxis], 3, axis=2)
        return np.asarray(img.convert("RGB"))
