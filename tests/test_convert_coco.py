"""The COCO converter on a tiny hand-made data set: record contents, Model Garden's decoder, determinism,
splits, output layout and the CLI.

The data set (``write_tiny_coco``) covers every segmentation form (polygon, multi-part polygon, uncompressed
crowd RLE, compressed RLE), JPEG (RGB, grayscale), PNG (RGBA, palette, one named ``.jpg``), an image without
annotations, a box overshooting its image by less than the tolerance, category ids with gaps, and image ids
listed out of order. Other test modules import its helpers.
"""
import copy
import glob
import json
import os
from typing import Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import maskrcnn_tfx  # noqa: F401
from maskrcnn_tfx import cli
from maskrcnn_tfx.example_format import from_tf_example
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx.data import convert
from maskrcnn_tfx.data.convert import ConversionReport, convert_coco

CATEGORIES = [{"id": 1, "name": "person", "supercategory": "human"}, {"id": 7, "name": "train"},
              {"id": 90, "name": "toothbrush"}]


def uncompressed_rle(mask: np.ndarray) -> Dict:
    """COCO's uncompressed RLE of a binary mask: column-major runs, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": runs}


def compressed_rle(mask: np.ndarray) -> Dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def box_of(mask: np.ndarray) -> List[float]:
    return [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))]


def write_image(path: str, kind: str, width: int, height: int, seed: int = 0) -> None:
    """A noise image of the given kind; the PIL format is chosen by kind, never by the file's extension."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "rgb_jpeg":
        Image.fromarray(rgb).save(path, "JPEG", quality=90)
    elif kind == "gray_jpeg":
        Image.fromarray(rgb[..., 0]).save(path, "JPEG", quality=90)
    elif kind == "rgba_png":
        alpha = rng.integers(0, 256, (height, width, 1), dtype=np.uint8)
        Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA").save(path, "PNG")
    elif kind == "palette_png":
        Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(path, "PNG")
    elif kind == "rgb_png":
        Image.fromarray(rgb).save(path, "PNG")
    else:
        raise ValueError(kind)


def tiny_coco() -> Tuple[Dict, Dict[str, Tuple[str, int, int]]]:
    """(COCO dict, {file name: (image kind, width, height)})."""
    files = {"a.jpg": ("rgb_jpeg", 64, 48), "gray.jpg": ("gray_jpeg", 40, 30), "rgba.png": ("rgba_png", 32, 32),
             "palette.jpg": ("palette_png", 24, 20), "empty.jpg": ("rgb_jpeg", 16, 16)}
    # Listed out of id order on purpose.
    images = [{"id": 42, "file_name": "rgba.png", "width": 32, "height": 32},
              {"id": 3, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": 100, "file_name": "empty.jpg", "width": 16, "height": 16},
              {"id": 10, "file_name": "gray.jpg", "width": 40, "height": 30},
              {"id": 7, "file_name": "palette.jpg", "width": 24, "height": 20}]
    crowd = np.zeros((48, 64), np.uint8)
    crowd[30:45, 2:21] = 1
    yy, xx = np.mgrid[:48, :64]
    disc = ((yy - 24) ** 2 + (xx - 40) ** 2 <= 36).astype(np.uint8)
    annotations = [
        {"id": 101, "image_id": 3, "category_id": 1, "iscrowd": 0, "area": 250.0, "bbox": [5, 5, 25, 20],
         "segmentation": [[5, 5, 30, 5, 5, 25]]},
        {"id": 102, "image_id": 3, "category_id": 7, "iscrowd": 0, "area": 200.0, "bbox": [35, 5, 25, 25],
         "segmentation": [[35, 5, 45, 5, 45, 15, 35, 15], [50, 20, 60, 20, 60, 30, 50, 30]]},
        {"id": 103, "image_id": 3, "category_id": 1, "iscrowd": 1, "area": float(crowd.sum()),
         "bbox": box_of(crowd), "segmentation": uncompressed_rle(crowd)},
        {"id": 104, "image_id": 3, "category_id": 90, "iscrowd": 0, "area": float(disc.sum()),
         "bbox": box_of(disc), "segmentation": compressed_rle(disc)},
        {"id": 201, "image_id": 10, "category_id": 7, "iscrowd": 0, "area": 120.5, "bbox": [2.5, 3, 20, 12],
         "segmentation": [[2.5, 3, 22.5, 3, 22.5, 15, 2.5, 15]]},
        {"id": 301, "image_id": 42, "category_id": 90, "iscrowd": 0, "area": 64.0, "bbox": [0, 0, 32, 32],
         "segmentation": [[0, 0, 32, 0, 32, 32, 0, 32]]},
        # Its box ends 0.6 px beyond the right border: within tolerance, clipped.
        {"id": 401, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 140.0, "bbox": [10, 5, 14.6, 10],
         "segmentation": [[10, 5, 24, 5, 24, 15, 10, 15]]},
    ]
    return {"images": images, "annotations": annotations, "categories": copy.deepcopy(CATEGORIES)}, files


def write_coco(root: str, coco: Dict, files: Dict[str, Tuple[str, int, int]]) -> Tuple[str, str]:
    """Writes ``root/images/*`` and ``root/instances.json``; returns (annotations file, images dir)."""
    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir, exist_ok=True)
    for i, (name, (kind, width, height)) in enumerate(sorted(files.items())):
        write_image(os.path.join(images_dir, name), kind, width, height, seed=i)
    annotations_file = os.path.join(root, "instances.json")
    with open(annotations_file, "w", encoding="utf-8") as f:
        json.dump(coco, f)
    return annotations_file, images_dir


