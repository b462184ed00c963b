"""Bad input: every kind of problem is named (file, image id, annotation id); ``fail`` raises ConversionError,
``skip`` leaves the record out, converts the rest and lists it; a failed or interrupted run leaves no
finished-looking shard and does not touch earlier outputs."""
import glob
import json
import os
from typing import Callable, Dict, Optional

import pytest

from test_convert_coco import files_under, read_split, tiny_coco, write_coco

from maskrcnn_tfx import cli
from maskrcnn_tfx.data import convert
from maskrcnn_tfx.data.convert import ConversionError, convert_coco

ALL_IMAGES, ALL_INSTANCES = 5, 7


def _annotation(coco: Dict, ann_id: int) -> Dict:
    return next(a for a in coco["annotations"] if a["id"] == ann_id)


def _truncate(images_dir: str, name: str, keep: float = 0.6) -> None:
    path = os.path.join(images_dir, name)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


def _overwrite(images_dir: str, name: str, data: bytes) -> None:
    with open(os.path.join(images_dir, name), "wb") as f:
        f.write(data)


def _bmp(images_dir: str, name: str) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32)).save(os.path.join(images_dir, name), "BMP")


def _resized(images_dir: str, name: str) -> None:
    from test_convert_coco import write_image

    write_image(os.path.join(images_dir, name), "gray_jpeg", 41, 30)


# name: (edit the COCO dict, edit the images folder, (file at fault, image id, annotation id, reason part),
#        (images, instances) converted with on_error="skip")
CASES = {
    "missing image file": (None, lambda d: os.remove(os.path.join(d, "gray.jpg")),
                           ("gray.jpg", 10, None, "image file not found"), (4, 6)),
    "truncated jpeg": (None, lambda d: _truncate(d, "a.jpg"), ("a.jpg", 3, None, "truncated"), (4, 3)),
    "truncated png": (None, lambda d: _truncate(d, "rgba.png", 0.9), ("rgba.png", 42, None, "truncated"), (4, 6)),
    "corrupt image": (None, lambda d: _overwrite(d, "palette.jpg", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),
                      ("palette.jpg", 7, None, "corrupt"), (4, 6)),
    "unsupported format": (None, lambda d: _bmp(d, "rgba.png"),
                           ("rgba.png", 42, None, "unsupported image format BMP"), (4, 6)),
    "size differs from the JSON": (
        None, lambda d: _resized(d, "gray.jpg"),
        ("gray.jpg", 10, None, "the image is 41x30 (WxH) but the annotations file says 40x30"), (4, 6)),
    "unknown image id": (lambda c: c["annotations"].append(dict(_annotation(c, 301), id=999, image_id=555)), None,
                         ("instances.json", 555, 999, "unknown image_id 555"), (5, 7)),
    "unknown category": (lambda c: _annotation(c, 102).update(category_id=5), None,
                         ("instances.json", 3, 102, "unknown category_id 5"), (5, 6)),
    "polygon of two points": (lambda c: _annotation(c, 201).update(segmentation=[[2, 3, 22, 3]]), None,
                              ("instances.json", 10, 201, "degenerate polygon: part 0 has 2 points"), (5, 6)),
    "polygon part of two points": (
        lambda c: _annotation(c, 102)["segmentation"].append([1, 1, 2, 2]), None,
        ("instances.json", 3, 102, "degenerate polygon: part 2 has 2 points"), (5, 6)),
    "polygon of zero area": (lambda c: _annotation(c, 201).update(segmentation=[[0, 0, 5, 5, 10, 10]]), None,
                             ("instances.json", 10, 201, "degenerate polygon: zero area"), (5, 6)),
    "polygon covering no pixel": (
        lambda c: _annotation(c, 301).update(segmentation=[[1.1, 1.1, 1.6, 1.1, 1.6, 1.6]]), None,
        ("instances.json", 42, 301, "the mask covers no pixel"), (5, 6)),
    "box outside the image": (lambda c: _annotation(c, 301).update(bbox=[0, 0, 33.5, 32]), None,
                              ("instances.json", 42, 301, "lies outside the 32x32 image"), (5, 6)),
    "box of zero width": (lambda c: _annotation(c, 101).update(bbox=[5, 5, 0, 20]), None,
                          ("instances.json", 3, 101, "degenerate box"), (5, 6)),
    "RLE runs overshooting the image": (
        lambda c: _annotation(c, 103)["segmentation"]["counts"].append(7), None,
        ("instances.json", 3, 103, "malformed RLE: the runs cover 3079 pixels, the image has 3072"), (5, 6)),
    "compressed RLE of another size": (lambda c: _annotation(c, 104)["segmentation"].update(size=[48, 63]), None,
                                       ("instances.json", 3, 104, "RLE size 48x63 (HxW) differs"), (5, 6)),
}


