"""The Beam pipeline (DirectRunner, in-memory for speed) writes the same examples, splits, shard names, label
map and report as the local converter, and passes Beam arguments through."""
import glob
import json
import os

import pytest

from test_convert_coco import read_split, tiny_coco, write_coco, write_tiny_coco

from maskrcnn_tfx import cli
from maskrcnn_tfx.data import beam_convert
from maskrcnn_tfx.data.beam_convert import convert_coco_beam
from maskrcnn_tfx.data.convert import ConversionError, ConversionReport, convert_coco

DIRECT_IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _names(out: str, split: str):
    return sorted(os.listdir(os.path.join(out, split)))


def test_beam_writes_the_same_examples_as_the_local_converter(tmp_path):
    annotations_file, images_dir = write_tiny_coco(str(tmp_path / "coco"))
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    kwargs = dict(num_shards=2, eval_fraction=0.4, seed=4)
    local_report = convert_coco(annotations_file, images_dir, local, progress=False, **kwargs)
    beam_report = convert_coco_beam(annotations_file, images_dir, beam, pipeline_args=DIRECT_IN_MEMORY, **kwargs)
    for split in ("train", "eval"):
        # Serialization is deterministic, so "the same examples" means the same record bytes; only their
        # order across shards is the runner's.
        beam_records = read_split(beam, split)
        assert beam_records and sorted(beam_records) == sorted(read_split(local, split)), split
        assert _names(beam, split) == _names(local, split) == [f"{split}.tfrecord-0000{i}-of-00002"
                                                               for i in range(2)]
        assert local_report.splits[split].to_dict() == beam_report.splits[split].to_dict()
    with open(os.path.join(beam, "label_map.json"), encoding="utf-8") as f, \
            open(os.path.join(local, "label_map.json"), encoding="utf-8") as g:
        assert f.read() == g.read()
    assert ConversionReport.load(beam).runner == "beam"
    assert sorted(os.listdir(beam)) == ["conversion_report.json", "eval", "label_map.json", "train"]


def test_beam_skips_and_reports_like_the_local_converter(tmp_path):
    coco, files = tiny_coco()
    next(a for a in coco["annotations"] if a["id"] == 102)["category_id"] = 5
    coco["annotations"].append(dict(coco["annotations"][0], id=999, image_id=555))
    annotations_file, images_dir = write_coco(str(tmp_path / "coco"), coco, files)
    os.remove(os.path.join(images_dir, "gray.jpg"))
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    local_report = convert_coco(annotations_file, images_dir, local, on_error="skip", progress=False)
    beam_report = convert_coco_beam(annotations_file, images_dir, beam, on_error="skip",
                                    pipeline_args=DIRECT_IN_MEMORY)
    assert [(s.image_id, s.annotation_id) for s in beam_report.skipped] == [(3, 102), (10, None), (555, 999)]
    assert beam_report.skipped == local_report.skipped
    assert (beam_report.images, beam_report.instances) == (local_report.images, local_report.instances) == (4, 5)
    assert sorted(read_split(beam, "train")) == sorted(read_split(local, "train"))


def test_beam_failure_names_the_record_and_leaves_no_shard(tmp_path):
    annotations_file, images_dir = write_tiny_coco(str(tmp_path / "coco"))
    path = os.path.join(images_dir, "a.jpg")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    out = str(tmp_path / "out")
    with pytest.raises(ConversionError, match=f"{path}: image 3: corrupt or truncated image"):
        convert_coco_beam(annotations_file, images_dir, out, num_shards=2, pipeline_args=DIRECT_IN_MEMORY)
    leftovers = [p for p in glob.glob(os.path.join(out, "**", "*"), recursive=True) if not os.path.isdir(p)]
    assert leftovers == []
    assert not glob.glob(os.path.join(out, "**", "beam-temp-*"), recursive=True)


def test_cli_passes_the_arguments_after_the_separator_to_beam(tmp_path, monkeypatch, capsys):
    annotations_file, images_dir = write_tiny_coco(str(tmp_path / "coco"))
    seen = []
    real_options = beam_convert.PipelineOptions

    def recording_options(flags):
        seen.append(list(flags))
        return real_options(flags)

    monkeypatch.setattr(beam_convert, "PipelineOptions", recording_options)
    out = str(tmp_path / "out")
    code = cli.main(["convert-coco", "--annotations", annotations_file, "--images", images_dir, "--output", out,
                     "--num-shards", "3", "--runner", "beam", "--", *DIRECT_IN_MEMORY, "--job_name=coco-test"])
    printed = capsys.readouterr().out
    assert code == 0
    assert seen == [DIRECT_IN_MEMORY + ["--job_name=coco-test"]]
    assert "Converted 5 images with 7 instances (1 crowd)" in printed and "beam runner" in printed
    assert _names(out, "train") == [f"train.tfrecord-0000{i}-of-00003" for i in range(3)]
    with open(os.path.join(out, "conversion_report.json"), encoding="utf-8") as f:
        assert json.load(f)["splits"]["train"]["instances"] == 7
