"""COCO JSON + images -> sharded TFRecords, a label map and a conversion report (the local driver).

Usage::

    from maskrcnn_tfx.data.convert import convert_coco
    report = convert_coco("instances.json", "images/", "data/", eval_fraction=0.1, num_workers=4)

Output (``output_dir``)::

    <split>/<split>.tfrecord-00000-of-00004   uncompressed TFRecords of Model Garden detection tf.Examples
    label_map.json                             the data set's own category ids and names
    conversion_report.json                     per split: images, instances, crowd, skipped items and why

How the output is made reproducible and safe:

- Split: with ``eval_fraction > 0`` an image goes to ``eval`` when a hash of (seed, image id) falls below the
  fraction, so the assignment depends on neither the worker count nor the file order.
- Shards: the images of a split, sorted by id, are dealt round robin to the shards (image ``k`` to shard
  ``k % num_shards``); each shard is written by one worker in id order, so the bytes are the same for any
  ``num_workers``.
- Atomicity: shards are written under hidden temporary names (``.<split>.tfrecord-00000.<run>.tmp``, no
  ``-of-`` in them) and renamed only once every shard of every split is complete; a failed or interrupted run
  removes its temporary files and leaves earlier outputs as they were. Finished shards of an earlier run of
  the same split that the new run does not produce (another shard count) are removed after the rename.
- Parallelism is per shard: at most ``num_shards`` workers are busy. Workers are forked (on Linux) after the
  plan is made, so they inherit TensorFlow's proto classes and the annotations instead of re-importing and
  re-sending them (see :func:`_worker_context`).
"""
from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from maskrcnn_tfx import label_map as label_map_lib
from maskrcnn_tfx.images import DEFAULT_MAX_IMAGE_PIXELS
from maskrcnn_tfx.files import is_remote
from maskrcnn_tfx.data.coco import (ON_ERROR_CHOICES, CocoDataset, ConversionError, ImageInfo, SkippedItem,
                                    annotation_problem, convert_image, image_path, read_coco,
                                    serialize_example)

__all__ = ["convert_coco", "ConversionReport", "SplitReport", "ConversionError", "SkippedItem",
           "shard_file_name", "split_of", "auto_num_shards"]

REPORT_FILE = "conversion_report.json"
REPORT_FORMAT = "maskrcnn-tfx/conversion-report@1"
EVAL_SPLIT = "eval"
# Model Garden's COCO train set uses 256 shards of ~460 images (~75 MB with masks); about as many per shard.
IMAGES_PER_SHARD = 500
MAX_AUTO_SHARDS = 4096
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def shard_file_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


def _shard_name_regex(split: str) -> "re.Pattern[str]":
    return re.compile(rf"^{re.escape(split)}\.tfrecord-\d{{5}}-of-\d{{5}}$")


def auto_num_shards(num_images: int) -> int:
    """Shards for a split of ``num_images`` when none is given: about ``IMAGES_PER_SHARD`` images each."""
    return max(1, min(MAX_AUTO_SHARDS, math.ceil(num_images / IMAGES_PER_SHARD)))


def split_of(image_id: int, eval_fraction: float, seed: int = 0, split_name: str = "train") -> str:
    """The split of an image: a hash of (seed, image id), so the same at any scale, order or worker count."""
    if eval_fraction <= 0:
        return split_name
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return EVAL_SPLIT if int.from_bytes(digest[:8], "big") / 2.0 ** 64 < eval_fraction else split_name


# ---------------------------------------------------------------------------------------------------------
# The report


@dataclasses.dataclass
class SplitReport:
    """What one split of a conversion holds."""

    name: str
    images: int = 0
    instances: int = 0
    crowd: int = 0
    shards: List[str] = dataclasses.field(default_factory=list)  # file names inside <output_dir>/<name>/
    skipped: List[SkippedItem] = dataclasses.field(default_factory=list)
    annotations_file: str = ""
    images_dir: str = ""

    @property
    def skipped_images(self) -> int:
        return sum(1 for s in self.skipped if s.is_image)

    @property
    def skipped_annotations(self) -> int:
        return sum(1 for s in self.skipped if not s.is_image)

    def to_dict(self) -> Dict[str, Any]:
        return {"images": self.images, "instances": self.instances, "crowd": self.crowd,
                "num_shards": len(self.shards), "shards": list(self.shards),
                "skipped_images": self.skipped_images, "skipped_annotations": self.skipped_annotations,
                "skipped": [s.to_dict() for s in self.skipped],
                "annotations_file": self.annotations_file, "images_dir": self.images_dir}

    @classmethod
    def from_dict(cls, name: str, body: Mapping[str, Any]) -> "SplitReport":
        return cls(name=name, images=int(body["images"]), instances=int(body["instances"]),
                   crowd=int(body["crowd"]), shards=list(body["shards"]),
                   skipped=[SkippedItem.from_dict(s) for s in body.get("skipped", [])],
                   annotations_file=body.get("annotations_file", ""), images_dir=body.get("images_dir", ""))