def _make(tmp_path, edit_json: Optional[Callable], edit_images: Optional[Callable]):
    coco, files = tiny_coco()
    if edit_json:
        edit_json(coco)
    annotations_file, images_dir = write_coco(str(tmp_path / "coco"), coco, files)
    if edit_images:
        edit_images(images_dir)
    return annotations_file, images_dir


@pytest.mark.parametrize("case", sorted(CASES))
def test_fail_names_the_record(case, tmp_path):
    edit_json, edit_images, (file_name, image_id, ann_id, reason), _ = CASES[case]
    annotations_file, images_dir = _make(tmp_path, edit_json, edit_images)
    out = str(tmp_path / "out")
    with pytest.raises(ConversionError) as info:
        convert_coco(annotations_file, images_dir, out, num_shards=2, progress=False)
    message = str(info.value)
    assert os.path.basename(message.split(":")[0]) == file_name, message
    assert f"image {image_id}" in message and reason in message, message
    assert (f"annotation {ann_id}" in message) == (ann_id is not None), message
    item = info.value.item
    assert (os.path.basename(item.file), item.image_id, item.annotation_id) == (file_name, image_id, ann_id)
    assert not glob.glob(os.path.join(out, "**", "*-of-*"), recursive=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_leaves_out_the_record_and_reports_it(case, tmp_path):
    edit_json, edit_images, (file_name, image_id, ann_id, reason), (images, instances) = CASES[case]
    annotations_file, images_dir = _make(tmp_path, edit_json, edit_images)
    out = str(tmp_path / "out")
    report = convert_coco(annotations_file, images_dir, out, num_shards=2, on_error="skip", progress=False)
    [item] = report.skipped
    assert (os.path.basename(item.file), item.image_id, item.annotation_id) == (file_name, image_id, ann_id)
    assert reason in item.reason
    assert (report.images, report.instances) == (images, instances)
    records = read_split(out, "train")
    assert len(records) == images
    with open(os.path.join(out, "conversion_report.json"), encoding="utf-8") as f:
        train = json.load(f)["splits"]["train"]
    assert [(os.path.basename(s["file"]), s["image_id"], s["annotation_id"]) for s in train["skipped"]] == [
        (file_name, image_id, ann_id)]
    assert (train["skipped_images"], train["skipped_annotations"]) == ((1, 0) if ann_id is None else (0, 1))


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_malformed_json_is_named_in_both_modes(on_error, tmp_path):
    annotations_file, images_dir = _make(tmp_path, None, None)
    with open(annotations_file, encoding="utf-8") as f:
        text = f.read()
    with open(annotations_file, "w", encoding="utf-8") as f:
        f.write(text[:200])
    with pytest.raises(ConversionError, match=rf"^{annotations_file}: malformed JSON: .* at line 1 column \d+"):
        convert_coco(annotations_file, images_dir, str(tmp_path / "out"), on_error=on_error, progress=False)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("categories"), "\"categories\" is missing or not a list"),
    (lambda c: c["images"].append(dict(c["images"][0])), "image id 42 is listed twice"),
    (lambda c: c["annotations"].append(dict(c["annotations"][0])), "annotation id 101 is listed twice"),
    (lambda c: c["images"][1].pop("height"), "image 3: \"height\" must be a positive integer"),
    (lambda c: c["categories"].append({"id": 2, "name": "person"}), "class name 'person' is listed twice"),
])
def test_structural_damage_is_named(edit, message, tmp_path):
    annotations_file, images_dir = _make(tmp_path, edit, None)
    with pytest.raises(ConversionError, match=rf"^{annotations_file}: .*{message}"):
        convert_coco(annotations_file, images_dir, str(tmp_path / "out"), on_error="skip", progress=False)


