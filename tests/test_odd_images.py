"""Large and odd images through every part that reads pixels, and the pixel limit on training data.

A 4000x3000 JPEG tagged with EXIF orientation 6, a grayscale JPEG, an RGBA PNG and a 16-bit grey PNG
(``tests/_odd_images.py``) go through the converter, the annotation validator, the training input (Model
Garden's decoder and Parser), the serving preprocessing and the report's gallery decode. One rule holds in all
of them: the stored pixel grid is the image (EXIF orientation ignored). Pixel bombs are refused by their header,
by the converter (per ``on_error``) and the validator, and by the serving preprocessing. No model is exported
here (``tests/test_export_image_limits.py`` covers the exported signatures).
"""
import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

import _odd_images
import maskrcnn_tfx  # noqa: F401  (before TensorFlow)
import tensorflow as tf

from maskrcnn_tfx.components import annotation_checks as checks
from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx import images as images_lib
from maskrcnn_tfx.data.convert import ConversionError, convert_coco
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx.report import gallery

LABEL_MAP = LabelMap.from_pairs([(1, "thing")])
BOMB_FILES = {"bomb_png_20000.png": lambda: _odd_images.png_bomb(20000, 20000),
              "bomb_jpeg_40000.jpg": lambda: _odd_images.jpeg_bomb(40000, 40000)}


# ----------------------------------------------------------------------------------------------- headers


def test_declared_size_reads_jpeg_and_png_headers_as_tensorflow_does():
    odd = _odd_images.odd_images()
    progressive = _odd_images.encode(Image.fromarray(np.full((33, 47, 3), 90, np.uint8)), "JPEG",
                                     progressive=True)
    for name, data in dict(odd, progressive=progressive).items():
        fmt, height, width = images_lib.declared_size(data)
        if fmt == "jpeg":
            assert tf.image.extract_jpeg_shape(data).numpy()[:2].tolist() == [height, width], name
        else:
            with Image.open(io.BytesIO(data)) as img:
                assert img.size == (width, height), name
    assert images_lib.declared_size(_odd_images.png_bomb(20000, 20000)) == ("png", 20000, 20000)
    bomb = _odd_images.jpeg_bomb(40000, 40000)
    assert images_lib.declared_size(bomb) == ("jpeg", 40000, 40000)
    assert tf.image.extract_jpeg_shape(bomb).numpy()[:2].tolist() == [40000, 40000]
    assert images_lib.declared_size(odd["exif_4000x3000.jpg"]) == ("jpeg", 3000, 4000)


