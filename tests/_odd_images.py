"""Odd and hostile images for the tests, made with PIL and zlib (small, except where the size is the point).

- :func:`odd_images`: a 4000x3000 JPEG with an EXIF orientation tag, a grayscale JPEG, an RGBA PNG and a 16-bit
  grey PNG, by name;
- :func:`png_bomb` / :func:`jpeg_bomb`: pixel bombs. The PNG is a whole, valid image of zeros (a few hundred
  KB for 20000x20000); the JPEG is a small real JPEG whose frame header declares the big size.
"""
from __future__ import annotations

import functools
import io
import struct
import zlib
from typing import Dict

import numpy as np
from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112
# (height, width) of the stored pixels of each odd image.
ODD_SIZES = {"exif_4000x3000.jpg": (3000, 4000), "grey.jpg": (48, 64), "rgba.png": (40, 56),
             "grey16.png": (36, 52)}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _deflate_zeros(n: int) -> bytes:
    """A zlib stream of ``n`` zero bytes without compressing them all: full-flushed deflate blocks are
    independent, so one compressed 4 MB block repeats; the Adler-32 of n zeros is (n mod 65521) << 16 | 1."""
    block = 1 << 22

    def raw(size: int) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        return compressor.compress(bytes(size)) + compressor.flush(zlib.Z_FULL_FLUSH)

    body = raw(block) * (n // block) + (raw(n % block) if n % block else b"")
    final_empty_block = b"\x03\x00"
    return b"\x78\xda" + body + final_empty_block + struct.pack(">I", ((n % 65521) << 16) | 1)


@functools.lru_cache(maxsize=None)
def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros (every row filter 0): 389 KB at 20000x20000, 1.6 MB at 40000x40000."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", _deflate_zeros((width + 1) * height))
            + _chunk(b"IEND", b""))


@functools.lru_cache(maxsize=None)
def jpeg_bomb(width: int, height: int) -> bytes:
    """A 16x16 baseline JPEG whose SOF0 frame header declares ``width`` x ``height`` (at most 65535 each)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 90, 90)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gradient(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    planes = [(x * (3 + c) + y * (5 - c) + 40 * c) % 256 for c in range(channels)]
    rng = np.random.default_rng(seed)
    return np.clip(np.stack(planes, -1) + rng.integers(-8, 8, (height, width, channels)), 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def odd_images() -> Dict[str, bytes]:
    """Encoded odd images by file name (sizes in :data:`ODD_SIZES`)."""
    h, w = ODD_SIZES["exif_4000x3000.jpg"]
    # Smooth, so JPEG-compressed it is small; stored 4000 wide and 3000 high, tagged "rotate 90 clockwise".
    y, x = np.mgrid[0:h, 0:w]
    photo = np.stack([(x // 16) % 256, (y // 12) % 256, ((x + y) // 28) % 256], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    images = {"exif_4000x3000.jpg": encode(Image.fromarray(photo), "JPEG", quality=85, exif=exif.tobytes())}
    h, w = ODD_SIZES["grey.jpg"]
    images["grey.jpg"] = encode(Image.fromarray(_gradient(h, w, 1, 1)[:, :, 0], "L"), "JPEG", quality=90)
    h, w = ODD_SIZES["rgba.png"]
    rgba = _gradient(h, w, 4, 2)
    rgba[:, : w // 2, 3] = 0  # half transparent: the alpha is dropped, not blended
    images["rgba.png"] = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    h, w = ODD_SIZES["grey16.png"]
    y, x = np.mgrid[0:h, 0:w]
    grey16 = ((x * 1200 + y * 700) % 65536).astype(np.uint16)
    images["grey16.png"] = encode(Image.fromarray(grey16), "PNG")
    return images