def write_tiny_coco(root: str) -> Tuple[str, str]:
    return write_coco(root, *tiny_coco())


def read_records(paths) -> List[bytes]:
    import tensorflow as tf

    return [bytes(r.numpy()) for p in sorted(paths) for r in tf.data.TFRecordDataset(p)]


def read_split(output_dir: str, split: str) -> List[bytes]:
    return read_records(glob.glob(os.path.join(output_dir, split, f"{split}.tfrecord-*-of-*")))


def files_under(root: str) -> Dict[str, bytes]:
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(path) and not path.endswith(convert.REPORT_FILE):
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_coco(str(tmp_path_factory.mktemp("tiny_coco")))


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    annotations_file, images_dir = tiny
    out = str(tmp_path_factory.mktemp("tiny_out"))
    report = convert_coco(annotations_file, images_dir, out, num_shards=2, progress=False)
    return out, report


def test_records_match_the_annotations_and_pycocotools(tiny, converted):
    annotations_file, _ = tiny
    out, report = converted
    coco = COCO(annotations_file)
    examples = {e.source_id: e for e in map(from_tf_example, read_split(out, "train"))}
    assert sorted(examples) == [3, 7, 10, 42, 100]  # every image, the one without annotations too
    expected_format = {"a.jpg": "jpeg", "gray.jpg": "jpeg", "rgba.png": "png", "palette.jpg": "png",
                       "empty.jpg": "jpeg"}
    for image_id, ex in examples.items():
        info = coco.imgs[image_id]
        assert ex.format == expected_format[info["file_name"]]  # from the bytes, not the extension
        assert (ex.height, ex.width, ex.filename) == (info["height"], info["width"], info["file_name"])
        with open(os.path.join(tiny[1], info["file_name"]), "rb") as f:
            assert ex.encoded == f.read()  # image bytes kept as they are
        anns = coco.imgToAnns[image_id]
        assert ex.num_instances == len(anns)
        assert ex.classes.tolist() == [a["category_id"] for a in anns]
        assert ex.class_texts == [coco.cats[a["category_id"]]["name"] for a in anns]
        assert ex.is_crowd.tolist() == [a["iscrowd"] for a in anns]
        np.testing.assert_allclose(ex.areas, [a["area"] for a in anns], rtol=1e-6)
        masks = ex.decoded_masks()
        for i, ann in enumerate(anns):
            np.testing.assert_array_equal(masks[i], coco.annToMask(ann), err_msg=f"annotation {ann['id']}")
            x, y, w, h = ann["bbox"]
            W, H = info["width"], info["height"]
            expected = [y / H, x / W, min(y + h, H) / H, min(x + w, W) / W]
            np.testing.assert_allclose(ex.boxes[i], expected, rtol=1e-6, err_msg=f"annotation {ann['id']}")
    assert examples[7].boxes[0, 3] == 1.0  # the 0.6 px overshoot was clipped
    assert report.images == 5 and report.instances == 7 and report.crowd == 1 and not report.skipped


