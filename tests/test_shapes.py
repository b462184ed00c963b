"""The synthetic shapes set: reproducible bytes, exact visible-pixel masks, valid COCO, and the CLI end to end."""
import glob
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskrcnn_tfx.data import shapes

NUM_IMAGES = 40
IMAGE_SIZE = 64


def _files(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _load(annotations_path):
    with open(annotations_path, encoding="utf-8") as f:
        return json.load(f)


def _read_rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def png_set(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shapes_png"))
    return shapes.generate_shapes(out, num_images=NUM_IMAGES, image_size=IMAGE_SIZE, seed=7)


def test_layout_and_return_value(png_set):
    root = os.path.dirname(os.path.dirname(png_set))
    assert png_set == os.path.join(root, "coco", "annotations.json")
    names = sorted(os.listdir(os.path.join(root, "coco", "images")))
    assert names == [f"{i:06d}.png" for i in range(1, NUM_IMAGES + 1)]
    coco = _load(png_set)
    assert [im["file_name"] for im in coco["images"]] == names
    assert [im["id"] for im in coco["images"]] == list(range(1, NUM_IMAGES + 1))
    assert all(im["height"] == im["width"] == IMAGE_SIZE for im in coco["images"])
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))


def test_same_seed_gives_identical_bytes(png_set, tmp_path):
    again = shapes.generate_shapes(str(tmp_path), num_images=NUM_IMAGES, image_size=IMAGE_SIZE, seed=7)
    first, second = _files(os.path.dirname(png_set)), _files(os.path.dirname(again))
    assert len(first) == NUM_IMAGES + 1
    assert first == second


def test_different_seed_gives_different_data(png_set, tmp_path):
    other = shapes.generate_shapes(str(tmp_path), num_images=NUM_IMAGES, image_size=IMAGE_SIZE, seed=8)
    first, second = _files(os.path.dirname(png_set)), _files(os.path.dirname(other))
    assert first.keys() == second.keys()
    differing = [name for name in first if first[name] != second[name]]
    # Every image (and the JSON) should differ; a colliding image or two would hint at shared random state.
    assert len(differing) == len(first)


def test_worker_count_does_not_change_output(png_set, tmp_path):
    parallel = shapes.generate_shapes(str(tmp_path), num_images=NUM_IMAGES, image_size=IMAGE_SIZE, seed=7,
                                      num_workers=2)
    assert _files(os.path.dirname(png_set)) == _files(os.path.dirname(parallel))


def test_a_smaller_set_is_a_prefix_of_a_larger_one(png_set, tmp_path):
    small = shapes.generate_shapes(str(tmp_path), num_images=5, image_size=IMAGE_SIZE, seed=7)
    large_files, small_files = _files(os.path.dirname(png_set)), _files(os.path.dirname(small))
    for name in (f"images/{i:06d}.png" for i in range(1, 6)):
        assert small_files[name] == large_files[name]
    large, small = _load(png_set), _load(small)
    prefix = [a for a in large["annotations"] if a["image_id"] <= 5]
    assert small["annotations"] == prefix


def test_rerun_into_the_same_folder_replaces_the_earlier_set(tmp_path):
    shapes.generate_shapes(str(tmp_path), num_images=6, image_size=IMAGE_SIZE, seed=1, image_format="jpeg")
    unrelated = tmp_path / "coco" / "images" / "notes.txt"
    unrelated.write_text("keep me")
    path = shapes.generate_shapes(str(tmp_path), num_images=3, image_size=IMAGE_SIZE, seed=1)
    images = sorted(os.listdir(tmp_path / "coco" / "images"))
    assert images == ["000001.png", "000002.png", "000003.png", "notes.txt"]
    assert len(_load(path)["images"]) == 3


def test_categories_and_instance_counts(png_set):
    coco = _load(png_set)
    assert coco["categories"] == [{"id": 1, "name": "square", "supercategory": "shape"},
                                  {"id": 2, "name": "circle", "supercategory": "shape"},
                                  {"id": 3, "name": "triangle", "supercategory": "shape"}]
    assert shapes.SHAPES_LABEL_MAP.as_dict() == {1: "square", 2: "circle", 3: "triangle"}
    per_image = {im["id"]: 0 for im in coco["images"]}
    for a in coco["annotations"]:
        per_image[a["image_id"]] += 1
        assert a["category_id"] in {1, 2, 3}
        assert a["iscrowd"] == 0
    assert all(1 <= n <= 4 for n in per_image.values()), per_image
    # The set is random, not degenerate: every class and several instance counts occur.
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3}
    assert len(set(per_image.values())) >= 3