@pytest.mark.parametrize("data, message", [
    (b"", "empty image file"),
    (b"GIF89a" + bytes(20), "unsupported image format GIF"),
    (b"BM" + bytes(40), "unsupported image format BMP"),
    (b"hello world", "not a JPEG or PNG image"),
    (images_lib.PNG_MAGIC + bytes(10), "truncated or corrupt PNG: no IHDR header"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated JPEG"),
    (b"\xff\xd8\xff\xda\x00\x08" + bytes(6), "no frame header"),
])
def test_declared_size_refuses_what_is_not_a_whole_jpeg_or_png_header(data, message):
    with pytest.raises(images_lib.ImageHeaderError, match=message):
        images_lib.declared_size(data)


def test_pixel_limit_message_names_size_and_limit():
    with pytest.raises(images_lib.ImageTooLargeError) as caught:
        images_lib.check_declared_size(_odd_images.png_bomb(20000, 20000), images_lib.DEFAULT_MAX_IMAGE_PIXELS)
    assert str(caught.value) == ("the image is 20000x20000 (WxH) = 400000000 pixels, above the limit of "
                                 "67108864 pixels (export.max_image_pixels)")
    # A 48-megapixel phone photo passes the default limit.
    assert images_lib.pixel_limit_problem(6000, 8000, images_lib.DEFAULT_MAX_IMAGE_PIXELS) == ""


def test_decode_rgb_gives_tensorflows_pixels():
    """The gallery's decode (PIL) equals the model's (tf.io.decode_image, 3 channels) on every odd image."""
    for name, data in _odd_images.odd_images().items():
        ours = images_lib.decode_rgb(data)
        theirs = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
        assert ours.shape == theirs.shape == _odd_images.ODD_SIZES[name] + (3,), name
        # PNG decoding is exact. For JPEG, TensorFlow's default inverse DCT is libjpeg's fast integer one and
        # PIL's the accurate one: a level or so apart, the same picture.
        difference = np.abs(ours.astype(int) - theirs.astype(int))
        if name.endswith(".png"):
            assert difference.max() == 0, name
        else:
            assert difference.max() <= 8 and difference.mean() < 1.5, name
        shown = gallery._decode(ef.InstanceExample(1, data, "png", *ours.shape[:2]))  # pylint: disable=protected-access
        np.testing.assert_array_equal(shown, ours)
    grey16 = images_lib.decode_rgb(_odd_images.odd_images()["grey16.png"])
    assert 0 < grey16.mean() < 250, "16-bit grey must not saturate to white"


# ------------------------------------------------------------------------------------ converter, validator


def _polygon(height, width):
    return [[width * 0.2, height * 0.2, width * 0.7, height * 0.25, width * 0.5, height * 0.8]]


def _write_coco(root, names, sizes=None):
    """A COCO folder holding ``names`` (odd images and bombs), one polygon each; returns (json, images dir)."""
    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir, exist_ok=True)
    sources = dict(_odd_images.odd_images(), **{k: v() for k, v in BOMB_FILES.items()})
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i, name in enumerate(names, start=1):
        with open(os.path.join(images_dir, name), "wb") as f:
            f.write(sources[name])
        _, height, width = images_lib.declared_size(sources[name])
        height, width = (sizes or {}).get(name, (height, width))
        coco["images"].append({"id": i, "file_name": name, "height": height, "width": width})
        coco["annotations"].append({"id": 100 + i, "image_id": i, "category_id": 1, "iscrowd": 0,
                                    "bbox": [width * 0.2, height * 0.2, width * 0.5, height * 0.6],
                                    "segmentation": _polygon(height, width)})
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump(coco, f)
    return path, images_dir