def test_model_garden_decoder_reads_the_records(converted):
    import tensorflow as tf
    from official.vision.dataloaders.tf_example_decoder import TfExampleDecoder

    out, _ = converted
    decoder = TfExampleDecoder(include_mask=True, regenerate_source_id=False)
    records = read_split(out, "train")
    assert len(records) == 5
    for record in records:
        ours = from_tf_example(record)
        decoded = decoder.decode(tf.constant(record))
        assert int(decoded["source_id"].numpy()) == ours.source_id
        assert decoded["image"].shape == (ours.height, ours.width, 3)  # grayscale, RGBA and palette too
        np.testing.assert_allclose(decoded["groundtruth_boxes"].numpy().reshape(-1, 4), ours.boxes)
        np.testing.assert_array_equal(decoded["groundtruth_classes"].numpy(), ours.classes)
        np.testing.assert_array_equal(decoded["groundtruth_is_crowd"].numpy(), ours.is_crowd.astype(bool))
        masks = decoded["groundtruth_instance_masks"].numpy()
        assert masks.shape == (ours.num_instances, ours.height, ours.width)
        np.testing.assert_array_equal(masks, ours.decoded_masks().astype(np.float32))


def test_same_input_gives_identical_bytes_for_any_worker_count(tiny, tmp_path):
    annotations_file, images_dir = tiny
    runs = []
    for name, workers in (("w1", 1), ("w2", 2), ("w2_again", 2), ("w1_again", 1)):
        out = str(tmp_path / name)
        # Seed 4 sends images 3 and 10 to eval.
        convert_coco(annotations_file, images_dir, out, num_shards=3, eval_fraction=0.4, seed=4,
                     num_workers=workers, progress=False)
        runs.append(files_under(out))
    assert sorted(runs[0]) == ["eval/eval.tfrecord-00000-of-00002", "eval/eval.tfrecord-00001-of-00002",
                               "label_map.json", "train/train.tfrecord-00000-of-00003",
                               "train/train.tfrecord-00001-of-00003", "train/train.tfrecord-00002-of-00003"]
    for other in runs[1:]:
        assert other == runs[0]


def test_shards_hold_sorted_ids_round_robin_and_splits_follow_the_hash(tiny, tmp_path):
    annotations_file, images_dir = tiny
    out = str(tmp_path / "out")
    report = convert_coco(annotations_file, images_dir, out, num_shards=3, eval_fraction=0.4, seed=1,
                          progress=False)
    # The hash is part of the data contract: the same seed must keep drawing the same eval images.
    expected = {"train": [3, 10], "eval": [7, 42, 100]}
    assert {i: convert.split_of(i, 0.4, 1) for i in (3, 7, 10, 42, 100)} == {
        i: split for split, ids in expected.items() for i in ids}
    for split, split_ids in expected.items():
        n = report.splits[split].images
        assert n == len(split_ids)
        shards = report.shard_paths(split)
        assert len(shards) == min(3, n)
        for k, shard in enumerate(shards):
            got = [from_tf_example(r).source_id for r in read_records([shard])]
            assert got == split_ids[k::len(shards)]
    # Another seed draws another eval set; the fraction is met over many ids.
    assert any(convert.split_of(i, 0.5, 0) != convert.split_of(i, 0.5, 1) for i in range(100))
    assert 900 < sum(convert.split_of(i, 0.1) == "eval" for i in range(10000)) < 1100


def test_label_map_and_report_files(converted):
    out, report = converted
    assert LabelMap.load(os.path.join(out, "label_map.json")).entries == ((1, "person"), (7, "train"),
                                                                          (90, "toothbrush"))
    with open(os.path.join(out, "conversion_report.json"), encoding="utf-8") as f:
        body = json.load(f)
    train = body["splits"]["train"]
    assert (train["images"], train["instances"], train["crowd"], train["num_shards"]) == (5, 7, 1, 2)
    assert train["shards"] == ["train.tfrecord-00000-of-00002", "train.tfrecord-00001-of-00002"]
    assert train["skipped"] == []
    loaded = ConversionReport.load(out)
    assert loaded.splits["train"].instances == 7 and loaded.file_pattern("train").endswith(
        os.path.join("train", "train.tfrecord-*-of-*"))
    assert glob.glob(loaded.file_pattern("train")) and len(glob.glob(loaded.file_pattern("train"))) == 2