def test_masks_are_exactly_the_visible_pixels_of_each_shape(png_set):
    coco = _load(png_set)
    images_dir = os.path.join(os.path.dirname(png_set), "images")
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for image_info in coco["images"]:
        image = _read_rgb(os.path.join(images_dir, image_info["file_name"]))
        assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        masks = [mask_utils.decode(a["segmentation"]) for a in by_image[image_info["id"]]]
        coverage = np.sum(masks, axis=0)
        assert coverage.max() == 1, f"image {image_info['id']}: a pixel belongs to two instances"
        colors = []
        for a, mask in zip(by_image[image_info["id"]], masks):
            pixels = image[mask.astype(bool)]
            color = pixels[0]
            assert (pixels == color).all(), f"annotation {a['id']}: mask pixels are not one colour"
            # The converse: every pixel of that colour is in the mask (nothing visible was left out).
            np.testing.assert_array_equal((image == color).all(-1), mask.astype(bool),
                                          err_msg=f"annotation {a['id']}")
            assert a["area"] == int(mask.sum()) >= shapes.MIN_VISIBLE_PIXELS
            ys, xs = np.nonzero(mask)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            colors.append(tuple(color))
        # Every other pixel is the one background colour: no unlabelled shape fragments.
        background = image[coverage == 0]
        if len(background):
            assert (background == background[0]).all(), f"image {image_info['id']}: unlabelled pixels"
            colors.append(tuple(background[0]))
        # Colours are kept apart (background included) so neighbouring shapes never blend.
        palette = np.array(colors, float)
        distances = np.linalg.norm(palette[:, None] - palette[None], axis=-1)[np.triu_indices(len(colors), 1)]
        assert (distances >= shapes.MIN_COLOR_DISTANCE).all(), f"image {image_info['id']}: colours too close"


def test_later_shapes_occlude_earlier_ones(png_set):
    """Annotations are back to front. A square is an axis-aligned rectangle, so any pixel inside the box of its
    visible part but outside its mask lies inside the square and must be covered by a later instance."""
    coco = _load(png_set)
    occluded_squares = 0
    for a in coco["annotations"]:
        if a["category_id"] != shapes.SQUARE:
            continue
        mask = mask_utils.decode(a["segmentation"]).astype(bool)
        x, y, w, h = a["bbox"]
        hidden = np.zeros_like(mask)
        hidden[y:y + h, x:x + w] = True
        hidden &= ~mask
        if not hidden.any():
            continue
        occluded_squares += 1
        later = np.zeros_like(mask)
        for b in coco["annotations"]:
            if b["image_id"] == a["image_id"] and b["id"] > a["id"]:
                later |= mask_utils.decode(b["segmentation"]).astype(bool)
        assert later[hidden].all(), f"annotation {a['id']}: pixels hidden by no later shape"
    assert occluded_squares > 0


def test_pycocotools_reads_the_json(png_set):
    coco = COCO(png_set)
    assert len(coco.getImgIds()) == NUM_IMAGES
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["square", "circle", "triangle"]
    images_dir = os.path.join(os.path.dirname(png_set), "images")
    for image_id in coco.getImgIds()[:10]:
        info = coco.loadImgs(image_id)[0]
        image = _read_rgb(os.path.join(images_dir, info["file_name"]))
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            mask = coco.annToMask(ann)
            assert mask.shape == (info["height"], info["width"])
            # Independent of the RLE: the pixels of the instance's colour.
            color = image[mask.astype(bool)][0]
            np.testing.assert_array_equal(mask.astype(bool), (image == color).all(-1))
            rle = coco.annToRLE(ann)
            assert int(mask_utils.area(rle)) == ann["area"]
            np.testing.assert_array_equal(mask_utils.toBbox(rle), ann["bbox"])


def test_jpeg_format_has_the_same_annotations(png_set, tmp_path):
    jpeg = shapes.generate_shapes(str(tmp_path), num_images=NUM_IMAGES, image_size=IMAGE_SIZE, seed=7,
                                  image_format="jpeg")
    png_coco, jpeg_coco = _load(png_set), _load(jpeg)
    assert jpeg_coco["annotations"] == png_coco["annotations"]
    assert [im["file_name"] for im in jpeg_coco["images"]] == [f"{i:06d}.jpg" for i in range(1, NUM_IMAGES + 1)]
    first = os.path.join(os.path.dirname(jpeg), "images", "000001.jpg")
    with Image.open(first) as im:
        assert im.format == "JPEG"
    # Quality 95 without chroma subsampling: pixels close to the lossless image, also along shape edges.
    png_pixels = _read_rgb(os.path.join(os.path.dirname(png_set), "images", "000001.png")).astype(int)
    assert np.abs(_read_rgb(first).astype(int) - png_pixels).mean() < 1.5


