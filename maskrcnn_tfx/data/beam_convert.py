"""The COCO conversion as an Apache Beam pipeline, for data sets larger than one machine.

The pipeline runs the very same per-image function as the local driver (:func:`coco.convert_image`)::

    Create((split, image id) for every image)
      -> ParDo(ConvertImageFn)            one record per image, plus per-image statistics
      -> per split: WriteToTFRecord(<output>/<split>/<split>.tfrecord, num_shards=N, "-SSSSS-of-NNNNN")
      -> statistics: CombineGlobally -> one JSON file, turned into conversion_report.json by the launcher

The launcher plans first, like the local driver (reads and checks the annotations, assigns splits by hash of
the image id and fixes the shard count of each split), so both runners put the same images in the same
splits and shard counts; only the order of records inside the shards may differ. Each worker reads and indexes
the annotations file once (``DoFn.setup``) rather than receiving every image's annotations through the
pipeline graph, which would not fit a runner's job description for COCO-sized data.

Beam arguments pass through unchanged, e.g. ``--runner=DirectRunner --direct_num_workers=2`` or Dataflow's
``--runner=DataflowRunner --project=... --temp_location=gs://... --setup_file=./setup.py`` (workers need this
package installed; paths must then be readable by the workers, e.g. ``gs://``).
"""
from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from maskrcnn_tfx.data import convert
from maskrcnn_tfx.images import DEFAULT_MAX_IMAGE_PIXELS
from maskrcnn_tfx.data.coco import (CocoDataset, ConversionError, ImageInfo, SkippedItem, convert_image, read_coco,
                                    serialize_example)

_STATS = "stats"


def _empty_stats() -> Dict[str, Any]:
    return {"images": 0, "instances": 0, "crowd": 0, "skipped": []}


