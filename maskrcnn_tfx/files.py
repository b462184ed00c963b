"""Reading and writing whole files by local path or by any URL ``tf.io.gfile`` opens (``gs://``, ``s3://``).

Local paths use plain ``open`` so that tools which only touch local files never load TensorFlow.
"""
from __future__ import annotations


def is_remote(path: str) -> bool:
    return "://" in str(path)


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str, text: str) -> None:
    if is_remote(path):
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        with tf.io.gfile.GFile(path, "w") as f:
            f.write(text)
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