def _records(output_dir):
    files = tf.io.gfile.glob(os.path.join(output_dir, "train", "train.tfrecord-*"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The odd images converted (on_error="skip" with the bombs in the same set)."""
    root = str(tmp_path_factory.mktemp("odd"))
    annotations, images_dir = _write_coco(root, sorted(_odd_images.odd_images()) + sorted(BOMB_FILES))
    report = convert_coco(annotations, images_dir, os.path.join(root, "out"), on_error="skip", progress=False)
    return report, _records(os.path.join(root, "out"))


def test_converter_keeps_odd_images_at_their_stored_size_and_skips_bombs(converted):
    report, records = converted
    examples = {e.filename: e for e in map(ef.from_tf_example, records)}
    assert sorted(examples) == sorted(_odd_images.odd_images())
    for name, example in examples.items():
        assert (example.height, example.width) == _odd_images.ODD_SIZES[name]
        assert example.encoded == _odd_images.odd_images()[name]  # the bytes, EXIF tag included, unchanged
        assert example.decoded_masks().shape == (1,) + _odd_images.ODD_SIZES[name]
    skipped = {os.path.basename(s.file): s.reason for s in report.skipped}
    assert skipped == {
        "bomb_png_20000.png": "the image is 20000x20000 (WxH) = 400000000 pixels, above the limit of 67108864 "
                              "pixels (export.max_image_pixels)",
        "bomb_jpeg_40000.jpg": "the image is 40000x40000 (WxH) = 1600000000 pixels, above the limit of "
                               "67108864 pixels (export.max_image_pixels)"}


@pytest.mark.parametrize("bomb", sorted(BOMB_FILES))
def test_converter_fails_on_a_bomb_naming_the_file(tmp_path, bomb):
    annotations, images_dir = _write_coco(str(tmp_path), ["grey.jpg", bomb])
    with pytest.raises(ConversionError) as caught:
        convert_coco(annotations, images_dir, str(tmp_path / "out"), progress=False)
    message = str(caught.value)
    assert message.startswith(os.path.join(images_dir, bomb) + ": image 2: the image is ")
    assert "above the limit of 67108864 pixels" in message
    assert not tf.io.gfile.glob(str(tmp_path / "out" / "train" / "*"))


def test_converter_limit_is_configurable(tmp_path):
    annotations, images_dir = _write_coco(str(tmp_path), ["grey.jpg", "rgba.png"])
    report = convert_coco(annotations, images_dir, str(tmp_path / "out"), on_error="skip", progress=False,
                          max_image_pixels=56 * 40)  # rgba.png (56x40) exactly at the limit is kept
    assert report.images == 1
    (skipped,) = report.skipped
    assert os.path.basename(skipped.file) == "grey.jpg"
    assert skipped.reason == ("the image is 64x48 (WxH) = 3072 pixels, above the limit of 2240 pixels "
                              "(export.max_image_pixels)")


def test_converter_cli_takes_the_limit_and_names_the_file(tmp_path, capsys):
    from maskrcnn_tfx import cli

    annotations, images_dir = _write_coco(str(tmp_path), ["grey.jpg", "rgba.png"])
    code = cli.main(["convert-coco", "--annotations", annotations, "--images", images_dir, "--output",
                     str(tmp_path / "out"), "--workers", "1", "--no-progress", "--max-image-pixels", "2240"])
    assert code == 1
    assert (f"error: {os.path.join(images_dir, 'grey.jpg')}: image 1: the image is 64x48 (WxH) = 3072 pixels, "
            f"above the limit of 2240 pixels" in capsys.readouterr().err)


def test_annotations_made_on_the_exif_rotated_view_are_refused_with_the_reason(tmp_path):
    """The JSON gives the photo's displayed size (3000x4000), its pixels are stored 4000x3000 with EXIF 6."""
    annotations, images_dir = _write_coco(str(tmp_path), ["exif_4000x3000.jpg"],
                                          sizes={"exif_4000x3000.jpg": (4000, 3000)})
    with pytest.raises(ConversionError) as caught:
        convert_coco(annotations, images_dir, str(tmp_path / "out"), progress=False)
    message = str(caught.value)
    assert message.startswith(os.path.join(images_dir, "exif_4000x3000.jpg") + ": image 1: ")
    assert "the image is 4000x3000 (WxH) but the annotations file says 3000x4000" in message
    assert "EXIF orientation 6 (rotated 90 degrees clockwise)" in message
    assert "EXIF orientation is ignored" in message


def test_validator_accepts_the_odd_records_and_refuses_a_bomb(converted):
    _, records = converted
    for record in records:
        assert checks.check_example(record, LABEL_MAP) == []
    example = ef.from_tf_example(records[0])
    bomb = ef.to_tf_example(ef.InstanceExample(
        source_id=7, encoded=_odd_images.jpeg_bomb(40000, 40000), format="jpeg", height=40000, width=40000,
        filename="bomb.jpg")).SerializeToString()
    (problem,) = checks.check_example(bomb, LABEL_MAP)
    assert problem.rule == checks.IMAGE_TOO_LARGE
    assert problem.describe() == ("source_id 7 (bomb.jpg): image_too_large: the image is 40000x40000 (WxH) = "
                                  "1600000000 pixels, above the limit of 67108864 pixels (export.max_image_pixels)")
    # The limit is the caller's (the pipeline passes the trainer configuration's export.max_image_pixels).
    small_limit = example.height * example.width - 1
    assert [p.rule for p in checks.check_example(records[0], LABEL_MAP, small_limit)] == [checks.IMAGE_TOO_LARGE]


def test_validator_explains_a_size_swapped_by_exif_orientation(converted):
    _, records = converted
    example = next(e for e in map(ef.from_tf_example, records) if e.filename == "exif_4000x3000.jpg")
    example.height, example.width = example.width, example.height
    example.masks_png = []
    example.boxes, example.classes, example.class_texts = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), []
    example.is_crowd, example.areas = np.zeros(0, np.int64), np.zeros(0, np.float32)
    (problem,) = checks.check_example(ef.to_tf_example(example).SerializeToString(), LABEL_MAP)
    assert problem.rule == checks.IMAGE_SIZE_MISMATCH
    assert "EXIF orientation 6" in problem.detail and "ignored" in problem.detail


# ------------------------------------------------------------------------- training input and serving


@pytest.fixture(scope="module")
def experiment():
    from maskrcnn_tfx import config as config_lib
    from maskrcnn_tfx.trainer import experiment as experiment_lib  # pylint: disable=g-import-not-at-top

    return experiment_lib.to_experiment_config(config_lib.load_trainer_config("tiny"), LABEL_MAP)


def _serving_module(experiment, max_image_pixels=images_lib.DEFAULT_MAX_IMAGE_PIXELS):
    """The serving module around a placeholder model: its preprocessing runs without an export."""
    import tf_keras
    from maskrcnn_tfx.trainer import export

    return export.MaskRCNNServingModule(experiment.replace(), tf_keras.Sequential(), LABEL_MAP, __file__,
                                        max_image_pixels=max_image_pixels)


def test_training_input_and_serving_see_the_same_pixels_of_odd_images(converted, experiment):
    """Model Garden's decoder and eval Parser (training) and the serving preprocessing give the same image for
    every odd record: the same stored grid (EXIF ignored by both), the same channels."""
    from official.vision.dataloaders import tf_example_decoder
    from maskrcnn_tfx.trainer import input as input_lib

    _, records = converted
    parse = input_lib.build_parser(experiment.task, experiment.task.validation_data).parse_fn(is_training=False)
    decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
    module = _serving_module(experiment)
    for record in records:
        example = ef.from_tf_example(record)
        train_image, labels = parse(decoder.decode(tf.constant(record)))
        served, image_info = module.preprocess_encoded(tf.constant([example.encoded]))
        np.testing.assert_allclose(served.numpy()[0], train_image.numpy(), atol=1e-4, err_msg=example.filename)
        np.testing.assert_allclose(image_info.numpy()[0], labels["image_info"].numpy(), atol=1e-5)
        assert image_info.numpy()[0, 0].tolist() == list(_odd_images.ODD_SIZES[example.filename])


def test_serving_preprocessing_refuses_above_its_limit_and_decodes_big_batches_one_by_one(experiment):
    images = [_odd_images.encode(Image.fromarray(np.full((40, 50, 3), 30 * i, np.uint8)), "PNG")
              for i in range(3)]
    generous = _serving_module(experiment)
    strict = _serving_module(experiment, max_image_pixels=40 * 50)  # each image fits, the batch does not
    parallel, info_parallel = generous.preprocess_encoded(tf.constant(images))
    one_by_one, info_one_by_one = strict.preprocess_encoded(tf.constant(images))
    np.testing.assert_array_equal(one_by_one.numpy(), parallel.numpy())
    np.testing.assert_array_equal(info_one_by_one.numpy(), info_parallel.numpy())
    tighter = _serving_module(experiment, max_image_pixels=40 * 50 - 1)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Input image 0 of the batch is 50x40 \(WxH\) = 2000 pixels, above the limit of "
                             r"1999 pixels \(export.max_image_pixels\)"):
        tighter.preprocess_encoded(tf.constant(images))


def test_a_jpeg_header_with_the_size_after_other_markers_is_read(experiment):
    """The frame header may follow EXIF, ICC and table segments; the in-graph check reads libjpeg's answer."""
    data = _odd_images.odd_images()["exif_4000x3000.jpg"]
    assert data.index(b"\xff\xe1") < data.index(b"\xff\xc0")  # APP1 (EXIF) comes first
    module = _serving_module(experiment)
    assert module.declared_pixels(tf.constant([data])).numpy().tolist() == [4000 * 3000]
    sof = data.index(b"\xff\xc0")
    assert struct.unpack(">HH", data[sof + 5:sof + 9]) == (3000, 4000)
