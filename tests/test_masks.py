"""The shared mask utility: pasting agrees with Model Garden's evaluator, RLE round-trips."""
import json

import numpy as np
import pytest

from maskrcnn_tfx import masks as mask_utils


def _model_garden_paste(masks, boxes, height, width):
    """Model Garden's evaluator path: normalized yxyx -> pixel xywh -> mask_ops.paste_instance_masks."""
    import maskrcnn_tfx  # noqa: F401
    from official.vision.ops import mask_ops

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    xywh = np.stack([boxes[:, 1] * width, boxes[:, 0] * height, (boxes[:, 3] - boxes[:, 1]) * width,
                     (boxes[:, 2] - boxes[:, 0]) * height], axis=-1)
    return mask_ops.paste_instance_masks(np.asarray(masks, np.float32), xywh, height, width)


def _random_boxes(rng, n, low=0.0, high=1.0):
    corners = rng.uniform(low, high, (n, 2, 2))
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    return np.concatenate([lo, hi], axis=-1)  # [ymin, xmin, ymax, xmax]


@pytest.mark.parametrize("seed,height,width,mask_size", [(0, 48, 64, 28), (1, 100, 37, 14), (2, 17, 17, 28)])
def test_paste_agrees_with_model_garden(seed, height, width, mask_size):
    rng = np.random.default_rng(seed)
    n = 25
    masks = rng.random((n, mask_size, mask_size)).astype(np.float32)
    boxes = _random_boxes(rng, n)
    ours = mask_utils.paste_masks(masks, boxes, height, width)
    theirs = _model_garden_paste(masks, boxes, height, width)
    assert ours.shape == (n, height, width) and ours.dtype == np.uint8
    assert set(np.unique(ours)) <= {0, 1}
    np.testing.assert_array_equal(ours, theirs)
    assert ours.sum() > 0


def test_paste_boxes_partly_outside_the_image_agree_with_model_garden():
    rng = np.random.default_rng(3)
    n = 30
    masks = rng.random((n, 28, 28)).astype(np.float32)
    boxes = _random_boxes(rng, n, low=-0.5, high=1.5)
    ours = mask_utils.paste_masks(masks, boxes, 40, 50)
    np.testing.assert_array_equal(ours, _model_garden_paste(masks, boxes, 40, 50))


def test_paste_box_entirely_outside_gives_empty_mask():
    masks = np.ones((2, 28, 28), np.float32)
    boxes = np.array([[1.2, 1.2, 1.5, 1.5], [-0.8, -0.9, -0.3, -0.4]])
    ours = mask_utils.paste_masks(masks, boxes, 30, 30)
    assert ours.shape == (2, 30, 30) and ours.sum() == 0


def test_paste_full_mask_covers_its_box():
    """A certain mask fills exactly its box's pixels (up to the one-pixel rounding of box edges)."""
    mask = np.ones((1, 28, 28), np.float32)
    box = np.array([[0.25, 0.5, 0.75, 1.0]])  # rows 10..30, columns 20..40 of a 40x40 image
    pasted = mask_utils.paste_masks(mask, box, 40, 40)[0]
    expected = np.zeros((40, 40), np.uint8)
    expected[10:30, 20:40] = 1
    assert np.logical_xor(pasted, expected).sum() <= 2 * (20 + 20) + 4


def test_paste_zero_size_boxes():
    masks = np.ones((2, 28, 28), np.float32)
    boxes = np.array([[0.5, 0.5, 0.5, 0.5], [0.2, 0.3, 0.2, 0.9]])
    ours = mask_utils.paste_masks(masks, boxes, 20, 20)
    np.testing.assert_array_equal(ours, _model_garden_paste(masks, boxes, 20, 20))
    # At most the one row of pixels the degenerate boxes sit on.
    assert ours[0].sum() <= 1 and ours[1].sum() <= 20


def test_paste_no_detections():
    pasted = mask_utils.paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4)), 12, 9)
    assert pasted.shape == (0, 12, 9) and pasted.dtype == np.uint8
    assert mask_utils.encode_rle(pasted) == []
    assert mask_utils.masks_to_rle(np.zeros((0, 28, 28)), np.zeros((0, 4)), 12, 9) == []


def test_paste_threshold():
    masks = np.full((1, 28, 28), 0.6, np.float32)
    box = np.array([[0.0, 0.0, 1.0, 1.0]])
    assert mask_utils.paste_masks(masks, box, 30, 30).sum() > 0
    assert mask_utils.paste_masks(masks, box, 30, 30, threshold=0.7).sum() == 0


def test_paste_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="2 masks but 1 boxes"):
        mask_utils.paste_masks(np.zeros((2, 4, 4)), np.zeros((1, 4)), 5, 5)
    with pytest.raises(ValueError, match="M_h, M_w"):
        mask_utils.paste_masks(np.zeros((4, 4)), np.zeros((1, 4)), 5, 5)


def test_rle_round_trip_and_json():
    from pycocotools import mask as mask_api

    rng = np.random.default_rng(4)
    binary = (rng.random((3, 13, 21)) > 0.6).astype(np.uint8)
    rles = mask_utils.encode_rle(binary)
    assert len(rles) == 3
    text = json.dumps(rles)  # counts must be str to serialize
    loaded = json.loads(text)
    assert all(isinstance(r["counts"], str) and r["size"] == [13, 21] for r in loaded)
    np.testing.assert_array_equal(mask_utils.decode_rle(loaded), binary)
    # Same areas as pycocotools computes from its own encoding.
    areas = mask_api.area([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(areas, binary.reshape(3, -1).sum(axis=1))


def test_decode_uncompressed_rle():
    # 3x2 image, column-major: 0,1,1 | 1,0,0
    rle = {"size": [3, 2], "counts": [1, 3, 2]}
    np.testing.assert_array_equal(mask_utils.decode_rle([rle])[0], [[0, 1], [1, 0], [1, 0]])


def test_masks_to_rle_matches_paste():
    rng = np.random.default_rng(5)
    masks = rng.random((4, 28, 28)).astype(np.float32)
    boxes = _random_boxes(rng, 4)
    rles = mask_utils.masks_to_rle(masks, boxes, 33, 44)
    np.testing.assert_array_equal(mask_utils.decode_rle(rles), mask_utils.paste_masks(masks, boxes, 33, 44))