def test_skip_lists_every_problem_of_a_run(tmp_path, capsys):
    def edit_json(c):
        _annotation(c, 102).update(category_id=5)
        _annotation(c, 301).update(bbox=[0, 0, 40, 32])
        c["annotations"].append(dict(_annotation(c, 201), id=999, image_id=555))

    annotations_file, images_dir = _make(tmp_path, edit_json, lambda d: _truncate(d, "gray.jpg"))
    out = str(tmp_path / "out")
    code = cli.main(["convert-coco", "--annotations", annotations_file, "--images", images_dir, "--output", out,
                     "--on-error", "skip", "--workers", "2", "--num-shards", "3", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "Skipped 1 images and 3 annotations:" in printed
    for expected in (f"{annotations_file}: image 3, annotation 102: unknown category_id 5",
                     f"{os.path.join(images_dir, 'gray.jpg')}: image 10: corrupt or truncated image",
                     f"{annotations_file}: image 42, annotation 301: box [0, 0, 40, 32]",
                     f"{annotations_file}: image 555, annotation 999: unknown image_id 555"):
        assert expected in printed, printed
    report = convert.ConversionReport.load(out)
    assert [(s.image_id, s.annotation_id) for s in report.skipped] == [(3, 102), (10, None), (42, 301), (555, 999)]
    assert (report.images, report.instances) == (4, 4)


def test_cli_failure_exits_non_zero_with_the_record(tmp_path, capsys):
    annotations_file, images_dir = _make(tmp_path, None, lambda d: _truncate(d, "a.jpg"))
    code = cli.main(["convert-coco", "--annotations", annotations_file, "--images", images_dir, "--output",
                     str(tmp_path / "out"), "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: {os.path.join(images_dir, 'a.jpg')}: image 3: corrupt or truncated image" in err
    assert "--on-error skip" in err


def _shard_like_files(root: str):
    return sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**", "*-of-*"), recursive=True))


def _spy_on_cleanup(monkeypatch):
    """Records the temporary files that existed when the run removed them (proof that the run wrote some)."""
    removed, real_remove = [], convert._remove

    def remove(path):
        if os.path.exists(path):
            removed.append(os.path.basename(path))
        real_remove(path)

    monkeypatch.setattr(convert, "_remove", remove)
    return removed


def test_a_run_failing_midway_leaves_no_shard_and_keeps_earlier_outputs(tmp_path, monkeypatch):
    annotations_file, images_dir = _make(tmp_path, None, None)
    out, other = str(tmp_path / "out"), str(tmp_path / "other")
    convert_coco(annotations_file, images_dir, out, num_shards=4, eval_fraction=0.4, seed=4, progress=False)
    convert_coco(annotations_file, images_dir, other, num_shards=2, progress=False)
    before_out, before_other = files_under(out), files_under(other)

    # Image 42 passes the up-front checks (it exists) and breaks while its shard is being written, by a
    # worker of a two-worker run; the other shards are complete by then or stopped.
    _truncate(images_dir, "rgba.png", 0.9)
    fresh = str(tmp_path / "fresh")
    for target in (out, fresh):
        removed = _spy_on_cleanup(monkeypatch)
        with pytest.raises(ConversionError, match="rgba.png: image 42: corrupt or truncated image"):
            convert_coco(annotations_file, images_dir, target, num_shards=4, num_workers=2, progress=False)
        # Image 42 is the only one of shard 3; the other shards' files were on disk and got removed.
        assert ".train.tfrecord-00003." in " ".join(removed) and len(removed) >= 2, removed
        assert all(".tmp" in name and "-of-" not in name for name in removed)
    assert _shard_like_files(fresh) == []
    assert not [p for p in glob.glob(os.path.join(fresh, "**", "*"), recursive=True) if os.path.isfile(p)]
    # The earlier complete outputs are untouched: same files, same bytes, no temporary leftovers.
    assert files_under(out) == before_out
    assert not glob.glob(os.path.join(out, "**", ".*"), recursive=True)
    assert files_under(other) == before_other


def test_an_interrupted_run_removes_its_temporary_files(tmp_path, monkeypatch):
    annotations_file, images_dir = _make(tmp_path, None, None)
    real_convert_image, calls = convert.convert_image, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_convert_image(*args, **kwargs)

    monkeypatch.setattr(convert, "convert_image", interrupted)
    removed = _spy_on_cleanup(monkeypatch)
    out = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        convert_coco(annotations_file, images_dir, out, num_shards=2, progress=False)
    assert len(calls) == 4 and len(removed) == 2  # shard 0 (3 images) was complete, shard 1 was being written
    assert os.listdir(os.path.join(out, "train")) == []
    assert not os.path.exists(os.path.join(out, "conversion_report.json"))


def test_a_worker_dying_is_reported_not_hung(tmp_path, monkeypatch):
    annotations_file, images_dir = _make(tmp_path, None, None)
    real_convert_image = convert.convert_image

    def crashing(image, *args, **kwargs):
        if image.id == 42:
            os._exit(3)  # what the OOM killer or a segfault in native code looks like to the pool
        return real_convert_image(image, *args, **kwargs)

    monkeypatch.setattr(convert, "convert_image", crashing)  # forked workers inherit the patch
    out = str(tmp_path / "out")
    with pytest.raises(convert.WorkerDiedError, match="worker died unexpectedly"):
        convert_coco(annotations_file, images_dir, out, num_shards=4, num_workers=2, progress=False)
    assert _shard_like_files(out) == [] and os.listdir(os.path.join(out, "train")) == []