def test_rerun_replaces_stale_shards_and_keeps_other_splits(tiny, tmp_path):
    annotations_file, images_dir = tiny
    out = str(tmp_path / "out")
    convert_coco(annotations_file, images_dir, out, num_shards=3, progress=False)
    convert_coco(annotations_file, images_dir, out, num_shards=2, progress=False)
    assert sorted(os.listdir(os.path.join(out, "train"))) == ["train.tfrecord-00000-of-00002",
                                                              "train.tfrecord-00001-of-00002"]
    # Converting another file into the same folder as another split (train2017 then val2017) keeps train.
    train_files = files_under(os.path.join(out, "train"))
    convert_coco(annotations_file, images_dir, out, num_shards=1, split_name="val", progress=False)
    assert files_under(os.path.join(out, "train")) == train_files
    body = json.loads(open(os.path.join(out, "conversion_report.json"), encoding="utf-8").read())
    assert sorted(body["splits"]) == ["train", "val"]
    assert body["splits"]["val"]["images"] == body["splits"]["train"]["images"] == 5


def test_other_label_map_into_a_folder_with_kept_splits_is_refused(tiny, tmp_path):
    annotations_file, images_dir = tiny
    out = str(tmp_path / "out")
    convert_coco(annotations_file, images_dir, out, progress=False)
    coco, _ = tiny_coco()
    coco["categories"] = coco["categories"] + [{"id": 91, "name": "hair brush"}]
    other = str(tmp_path / "other.json")
    with open(other, "w", encoding="utf-8") as f:
        json.dump(coco, f)
    with pytest.raises(convert.ConversionError, match="different label map"):
        convert_coco(other, images_dir, out, split_name="val", progress=False)
    # Rewriting the same split with another label map is fine: nothing inconsistent is left.
    convert_coco(other, images_dir, out, progress=False)
    assert 91 in LabelMap.load(os.path.join(out, "label_map.json"))


def test_auto_shard_count_and_argument_checks(tiny, tmp_path):
    assert [convert.auto_num_shards(n) for n in (1, 500, 501, 10**9)] == [1, 1, 2, convert.MAX_AUTO_SHARDS]
    annotations_file, images_dir = tiny
    report = convert_coco(annotations_file, images_dir, str(tmp_path / "auto"), progress=False)
    assert report.splits["train"].shards == ["train.tfrecord-00000-of-00001"]
    for kwargs in ({"on_error": "ignore"}, {"eval_fraction": 1.0}, {"num_shards": 0}, {"num_workers": 0},
                   {"split_name": "a/b"}, {"eval_fraction": 0.5, "split_name": "eval"}):
        with pytest.raises(ValueError):
            convert_coco(annotations_file, images_dir, str(tmp_path / "bad"), progress=False, **kwargs)


def test_cli_converts_and_prints_the_summary(tiny, tmp_path, capsys):
    annotations_file, images_dir = tiny
    out = str(tmp_path / "cli")
    code = cli.main(["convert-coco", "--annotations", annotations_file, "--images", images_dir, "--output", out,
                     "--num-shards", "2", "--eval-fraction", "0.3", "--workers", "1", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "Converted 5 images with 7 instances (1 crowd)" in printed
    assert os.path.join(out, "train", "train.tfrecord-*-of-*") in printed
    assert os.path.join(out, "label_map.json") in printed
    assert os.path.isfile(os.path.join(out, "conversion_report.json"))


def test_cli_rejects_beam_arguments_for_the_local_runner(tiny, tmp_path, capsys):
    annotations_file, images_dir = tiny
    code = cli.main(["convert-coco", "--annotations", annotations_file, "--images", images_dir, "--output",
                     str(tmp_path / "x"), "--", "--runner=DirectRunner"])
    assert code == 2
    assert "--runner is local" in capsys.readouterr().err


def test_progress_bar_counts_every_image(tiny, tmp_path, capsys):
    annotations_file, images_dir = tiny
    convert_coco(annotations_file, images_dir, str(tmp_path / "w2"), num_shards=2, num_workers=2, progress=True)
    assert "5/5" in capsys.readouterr().err  # the parent's bar, fed by the workers, ends at the total
    convert_coco(annotations_file, images_dir, str(tmp_path / "quiet"), num_shards=2, num_workers=2,
                 progress=False)
    assert "convert-coco" not in capsys.readouterr().err
