"""The Transform preprocessing (pixel statistics, pass-through) and the shared renormalization."""
import io
import tempfile

import numpy as np
import pytest

import maskrcnn_tfx  # noqa: F401
import tensorflow as tf
from PIL import Image

from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx.trainer import preprocessing


def _encode(image: np.ndarray, image_format: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG" if image_format == "png" else "JPEG", quality=90)
    return buf.getvalue()


def _make_examples(rng: np.random.Generator):
    """Small images of different sizes and formats (one grayscale), with 0 to 2 instances each."""
    specs = [((17, 23), "png", "rgb"), ((9, 31), "png", "gray"), ((20, 12), "jpeg", "rgb"), ((5, 5), "png", "rgb")]
    examples = []
    for i, ((h, w), image_format, mode) in enumerate(specs):
        if mode == "gray":
            image = rng.integers(0, 256, (h, w), dtype=np.uint8)
        else:
            # Channels on different ranges so that their statistics differ.
            image = np.stack([rng.integers(0, 256, (h, w)), rng.integers(100, 140, (h, w)),
                              rng.integers(0, 30, (h, w))], axis=-1).astype(np.uint8)
        n = i % 3
        masks = [(rng.random((h, w)) > 0.5).astype(np.uint8) for _ in range(n)]
        examples.append(ef.InstanceExample(
            source_id=i + 1, encoded=_encode(image, image_format), format=image_format, height=h, width=w,
            filename=f"{i}.{image_format}",
            boxes=np.tile(np.array([[0.1, 0.2, 0.6, 0.9]], np.float32), (n, 1)),
            classes=np.arange(1, n + 1, dtype=np.int64), class_texts=[f"c{k}" for k in range(1, n + 1)],
            is_crowd=np.zeros(n, np.int64), areas=np.full(n, 7.5, np.float32),
            masks_png=[ef.encode_png_mask(m) for m in masks]))
    return examples


def _decoded_pixels(examples) -> np.ndarray:
    """All pixels as Model Garden's decoder sees them (TF's decoder, so JPEG matches bit for bit)."""
    return np.concatenate([tf.io.decode_image(e.encoded, channels=3).numpy().reshape(-1, 3) for e in examples])


def _run_transform(serialized, schema):
    """AnalyzeAndTransformDataset in-process on serialized tf.Examples, as the TFX Transform executor runs it.

    Writes the transformed examples and the transform graph like the executor does, and reads them back with
    the transformed feature spec; returns the parsed examples as dicts of numpy values.
    """
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tfx_bsl.public import tfxio

    work_dir = tempfile.mkdtemp()
    source = tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["test"], schema=schema)
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=f"{work_dir}/tmp"):
        raw = pipeline | beam.Create(serialized) | source.BeamSource()
        (transformed, metadata), transform_fn = (
            (raw, source.TensorAdapterConfig())
            | tft_beam.AnalyzeAndTransformDataset(preprocessing.preprocessing_fn))
        _ = transform_fn | tft_beam.WriteTransformFn(f"{work_dir}/transform")
        coder = tft.coders.ExampleProtoCoder(metadata.schema)
        _ = (transformed | beam.Map(coder.encode)
             | beam.io.WriteToTFRecord(f"{work_dir}/transformed", file_name_suffix=".tfrecord"))
    spec = tft.TFTransformOutput(f"{work_dir}/transform").transformed_feature_spec()
    files = tf.io.gfile.glob(f"{work_dir}/transformed*.tfrecord")
    rows = []
    for record in tf.data.TFRecordDataset(files):
        parsed = tf.io.parse_single_example(record, spec)
        rows.append({k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v).numpy()
                     for k, v in parsed.items()})
    return rows


@pytest.fixture(scope="module")
def examples():
    return _make_examples(np.random.default_rng(0))


def _expected_stats(examples):
    pixels = _decoded_pixels(examples).astype(np.float64)
    return pixels.mean(axis=0), pixels.std(axis=0)


def _check_transformed(results, examples):
    mean, std = _expected_stats(examples)
    assert len(results) == len(examples)
    by_id = {e.source_id: e for e in examples}
    for row in results:
        np.testing.assert_allclose(row[ef.PIXEL_MEAN], mean, atol=1e-3)
        np.testing.assert_allclose(row[ef.PIXEL_STD], std, atol=1e-3)
        source_id = row[ef.SOURCE_ID]
        source_id = source_id[0] if isinstance(source_id, (list, np.ndarray)) else source_id
        original = by_id[int(source_id)]
        for key, expected in ((ef.ENCODED, [original.encoded]), (ef.HEIGHT, [original.height]),
                              (ef.WIDTH, [original.width]), (ef.MASK, original.masks_png),
                              (ef.CLASS_LABEL, list(original.classes)), (ef.BBOX_YMIN, list(original.boxes[:, 0])),
                              (ef.CLASS_TEXT, [t.encode() for t in original.class_texts]),
                              (ef.AREA, list(original.areas))):
            assert list(np.atleast_1d(row[key])) == expected, key


