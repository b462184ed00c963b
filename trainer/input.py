"""The training input pipeline: Model Garden's decoder and Mask R-CNN Parser, plus the data set's statistics.

Model Garden's ``maskrcnn_input.Parser`` (augmentation, resizing, anchors, targets) and ``TfExampleDecoder``
are used unchanged. Two things are added around them:

- the decoder also reads the Transform step's ``PIXEL_MEAN``/``PIXEL_STD`` features of each example (or uses
  ImageNet's statistics when the run has no Transform output);
- the parser's output images go through :func:`maskrcnn_tfx.trainer.preprocessing.renormalize_image`, the function the
  exported model applies at serving time, so training and serving normalize identically.

It also finds out whether the input files are GZIP-compressed (TFX Transform) or plain (the converter).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)
import tensorflow as tf
from official.common import dataset_fn as dataset_fn_lib
from official.vision.configs import maskrcnn as mg_maskrcnn
from official.vision.dataloaders import input_reader as vision_input_reader
from official.vision.dataloaders import input_reader_factory
from official.vision.dataloaders import maskrcnn_input
from official.vision.dataloaders import tf_example_decoder

from maskrcnn_tfx import example_format as ef
from maskrcnn_tfx.trainer import preprocessing

logger = logging.getLogger(__name__)

# Model Garden's file types (official.common.dataset_fn.pick_dataset_fn).
FILE_TYPE_PLAIN = "tfrecord"
FILE_TYPE_GZIP = "tfrecord_compressed"
_GZIP_MAGIC = b"\x1f\x8b"

# Keys under which the decoder hands the statistics to the parse function (not Model Garden's keys).
DECODED_PIXEL_MEAN = "pixel_mean"
DECODED_PIXEL_STD = "pixel_std"


class InputError(ValueError):
    """Input files that cannot be read as the product's examples."""


def as_patterns(files: Union[str, Sequence[str]]) -> List[str]:
    """File patterns as a list: TFX gives a list, users often one comma-separated string."""
    if isinstance(files, str):
        return [p.strip() for p in files.split(",") if p.strip()]
    return [str(p) for p in files]


def match_files(patterns: Union[str, Sequence[str]]) -> List[str]:
    """The files the patterns match, sorted; an error naming the patterns when there are none."""
    patterns = as_patterns(patterns)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
    if not files:
        raise InputError(f"no input files match {patterns}")
    return files


def _first_record(path: str, compression: str) -> Optional[bytes]:
    """The first record of ``path`` read with ``compression`` ("GZIP" or ""); None if the file has none.

    Raises tf.errors.DataLossError (or similar) when the compression is wrong: TFRecords carry CRCs.
    """
    for record in tf.data.TFRecordDataset(path, compression_type=compression).take(1):
        return record.numpy()
    return None


def detect_file_type(patterns: Union[str, Sequence[str]]) -> str:
    """``tfrecord_compressed`` for GZIP TFRecords, ``tfrecord`` for plain ones, from the first non-empty file.

    The GZIP magic bytes decide which reading is tried first; the reading that yields a record whose
    checksums pass is the answer (a plain TFRecord could start with the magic bytes by chance).
    """
    for path in match_files(patterns):
        with tf.io.gfile.GFile(path, "rb") as f:
            head = f.read(2)
        if not head:
            continue
        candidates = ["GZIP", ""] if head == _GZIP_MAGIC else ["", "GZIP"]
        for compression in candidates:
            try:
                record = _first_record(path, compression)
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError):
                continue
            if record is None:
                break  # A valid but empty file (e.g. an empty GZIP shard): look at the next one.
            return FILE_TYPE_GZIP if compression == "GZIP" else FILE_TYPE_PLAIN
    raise InputError(f"no readable TFRecord in {as_patterns(patterns)} (all files empty or corrupt)")


def resolve_file_type(compression: str, patterns: Union[str, Sequence[str]]) -> str:
    """Model Garden's file type for a configured ``data.compression`` (auto | gzip | none)."""
    if compression == "gzip":
        return FILE_TYPE_GZIP
    if compression == "none":
        return FILE_TYPE_PLAIN
    return detect_file_type(patterns)


def examples_have_pixel_statistics(patterns: Union[str, Sequence[str]], file_type: str) -> bool:
    """Whether the first example carries the Transform's PIXEL_MEAN and PIXEL_STD features."""
    compression = "GZIP" if file_type == FILE_TYPE_GZIP else ""
    for path in match_files(patterns):
        record = _first_record(path, compression)
        if record is not None:
            features = tf.train.Example.FromString(record).features.feature
            return ef.PIXEL_MEAN in features and ef.PIXEL_STD in features
    return False