@dataclasses.dataclass
class ConversionReport:
    """The result of a conversion run: ``splits`` holds the splits this run wrote.

    ``conversion_report.json`` holds these splits plus those of earlier runs into the same ``output_dir``
    that this run did not rewrite (e.g. ``train`` from train2017.json, then ``val`` from val2017.json);
    :meth:`load` returns all of them.
    """

    output_dir: str
    annotations_file: str
    images_dir: str
    splits: Dict[str, SplitReport]
    on_error: str = "fail"
    runner: str = "local"
    num_workers: int = 1
    seconds: float = 0.0

    @property
    def label_map_file(self) -> str:
        return os.path.join(self.output_dir, label_map_lib.FILE_NAME)

    @property
    def report_file(self) -> str:
        return os.path.join(self.output_dir, REPORT_FILE)

    @property
    def images(self) -> int:
        return sum(s.images for s in self.splits.values())

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.splits.values())

    @property
    def crowd(self) -> int:
        return sum(s.crowd for s in self.splits.values())

    @property
    def skipped(self) -> List[SkippedItem]:
        return [item for s in self.splits.values() for item in s.skipped]

    def shard_paths(self, split: str) -> List[str]:
        return [os.path.join(self.output_dir, split, name) for name in self.splits[split].shards]

    def file_pattern(self, split: str) -> str:
        """The glob of a split's shards (for ImportExampleGen or Model Garden's ``input_path``)."""
        return os.path.join(self.output_dir, split, f"{split}.tfrecord-*-of-*")

    def summary(self) -> str:
        """Human-readable lines: counts per split, where the outputs are, and every skipped item."""
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        lines = [f"Converted {self.images} images with {self.instances} instances ({self.crowd} crowd) "
                 f"in {self.seconds:.1f}s ({rate:.1f} images/s, {self.runner} runner"
                 + (f", {self.num_workers} workers)" if self.runner == "local" else ")")]
        for name, s in self.splits.items():
            lines.append(f"  {name:<6} {s.images:>7} images {s.instances:>8} instances {s.crowd:>6} crowd "
                         f"{len(s.shards):>5} shards  {self.file_pattern(name)}")
        lines.append(f"  label map: {self.label_map_file}")
        lines.append(f"  report:    {self.report_file}")
        skipped = self.skipped
        if skipped:
            images = sum(1 for s in skipped if s.is_image)
            lines.append(f"Skipped {images} images and {len(skipped) - images} annotations:")
            lines.extend(f"  {item.describe()}" for item in skipped)
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        """The report file's body: every split, and how the last run went (``last_run``)."""
        return {"format": REPORT_FORMAT, "output_dir": self.output_dir, "label_map": label_map_lib.FILE_NAME,
                "splits": {name: s.to_dict() for name, s in self.splits.items()},
                "last_run": {"splits": list(self.splits), "annotations_file": self.annotations_file,
                             "images_dir": self.images_dir, "runner": self.runner, "on_error": self.on_error,
                             "num_workers": self.num_workers, "seconds": round(self.seconds, 3)}}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> "ConversionReport":
        """A report of every split the file lists (those of earlier runs included)."""
        if body.get("format") != REPORT_FORMAT:
            raise ValueError(f"not a conversion report (expected \"format\": \"{REPORT_FORMAT}\")")
        run = body["last_run"]
        return cls(output_dir=body["output_dir"], annotations_file=run["annotations_file"],
                   images_dir=run["images_dir"],
                   splits={n: SplitReport.from_dict(n, s) for n, s in body["splits"].items()},
                   on_error=run.get("on_error", "fail"), runner=run.get("runner", "local"),
                   num_workers=int(run.get("num_workers", 1)), seconds=float(run.get("seconds", 0.0)))

    @classmethod
    def load(cls, path_or_output_dir: str) -> "ConversionReport":
        path = path_or_output_dir
        if not path.endswith(".json"):
            path = os.path.join(path, REPORT_FILE)
        return cls.from_dict(json.loads(_read_text(path)))