class ConvertImageFn(beam.DoFn):
    """(split, image id) -> (split, serialized example); per-image statistics on the ``stats`` output."""

    def __init__(self, annotations_file: str, images_dir: str, on_error: str,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        super().__init__()
        self._max_image_pixels = max_image_pixels
        self._annotations_file = annotations_file
        self._images_dir = images_dir
        self._on_error = on_error
        self._dataset: Optional[CocoDataset] = None
        self._images: Dict[int, ImageInfo] = {}

    def setup(self):
        self._dataset = read_coco(self._annotations_file)
        self._images = self._dataset.images_by_id

    def process(self, element: Tuple[str, int]) -> Iterator[Any]:
        split, image_id = element
        converted = convert_image(self._images[image_id], self._dataset.annotations_by_image.get(image_id, []),
                                  self._images_dir, self._dataset.categories, self._dataset.annotations_file,
                                  self._on_error, self._max_image_pixels)
        stats = _empty_stats()
        stats["skipped"] = [s.to_dict() for s in converted.skipped]
        if converted.example is not None:
            stats.update(images=1, instances=converted.example.num_instances,
                         crowd=int(converted.example.is_crowd.sum()))
            yield split, serialize_example(converted.example)
        yield beam.pvalue.TaggedOutput(_STATS, {split: stats})


def _merge_stats(parts) -> Dict[str, Dict[str, Any]]:
    merged: Dict[str, Dict[str, Any]] = {}
    for part in parts:
        for split, stats in part.items():
            into = merged.setdefault(split, _empty_stats())
            for key in ("images", "instances", "crowd"):
                into[key] += stats[key]
            into["skipped"].extend(stats["skipped"])
    return merged


def _remove_beam_temp_dirs(output_dir: str, splits: Sequence[str], stats_path: str) -> None:
    """Beam's file sinks stage files in ``beam-temp-<name>-<uuid>`` folders; a failed run may leave them."""
    prefixes = [(os.path.join(output_dir, split), f"beam-temp-{split}.tfrecord-") for split in splits]
    prefixes.append((output_dir, f"beam-temp-{os.path.basename(stats_path)}-"))
    for folder, prefix in prefixes:
        try:
            stale = [os.path.join(folder, n) for n in convert._listdir(folder)  # pylint: disable=protected-access
                     if n.startswith(prefix)]
            if stale:
                FileSystems.delete(stale)
        except Exception:  # pylint: disable=broad-except  (cleanup must not hide the run's own error)
            pass


def convert_coco_beam(annotations_file: str, images_dir: str, output_dir: str, *,
                      num_shards: Optional[int] = None, eval_fraction: float = 0.0, split_name: str = "train",
                      on_error: str = "fail", seed: int = 0,
                      max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                      pipeline_args: Sequence[str] = ()) -> convert.ConversionReport:
    """Same arguments, outputs and errors as :func:`convert.convert_coco`; ``pipeline_args`` go to Beam's
    ``PipelineOptions`` unchanged (there is no ``num_workers``: Beam's own options decide)."""
    convert._validate_arguments(num_shards, eval_fraction, split_name, 1, on_error)  # pylint: disable=protected-access
    start = time.monotonic()
    annotations_file, images_dir, output_dir = str(annotations_file), str(images_dir), str(output_dir)
    plan = convert.plan_conversion(annotations_file, images_dir, output_dir, num_shards=num_shards,
                                   eval_fraction=eval_fraction, split_name=split_name, on_error=on_error,
                                   seed=seed)
    stats_path = os.path.join(output_dir, f".beam-stats-{uuid.uuid4().hex[:12]}.json")
    elements = [(split, image.id) for split, images in plan.splits.items() for image in images]

    pipeline = beam.Pipeline(options=PipelineOptions(list(pipeline_args)))
    converted = (pipeline
                 | "ImageIds" >> beam.Create(elements)
                 | "Convert" >> beam.ParDo(ConvertImageFn(annotations_file, images_dir, on_error,
                                                          max_image_pixels))
                 .with_outputs(_STATS, main="records"))
    for split, count in plan.num_shards.items():
        _ = (converted.records
             | f"Select[{split}]" >> beam.Filter(lambda kv, s=split: kv[0] == s)
             | f"Records[{split}]" >> beam.Values()
             | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                 os.path.join(output_dir, split, f"{split}.tfrecord"), num_shards=count,
                 shard_name_template="-SSSSS-of-NNNNN"))
    _ = (converted[_STATS]
         | "MergeStats" >> beam.CombineGlobally(_merge_stats)
         | "StatsJson" >> beam.Map(json.dumps)
         | "WriteStats" >> beam.io.WriteToText(stats_path, num_shards=1, shard_name_template=""))
    try:
        pipeline.run().wait_until_finish()
    except Exception as e:  # pylint: disable=broad-except
        _remove_beam_temp_dirs(output_dir, list(plan.splits), stats_path)
        convert._remove(stats_path)  # pylint: disable=protected-access
        # Runners wrap a DoFn's exception in their own; give the user the record that failed.
        cause = _find_conversion_error(e)
        if cause is not None:
            raise ConversionError(cause.message, cause.item) from e
        raise

    stats = json.loads(convert._read_text(stats_path))  # pylint: disable=protected-access
    convert._remove(stats_path)  # pylint: disable=protected-access
    splits = {}
    for name in plan.splits:
        s = stats.get(name, _empty_stats())
        skipped = list(plan.skipped[name]) + [SkippedItem.from_dict(d) for d in s["skipped"]]
        skipped.sort(key=lambda i: (i.image_id if i.image_id is not None else -1,
                                    i.annotation_id if i.annotation_id is not None else -1))
        shards = [convert.shard_file_name(name, i, plan.num_shards[name]) for i in range(plan.num_shards[name])]
        splits[name] = convert.SplitReport(name, images=s["images"], instances=s["instances"], crowd=s["crowd"],
                                           shards=shards, skipped=skipped, annotations_file=annotations_file,
                                           images_dir=images_dir)
        convert.remove_stale_shards(output_dir, name, shards)
    report = convert.ConversionReport(output_dir=output_dir, annotations_file=annotations_file,
                                      images_dir=images_dir, splits=splits, on_error=on_error, runner="beam",
                                      num_workers=0, seconds=time.monotonic() - start)
    convert.write_metadata(plan, report)
    return report


def _find_conversion_error(error: BaseException) -> Optional[ConversionError]:
    """The ConversionError inside a runner's exception chain, preferring one that still names its record
    (runners re-raise it with their own context appended and the record dropped)."""
    found: Optional[ConversionError] = None
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ConversionError):
            if error.item is not None:
                return error
            found = found or error
        error = error.__cause__ or error.__context__
    return found
