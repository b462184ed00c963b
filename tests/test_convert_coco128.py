"""The converter on real COCO data (coco128: 128 images, 929 polygons, 10 crowd RLEs, 80 categories with ids
up to 90): every instance of every image must equal what pycocotools reads from the JSON."""
import glob
import os

import numpy as np
import pytest
from pycocotools.coco import COCO

from test_convert_coco import read_records

from maskrcnn_tfx.example_format import from_tf_example
from maskrcnn_tfx.label_map import LabelMap
from maskrcnn_tfx.data.convert import convert_coco


@pytest.fixture(scope="module")
def coco128(coco128_dir, tmp_path_factory):
    annotations_file = os.path.join(coco128_dir, "annotations", "instances.json")
    out = str(tmp_path_factory.mktemp("coco128_out"))
    report = convert_coco(annotations_file, os.path.join(coco128_dir, "images"), out, num_shards=3, num_workers=2,
                          progress=False)
    records = read_records(glob.glob(os.path.join(out, "train", "train.tfrecord-*-of-00003")))
    examples = {}
    for record in records:
        example = from_tf_example(record)
        assert example.source_id not in examples, f"image {example.source_id} written twice"
        examples[example.source_id] = example
    return COCO(annotations_file), examples, report, out


def test_counts(coco128):
    coco, examples, report, _ = coco128
    assert sorted(examples) == sorted(coco.imgs)  # 128 images, the 2 without annotations included
    assert {i: e.num_instances for i, e in examples.items()} == {i: len(coco.imgToAnns[i]) for i in coco.imgs}
    assert sum(e.num_instances for e in examples.values()) == 939
    assert sum(int(e.is_crowd.sum()) for e in examples.values()) == 10
    assert (report.images, report.instances, report.crowd, report.skipped) == (128, 939, 10, [])


def test_every_instance_matches_pycocotools(coco128):
    coco, examples, _, _ = coco128
    for image_id, ex in examples.items():
        info, anns = coco.imgs[image_id], coco.imgToAnns[image_id]
        assert (ex.height, ex.width, ex.format, ex.filename) == (info["height"], info["width"], "jpeg",
                                                                  info["file_name"])
        assert ex.classes.tolist() == [a["category_id"] for a in anns]
        assert ex.class_texts == [coco.cats[a["category_id"]]["name"] for a in anns]
        assert ex.is_crowd.tolist() == [a["iscrowd"] for a in anns]
        np.testing.assert_allclose(ex.areas, [a["area"] for a in anns], rtol=1e-6)
        h, w = info["height"], info["width"]
        expected_boxes = [[y / h, x / w, (y + bh) / h, (x + bw) / w] for x, y, bw, bh in (a["bbox"] for a in anns)]
        np.testing.assert_allclose(ex.boxes, np.asarray(expected_boxes).reshape(-1, 4), rtol=1e-6,
                                   err_msg=f"image {image_id}")
        masks = ex.decoded_masks()
        assert masks.shape == (len(anns), h, w)
        for mask, ann in zip(masks, anns):
            np.testing.assert_array_equal(mask, coco.annToMask(ann), err_msg=f"annotation {ann['id']}")


def test_label_map_keeps_coco_ids_and_names(coco128):
    coco, _, _, out = coco128
    label_map = LabelMap.load(os.path.join(out, "label_map.json"))
    assert label_map.as_dict() == {c["id"]: c["name"] for c in coco.dataset["categories"]}
    assert len(label_map) == 80 and label_map.num_classes == 91