@pytest.mark.parametrize("kwargs", [dict(num_images=0), dict(image_size=16), dict(seed=-1),
                                    dict(image_format="gif"), dict(num_workers=0)])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    args = dict(num_images=2, image_size=IMAGE_SIZE, seed=0, image_format="png", num_workers=1)
    args.update(kwargs)
    with pytest.raises(ValueError):
        shapes.generate_shapes(str(tmp_path), **args)


def test_256_images_generate_quickly(tmp_path):
    import time

    start = time.monotonic()
    shapes.generate_shapes(str(tmp_path), num_images=256, image_size=128)
    # About 0.3 s on one core; the bound leaves room for a loaded CI machine.
    assert time.monotonic() - start < 10


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    from maskrcnn_tfx import cli

    assert cli.main(["make-shapes", "--output", str(tmp_path), "--eval-fraction", "1.5"]) == 2
    assert "--eval-fraction" in capsys.readouterr().err
    # Two images at 20%: no image hashes into eval; refused before anything is written.
    assert cli.main(["make-shapes", "--output", str(tmp_path), "--num-images", "2"]) == 2
    assert "eval split" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "coco")


def _read_tfrecords(pattern):
    import tensorflow as tf

    from maskrcnn_tfx import example_format

    paths = sorted(glob.glob(pattern))
    assert paths, f"no files match {pattern}"
    return [example_format.from_tf_example(bytes(r)) for r in tf.data.TFRecordDataset(paths).as_numpy_iterator()]


def _normalized_box(bbox, image_size):
    """COCO [x, y, w, h] in pixels -> the example format's (ymin, xmin, ymax, xmax) in [0, 1], rounded."""
    x, y, w, h = bbox
    return tuple(round(v / image_size, 4) for v in (y, x, y + h, x + w))


def test_make_shapes_cli_end_to_end(tmp_path, capsys):
    from maskrcnn_tfx import cli
    from maskrcnn_tfx.label_map import LabelMap

    out = str(tmp_path / "shapes")
    assert cli.main(["make-shapes", "--output", out, "--num-images", "20", "--image-size", str(IMAGE_SIZE),
                     "--seed", "3", "--eval-fraction", "0.25", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "20 images" in printed and os.path.join(out, "tfrecords") in printed

    coco = _load(os.path.join(out, "coco", "annotations.json"))
    tfrecords = os.path.join(out, "tfrecords")
    assert LabelMap.load(os.path.join(tfrecords, "label_map.json")) == shapes.SHAPES_LABEL_MAP
    train = _read_tfrecords(os.path.join(tfrecords, "train", "train.tfrecord-*"))
    evaluation = _read_tfrecords(os.path.join(tfrecords, "eval", "eval.tfrecord-*"))
    assert len(train) + len(evaluation) == 20
    assert 0 < len(evaluation) < len(train)
    examples = {ex.source_id: ex for ex in train + evaluation}
    assert sorted(examples) == list(range(1, 21))

    anns_by_image = {}
    for a in coco["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    images_dir = os.path.join(out, "coco", "images")
    for info in coco["images"]:
        ex, anns = examples[info["id"]], anns_by_image[info["id"]]
        assert (ex.height, ex.width) == (IMAGE_SIZE, IMAGE_SIZE)
        with open(os.path.join(images_dir, info["file_name"]), "rb") as f:
            assert Image.open(io.BytesIO(ex.encoded)).convert("RGB").tobytes() == \
                Image.open(f).convert("RGB").tobytes()
        assert ex.num_instances == len(anns)
        # Matched as sets: the order of instances within an example is the converter's business.
        want = sorted((a["category_id"], mask_utils.decode(a["segmentation"]).tobytes(),
                       _normalized_box(a["bbox"], IMAGE_SIZE)) for a in anns)
        got = sorted((int(c), m.tobytes(), tuple(round(float(v), 4) for v in b))
                     for c, m, b in zip(ex.classes, ex.decoded_masks(), ex.boxes))
        assert got == want
        assert sorted(ex.class_texts) == sorted(shapes.SHAPES_LABEL_MAP.name_of(a["category_id"]) for a in anns)
        assert sorted(ex.areas.tolist()) == sorted(float(a["area"]) for a in anns)

    # A rerun without an eval split leaves no eval shards of the earlier set behind.
    assert cli.main(["make-shapes", "--output", out, "--num-images", "8", "--image-size", "64",
                     "--eval-fraction", "0", "--no-progress"]) == 0
    assert not glob.glob(os.path.join(tfrecords, "eval", "*"))
    assert len(_read_tfrecords(os.path.join(tfrecords, "train", "train.tfrecord-*"))) == 8
    with open(os.path.join(tfrecords, "conversion_report.json"), encoding="utf-8") as f:
        assert sorted(json.load(f)["splits"]) == ["train"]