class PixelStatisticsDecoder:
    """Model Garden's ``TfExampleDecoder``, whose output also holds the data set's pixel statistics.

    With ``from_examples`` the statistics are read from each example's PIXEL_MEAN/PIXEL_STD features (added
    by the Transform step; an example without them is an error); otherwise they are ImageNet's, which makes
    the renormalization the identity.
    """

    def __init__(self, decoder: tf_example_decoder.TfExampleDecoder, *, from_examples: bool):
        self._decoder = decoder
        self._from_examples = from_examples
        self._spec = {
            ef.PIXEL_MEAN: tf.io.FixedLenFeature([preprocessing.NUM_CHANNELS], tf.float32),
            ef.PIXEL_STD: tf.io.FixedLenFeature([preprocessing.NUM_CHANNELS], tf.float32),
        }

    def decode(self, serialized_example: tf.Tensor) -> Dict[str, tf.Tensor]:
        decoded = self._decoder.decode(serialized_example)
        if self._from_examples:
            stats = tf.io.parse_single_example(serialized_example, self._spec)
            decoded[DECODED_PIXEL_MEAN] = stats[ef.PIXEL_MEAN]
            decoded[DECODED_PIXEL_STD] = stats[ef.PIXEL_STD]
        else:
            decoded[DECODED_PIXEL_MEAN] = tf.constant(preprocessing.DEFAULT_PIXEL_MEAN, tf.float32)
            decoded[DECODED_PIXEL_STD] = tf.constant(preprocessing.DEFAULT_PIXEL_STD, tf.float32)
        return decoded


def renormalizing_parse_fn(parser: maskrcnn_input.Parser, is_training: bool) -> Callable:
    """Model Garden's parse function followed by the renormalization serving applies too."""
    parse = parser.parse_fn(is_training)

    def parse_and_renormalize(decoded: Dict[str, tf.Tensor]) -> Tuple[tf.Tensor, Dict[str, Any]]:
        images, labels = parse(decoded)
        images = preprocessing.renormalize_image(images, decoded[DECODED_PIXEL_MEAN],
                                                 decoded[DECODED_PIXEL_STD])
        return images, labels

    return parse_and_renormalize


def build_parser(task_config: mg_maskrcnn.MaskRCNNTask, params: mg_maskrcnn.DataConfig) -> maskrcnn_input.Parser:
    """Model Garden's Mask R-CNN Parser, with the arguments ``MaskRCNNTask.build_inputs`` gives it."""
    model = task_config.model
    return maskrcnn_input.Parser(
        output_size=model.input_size[:2],
        min_level=model.min_level,
        max_level=model.max_level,
        num_scales=model.anchor.num_scales,
        aspect_ratios=model.anchor.aspect_ratios,
        anchor_size=model.anchor.anchor_size,
        rpn_match_threshold=params.parser.rpn_match_threshold,
        rpn_unmatched_threshold=params.parser.rpn_unmatched_threshold,
        rpn_batch_size_per_im=params.parser.rpn_batch_size_per_im,
        rpn_fg_fraction=params.parser.rpn_fg_fraction,
        aug_rand_hflip=params.parser.aug_rand_hflip,
        aug_rand_vflip=params.parser.aug_rand_vflip,
        aug_scale_min=params.parser.aug_scale_min,
        aug_scale_max=params.parser.aug_scale_max,
        aug_type=params.parser.aug_type,
        skip_crowd_during_training=params.parser.skip_crowd_during_training,
        max_num_instances=params.parser.max_num_instances,
        include_mask=model.include_mask,
        outer_boxes_scale=model.outer_boxes_scale,
        mask_crop_size=params.parser.mask_crop_size,
        dtype=params.dtype,
    )


def build_dataset(task_config: mg_maskrcnn.MaskRCNNTask, params: mg_maskrcnn.DataConfig, *,
                  statistics_from_examples: bool,
                  input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """The batched (images, labels) dataset Model Garden's Mask R-CNN train and validation steps expect."""
    decoder_cfg = params.decoder.get()
    if params.decoder.type != "simple_decoder":
        raise InputError(f"decoder type {params.decoder.type!r} is not supported (the product's examples "
                         f"carry numeric class ids: use simple_decoder)")
    decoder = PixelStatisticsDecoder(
        tf_example_decoder.TfExampleDecoder(
            include_mask=task_config.model.include_mask,
            regenerate_source_id=decoder_cfg.regenerate_source_id,
            mask_binarize_threshold=decoder_cfg.mask_binarize_threshold),
        from_examples=statistics_from_examples)
    parser = build_parser(task_config, params)
    reader = input_reader_factory.input_reader_generator(
        params,
        dataset_fn=dataset_fn_lib.pick_dataset_fn(params.file_type),
        # Graph code as written: AutoGraph's conversion of Model Garden's decoder and parser is most of the cost
        # of tracing them and changes no op (see MaskRCNNTrainerTask.train_step).
        decoder_fn=tf.autograph.experimental.do_not_convert(decoder.decode),
        combine_fn=vision_input_reader.create_combine_fn(params),
        parser_fn=tf.autograph.experimental.do_not_convert(renormalizing_parse_fn(parser, params.is_training)))
    return reader.read(input_context=input_context)