# ---------------------------------------------------------------------------------------------------------
# File system helpers: plain os for local paths (no TensorFlow import), tf.io.gfile for remote ones.


def _gfile():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    return tf.io.gfile


def _read_text(path: str) -> str:
    if is_remote(path):
        with _gfile().GFile(path, "r") as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    if is_remote(path):
        with _gfile().GFile(tmp, "w") as f:
            f.write(text)
        _gfile().rename(tmp, path, overwrite=True)
        return
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def _makedirs(path: str) -> None:
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def _listdir(path: str) -> List[str]:
    if not _exists(path):
        return []
    return [n.rstrip("/") for n in _gfile().listdir(path)] if is_remote(path) else os.listdir(path)


def _rename(src: str, dst: str) -> None:
    if is_remote(src):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def _remove(path: str) -> None:
    if is_remote(path):
        if _gfile().exists(path):
            _gfile().remove(path)
    elif os.path.exists(path):
        os.remove(path)


# ---------------------------------------------------------------------------------------------------------
# Planning: read, check, assign splits and shards (shared with the Beam pipeline)


@dataclasses.dataclass
class ConversionPlan:
    dataset: CocoDataset
    images_dir: str
    output_dir: str
    on_error: str
    splits: Dict[str, List[ImageInfo]]  # split -> its images, sorted by id
    num_shards: Dict[str, int]
    skipped: Dict[str, List[SkippedItem]]  # found while planning (skip mode), by split
    previous_report: Optional[Dict[str, Any]]

    def shards_of(self, split: str) -> List[List[ImageInfo]]:
        """The images of each shard of a split: sorted by id and dealt round robin."""
        n = self.num_shards[split]
        return [self.splits[split][i::n] for i in range(n)]