def test_default_stats_are_model_gardens():
    from official.vision.ops import preprocess_ops

    assert preprocessing.DEFAULT_PIXEL_MEAN == preprocess_ops.MEAN_RGB
    assert preprocessing.DEFAULT_PIXEL_STD == preprocess_ops.STDDEV_RGB


def test_transform_adds_dataset_pixel_statistics_and_passes_features_through(examples):
    serialized = [ef.to_tf_example(e).SerializeToString() for e in examples]
    results = _run_transform(serialized, preprocessing.raw_schema())
    _check_transformed(results, examples)
    mean, std = _expected_stats(examples)
    # Not ImageNet's: the statistics are really the data's.
    assert np.abs(mean - np.array(preprocessing.DEFAULT_PIXEL_MEAN)).max() > 5


def test_transform_accepts_variable_length_scalars(examples):
    """SchemaGen without shape inference declares every feature variable-length; the statistics still work."""
    from tensorflow_transform.tf_metadata import schema_utils

    spec = {key: tf.io.VarLenFeature(value.dtype) for key, value in preprocessing.raw_feature_spec().items()}
    serialized = [ef.to_tf_example(e).SerializeToString() for e in examples[:2]]
    results = _run_transform(serialized, schema_utils.schema_from_feature_spec(spec))
    _check_transformed(results, examples[:2])


def test_pixel_statistics_of_constant_images_are_floored():
    """One solid colour: std 0 would make the renormalization divide by zero."""
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata

    image = np.full((6, 7, 3), (10, 20, 30), np.uint8)
    metadata = dataset_metadata.DatasetMetadata.from_feature_spec(preprocessing.image_feature_spec())
    with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
        transformed, _ = (([{ef.ENCODED: _encode(image, "png")}] * 2, metadata)
                          | tft_beam.AnalyzeAndTransformDataset(preprocessing.preprocessing_fn))
    data, _ = transformed
    np.testing.assert_allclose(data[0][ef.PIXEL_MEAN], [10, 20, 30], atol=1e-4)
    np.testing.assert_allclose(data[0][ef.PIXEL_STD], [preprocessing.MIN_PIXEL_STD] * 3)


def test_raw_feature_spec_parses_examples(examples):
    parsed = tf.io.parse_example([ef.to_tf_example(e).SerializeToString() for e in examples],
                                 preprocessing.raw_feature_spec())
    assert parsed[ef.ENCODED].shape == [len(examples)]
    assert set(parsed) >= {ef.ENCODED, ef.MASK, ef.BBOX_XMAX, ef.CLASS_LABEL, ef.IS_CROWD}
    np.testing.assert_array_equal(tf.sparse.to_dense(parsed[ef.CLASS_LABEL]).numpy()[2], [1, 2])


@pytest.mark.parametrize("shape", [(5, 7, 3), (2, 5, 7, 3)])
def test_renormalize_is_identity_with_default_stats(shape):
    images = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    out = preprocessing.renormalize_image(images, preprocessing.DEFAULT_PIXEL_MEAN,
                                          preprocessing.DEFAULT_PIXEL_STD)
    np.testing.assert_array_equal(out.numpy(), images)


def test_renormalize_matches_dataset_normalization():
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, (2, 4, 6, 3)).astype(np.float32)
    imagenet = (raw - np.array(preprocessing.DEFAULT_PIXEL_MEAN)) / np.array(preprocessing.DEFAULT_PIXEL_STD)
    mean, std = np.array([50.0, 100.0, 150.0]), np.array([10.0, 20.0, 40.0])
    expected = (raw - mean) / std

    single = preprocessing.renormalize_image(imagenet[0].astype(np.float32), mean, std)
    np.testing.assert_allclose(single.numpy(), expected[0], rtol=1e-5, atol=1e-4)
    batched = preprocessing.renormalize_image(imagenet.astype(np.float32), mean, std)
    np.testing.assert_allclose(batched.numpy(), expected, rtol=1e-5, atol=1e-4)

    # Per-image statistics [B, 3].
    means, stds = np.stack([mean, mean + 7]), np.stack([std, std * 2])
    per_image = preprocessing.renormalize_image(imagenet.astype(np.float32), means, stds)
    expected_per_image = (raw - means[:, None, None, :]) / stds[:, None, None, :]
    np.testing.assert_allclose(per_image.numpy(), expected_per_image, rtol=1e-5, atol=1e-4)
    assert per_image.dtype == tf.float32


def test_renormalize_keeps_dtype_and_floors_std():
    images = tf.ones([3, 3, 3], tf.bfloat16)
    assert preprocessing.renormalize_image(images, [0.0] * 3, [1.0] * 3).dtype == tf.bfloat16
    out = preprocessing.renormalize_image(tf.zeros([1, 1, 3]), [0.0] * 3, [0.0] * 3)
    assert np.all(np.isfinite(out.numpy()))