def _validate_arguments(num_shards: Optional[int], eval_fraction: float, split_name: str, num_workers: int,
                        on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if not _SPLIT_NAME.match(split_name or ""):
        raise ValueError(f"split_name must be letters, digits, '_' or '-', got {split_name!r}")
    if eval_fraction > 0 and split_name == EVAL_SPLIT:
        raise ValueError(f"with eval_fraction > 0 the second split is {EVAL_SPLIT!r}; choose another split_name")
    if num_shards is not None and not 1 <= num_shards <= 99999:
        raise ValueError(f"num_shards must be in [1, 99999], got {num_shards}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")


def _previous_report(output_dir: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(output_dir, REPORT_FILE)
    if not _exists(path):
        return None
    try:
        body = json.loads(_read_text(path))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) and body.get("format") == REPORT_FORMAT else None


def _check_label_map_compatible(plan_splits: Sequence[str], label_map: label_map_lib.LabelMap, output_dir: str,
                                previous: Optional[Dict[str, Any]]) -> None:
    """Splits of an earlier run that this run keeps must share its label map: class ids would mean two things."""
    path = os.path.join(output_dir, label_map_lib.FILE_NAME)
    kept = sorted(set((previous or {}).get("splits", {})) - set(plan_splits))
    if not kept or not _exists(path):
        return
    try:
        existing = label_map_lib.LabelMap.load(path)
    except label_map_lib.LabelMapError:
        return
    if existing != label_map:
        raise ConversionError(
            f"{output_dir} already holds split(s) {', '.join(kept)} converted with a different label map "
            f"({path}); convert into another output directory, or remove those splits first")


def plan_conversion(annotations_file: str, images_dir: str, output_dir: str, *, num_shards: Optional[int],
                    eval_fraction: float, split_name: str, on_error: str, seed: int) -> ConversionPlan:
    """Reads and indexes the annotations, assigns splits and shard counts, and, with ``on_error="fail"``,
    checks every annotation (and, for local paths, that every image file exists) before any pixel is read,
    so bad input stops the run at once."""
    dataset = read_coco(annotations_file)
    if not dataset.images:
        raise ConversionError(f"{annotations_file}: the file lists no images")
    splits: Dict[str, List[ImageInfo]] = {split_name: []}
    if eval_fraction > 0:
        splits[EVAL_SPLIT] = []
    for image in dataset.images:
        splits[split_of(image.id, eval_fraction, seed, split_name)].append(image)
    for name, images in splits.items():
        if not images:
            raise ConversionError(f"{annotations_file}: no image of {len(dataset.images)} falls into split "
                                  f"{name!r} (eval_fraction={eval_fraction}); change eval_fraction")

    skipped: Dict[str, List[SkippedItem]] = {name: [] for name in splits}
    for orphan in dataset.orphans:
        if on_error == "fail":
            raise ConversionError.from_item(orphan)
        # An unknown image id still hashes to a split: its report entry lands where the image would have.
        skipped[split_of(orphan.image_id, eval_fraction, seed, split_name)].append(orphan)

    if on_error == "fail":
        check_files = not is_remote(images_dir)
        for image in dataset.images:
            if check_files and not os.path.isfile(image_path(images_dir, image)):
                raise ConversionError.from_item(
                    SkippedItem(image_path(images_dir, image), "image file not found", image.id))
            for ann in dataset.annotations_by_image.get(image.id, []):
                reason = annotation_problem(ann, image, dataset.categories)
                if reason is not None:
                    raise ConversionError.from_item(SkippedItem(dataset.annotations_file, reason, image.id,
                                                                ann["id"]))

    previous = _previous_report(output_dir)
    _check_label_map_compatible(list(splits), dataset.label_map(), output_dir, previous)
    counts = {name: min(num_shards or auto_num_shards(len(images)), len(images))
              for name, images in splits.items()}
    return ConversionPlan(dataset=dataset, images_dir=images_dir, output_dir=output_dir, on_error=on_error,
                          splits=splits, num_shards=counts, skipped=skipped, previous_report=previous)


def write_metadata(plan: ConversionPlan, report: ConversionReport) -> None:
    """Writes the label map and the report (merged with the kept splits of an earlier run's report)."""
    plan.dataset.label_map().save(report.label_map_file)
    body = report.to_dict()
    for name, split in ((plan.previous_report or {}).get("splits") or {}).items():
        body["splits"].setdefault(name, split)
    _write_text_atomic(report.report_file, json.dumps(body, indent=1, sort_keys=True) + "\n")


def remove_stale_shards(output_dir: str, split: str, keep: Sequence[str]) -> None:
    """Removes finished shards of an earlier run of this split that the new run did not write."""
    pattern, keep = _shard_name_regex(split), set(keep)
    split_dir = os.path.join(output_dir, split)
    for name in _listdir(split_dir):
        if pattern.match(name) and name not in keep:
            _remove(os.path.join(split_dir, name))


# ---------------------------------------------------------------------------------------------------------
# Writing shards (in the parent for one worker, in forked workers otherwise)


@dataclasses.dataclass
class _ShardTask:
    split: str
    index: int
    tmp_path: str
    images_dir: str
    annotations_file: str
    categories: Dict[int, str]
    on_error: str
    items: List[Tuple[ImageInfo, List[Dict[str, Any]]]]
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclasses.dataclass
class _ShardResult:
    split: str
    index: int
    images: int
    instances: int
    crowd: int
    skipped: List[SkippedItem]


class _Cancelled(Exception):
    """A worker noticed that the run was stopped (another shard failed, or an interrupt)."""


def _write_shard(task: _ShardTask, on_image: Callable[[], None], stopped: Callable[[], bool]) -> _ShardResult:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (loaded already: the protos need it)

    result = _ShardResult(task.split, task.index, 0, 0, 0, [])
    with tf.io.TFRecordWriter(task.tmp_path) as writer:
        for image, annotations in task.items:
            if stopped():
                raise _Cancelled()
            converted = convert_image(image, annotations, task.images_dir, task.categories,
                                      task.annotations_file, task.on_error, task.max_image_pixels)
            result.skipped.extend(converted.skipped)
            if converted.example is not None:
                writer.write(serialize_example(converted.example))
                result.images += 1
                result.instances += converted.example.num_instances
                result.crowd += int(converted.example.is_crowd.sum())
            on_image()
    return result


class WorkerDiedError(RuntimeError):
    """A worker process ended without a result (killed, out of memory, or crashed in native code)."""


# State of a worker process, set by _init_worker.
_worker_tasks: Sequence[_ShardTask] = ()
_progress_queue = None
_stop_event = None


def _init_worker(tasks: Sequence[_ShardTask], progress_queue, stop_event) -> None:
    import signal  # pylint: disable=g-import-not-at-top

    global _worker_tasks, _progress_queue, _stop_event
    _worker_tasks, _progress_queue, _stop_event = tasks, progress_queue, stop_event
    # Ctrl-C reaches the whole process group; the parent alone handles it and stops the workers through
    # the stop event, so they end cleanly within one image instead of dying mid-write with tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_shard_task(index: int) -> _ShardResult:
    return _write_shard(_worker_tasks[index], on_image=lambda: _progress_queue.put(1), stopped=_stop_event.is_set)


def _worker_context():
    """"fork" where it is safe (Linux), else "spawn".

    Fork lets workers inherit the loaded TensorFlow (importing it again costs seconds per worker) and the planned
    tasks (nothing large is pickled), and works from any script, also without an ``if __name__ ==
    "__main__"`` guard and from stdin, where "spawn" and "forkserver" re-run or cannot find the main module.
    The workers use TensorFlow only for the proto classes and the record writer (file I/O: no ops, no thread
    pools), which is why forking a parent that has run TensorFlow ops (a notebook, a test session) works;
    the tests do exactly that.
    """
    import multiprocessing  # pylint: disable=g-import-not-at-top

    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm  # pylint: disable=g-import-not-at-top

            self.bar = tqdm(total=total, unit="img", desc="convert-coco", dynamic_ncols=True, smoothing=0.05)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_in_process(tasks: Sequence[_ShardTask], progress: _Progress) -> List[_ShardResult]:
    return [_write_shard(task, on_image=progress.update, stopped=lambda: False) for task in tasks]


def _run_in_workers(tasks: Sequence[_ShardTask], num_workers: int, progress_enabled: bool,
                    total_images: int) -> List[_ShardResult]:
    """Runs one task per shard in a process pool; the first worker error is raised at once."""
    import gc  # pylint: disable=g-import-not-at-top
    import queue as queue_lib  # pylint: disable=g-import-not-at-top

    # Loaded before the fork, so that no worker imports TensorFlow itself.
    from tensorflow.core.example import example_pb2  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    ctx = _worker_context()
    progress_queue, stop_event = ctx.Queue(), ctx.Event()
    # Workers get only a task index through the pool's pipe. (Python 3.10's pool hangs instead of reporting
    # a dead worker while its feeder thread is blocked writing a large task.) Freezing the GC keeps forked
    # workers from touching, and so copying, every object of the parent's annotation index.
    gc.freeze()
    pool = futures.ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_init_worker,
                                       initargs=(tasks, progress_queue, stop_event))
    progress: Optional[_Progress] = None
    results: List[_ShardResult] = []
    received = 0

    def drain(timeout: float) -> None:
        nonlocal received
        try:
            n = progress_queue.get(timeout=timeout)
            while True:
                progress.update(n)
                received += n
                n = progress_queue.get_nowait()
        except queue_lib.Empty:
            pass

    try:
        pending = {pool.submit(_run_shard_task, i) for i in range(len(tasks))}
        # Created after the workers are forked: tqdm's monitor thread must not be running during a fork.
        progress = _Progress(total_images, progress_enabled)
        while pending:
            drain(0.1)
            done = {f for f in pending if f.done()}
            pending -= done
            for f in done:
                try:
                    results.append(f.result())  # re-raises a worker's ConversionError, at the first one
                except futures.process.BrokenProcessPool:
                    raise WorkerDiedError("a conversion worker died unexpectedly (killed, out of memory, or a "
                                          "crash in native code); nothing was written") from None
        # A worker's last counts may still be in flight after its result; the bar should end at the total.
        deadline = time.monotonic() + 2.0
        while received < total_images and time.monotonic() < deadline:
            drain(0.05)
        if received < total_images:
            progress.update(total_images - received)
        return results
    finally:
        # On failure or interrupt: stop the other workers within one image, then wait so no one still writes
        # a temporary file when the caller removes them.
        stop_event.set()
        pool.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()
        if progress is not None:
            progress.close()


def convert_coco(annotations_file: str, images_dir: str, output_dir: str, *, num_shards: Optional[int] = None,
                 eval_fraction: float = 0.0, split_name: str = "train", num_workers: int = 1,
                 on_error: str = "fail", progress: bool = True, seed: int = 0,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ConversionReport:
    """Converts a COCO instances file and its images into ``output_dir`` (see the module docstring).

    Args:
      annotations_file: COCO instances JSON (``images``, ``annotations``, ``categories``).
      images_dir: folder the images' ``file_name`` entries are relative to.
      output_dir: receives ``<split>/<split>.tfrecord-SSSSS-of-NNNNN``, ``label_map.json`` and
        ``conversion_report.json``.
      num_shards: shards per split (at most one per image); None: about one per ``IMAGES_PER_SHARD`` images.
      eval_fraction: share of images (by hash of their id) written to the ``eval`` split; 0 writes
        everything to ``split_name``.
      split_name: name of the (main) split.
      num_workers: processes converting shards in parallel; the output does not depend on it.
      on_error: "fail" raises :class:`ConversionError` at the first bad image or annotation; "skip" leaves it
        out, carries on and lists it in the report.
      progress: show a progress bar (tqdm, on stderr).
      seed: salt of the split hash (another seed draws another eval set).
      max_image_pixels: an image whose header declares more pixels is a bad image (refused before it is
        decoded; an error or skipped per ``on_error``); the same limit as the served model's
        ``export.max_image_pixels``.

    Returns:
      The :class:`ConversionReport` of this run (also written to ``conversion_report.json``).

    Raises:
      ConversionError: malformed input (always) or any bad record (with ``on_error="fail"``).
      ValueError: invalid arguments.
    """
    _validate_arguments(num_shards, eval_fraction, split_name, num_workers, on_error)
    if max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
    start = time.monotonic()
    annotations_file, images_dir, output_dir = str(annotations_file), str(images_dir), str(output_dir)

    plan = plan_conversion(annotations_file, images_dir, output_dir, num_shards=num_shards,
                           eval_fraction=eval_fraction, split_name=split_name, on_error=on_error, seed=seed)
    run_token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tasks: List[_ShardTask] = []
    for split in plan.splits:
        _makedirs(os.path.join(output_dir, split))
        for index, images in enumerate(plan.shards_of(split)):
            tmp_path = os.path.join(output_dir, split, f".{split}.tfrecord-{index:05d}.{run_token}.tmp")
            items = [(im, plan.dataset.annotations_by_image.get(im.id, [])) for im in images]
            tasks.append(_ShardTask(split, index, tmp_path, images_dir, annotations_file,
                                    plan.dataset.categories, on_error, items, max_image_pixels))
    # Biggest shards first (train before eval), so no worker starts a big shard when the others are done.
    tasks.sort(key=lambda t: -len(t.items))

    num_workers = min(num_workers, len(tasks))
    total_images = len(plan.dataset.images)
    try:
        if num_workers == 1:
            bar = _Progress(total_images, progress)
            try:
                results = _run_in_process(tasks, bar)
            finally:
                bar.close()
        else:
            results = _run_in_workers(tasks, num_workers, progress, total_images)
    except BaseException:
        for task in tasks:
            _remove(task.tmp_path)
        raise

    # Every shard is complete: give the shards their final names, then write the metadata.
    split_reports = {name: SplitReport(name, shards=[shard_file_name(name, i, plan.num_shards[name])
                                                     for i in range(plan.num_shards[name])],
                                       skipped=list(plan.skipped[name]), annotations_file=annotations_file,
                                       images_dir=images_dir)
                     for name in plan.splits}
    for task in tasks:
        _rename(task.tmp_path, os.path.join(output_dir, task.split, split_reports[task.split].shards[task.index]))
    for result in sorted(results, key=lambda r: (r.split, r.index)):
        split = split_reports[result.split]
        split.images += result.images
        split.instances += result.instances
        split.crowd += result.crowd
        split.skipped.extend(result.skipped)
    for name, split in split_reports.items():
        split.skipped.sort(key=lambda s: (s.image_id if s.image_id is not None else -1,
                                          s.annotation_id if s.annotation_id is not None else -1))
        remove_stale_shards(output_dir, name, split.shards)
    report = ConversionReport(output_dir=output_dir, annotations_file=annotations_file, images_dir=images_dir,
                              splits=split_reports, on_error=on_error, runner="local",
                              num_workers=num_workers, seconds=time.monotonic() - start)
    write_metadata(plan, report)
    return report
