"""Shared helpers of the trainer tests: a small shapes data set, quick configurations, event-file reading, and
the training worker subprocess (tests/_train_worker.py)."""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

import maskrcnn_tfx  # noqa: F401  (selects tf_keras before TensorFlow loads)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO_ROOT, "tests", "_train_worker.py")
PYTHON = sys.executable

# Every loss term Model Garden's MaskRCNNTask reports, plus what its Trainer adds.
TRAIN_TAGS = ("total_loss", "rpn_score_loss", "rpn_box_loss", "frcnn_cls_loss", "frcnn_box_loss", "mask_loss",
              "model_loss", "training_loss", "learning_rate")
EVAL_TAGS = ("AP", "AP50", "mask_AP", "mask_AP50")


@dataclasses.dataclass(frozen=True)
class ShapesData:
    train: str
    eval: str
    label_map: str


def shapes_data(base_dir: str, *, num_images: int = 24, image_size: int = 128) -> ShapesData:
    """A converted shapes set under ``base_dir`` (made once; later calls in the session reuse it)."""
    from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.data.shapes import generate_shapes  # pylint: disable=g-import-not-at-top

    out = os.path.join(base_dir, f"shapes_{num_images}x{image_size}")
    os.makedirs(base_dir, exist_ok=True)
    done = os.path.join(out, "DONE.json")
    with open(os.path.join(base_dir, ".shapes.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # Test modules may ask for it at once (pytest-xdist).
        if not os.path.exists(done):
            annotations = generate_shapes(os.path.join(out, "raw"), num_images=num_images, image_size=image_size)
            report = convert_coco(annotations, os.path.dirname(annotations) + "/images", os.path.join(out, "tfrecords"),
                                  eval_fraction=0.25, progress=False)
            body = {"train": report.file_pattern("train"), "eval": report.file_pattern("eval"),
                    "label_map": report.label_map_file}
            with open(done, "w") as f:
                json.dump(body, f)
    with open(done) as f:
        return ShapesData(**json.load(f))


def quick_overrides(**train: Any) -> Dict[str, Any]:
    """Trainer fields: the tiny preset made quicker for tests, batch 2, a checkpoint and summaries every 2 steps."""
    values = {"batch_size": 2, "eval_batch_size": 2, "train_steps": 4, "summary_interval": 2,
              "checkpoint_interval": 2, "eval_steps": 0,
              "learning_rate": {"warmup_steps": 2}}
    values.update(train)
    return {"preset": "tiny", "data": {"shuffle_buffer_size": 16}, "train": values}


def read_scalars(event_dir: str) -> Dict[str, List[Tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar summary in the event files of ``event_dir``."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    scalars: Dict[str, List[Tuple[int, float]]] = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(event_dir, "events.out.tfevents.*"))):
        for tag, points in read_scalars_of(path).items():
            scalars.setdefault(tag, []).extend(points)
    return scalars


def read_scalars_of(event_file: str) -> Dict[str, List[Tuple[int, float]]]:
    """{tag: [(step, value), ...]} of one event file (TF2 summaries store scalars as tensors)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    scalars: Dict[str, List[Tuple[int, float]]] = {}
    for event in tf.compat.v1.train.summary_iterator(event_file):
        for value in event.summary.value:
            number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else float(value.simple_value)
            scalars.setdefault(value.tag, []).append((int(event.step), number))
    return scalars


def saved_model_op_dtypes(serving_dir: str, op_type: str) -> set:
    """The dtypes (attr ``T``) of every ``op_type`` node (e.g. "Conv2D") in a SavedModel's functions."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(serving_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    return {tf.dtypes.as_dtype(node.attr["T"].type).name
            for graph in saved.meta_graphs for function in graph.graph_def.library.function
            for node in function.node_def if node.op == op_type}


def checkpoint_steps(model_dir: str) -> List[int]:
    """Steps of the checkpoints in ``model_dir`` (from their index files), sorted."""
    steps = []
    for name in os.listdir(model_dir) if os.path.isdir(model_dir) else []:
        if name.startswith("ckpt-") and name.endswith(".index"):
            steps.append(int(name[len("ckpt-"):-len(".index")]))
    return sorted(steps)


def worker_command(spec: Mapping[str, Any], spec_path: str) -> List[str]:
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    return [PYTHON, WORKER, spec_path]


def start_worker(spec: Mapping[str, Any], spec_path: str, log_path: str,
                 env: Optional[Mapping[str, str]] = None) -> subprocess.Popen:
    """Starts tests/_train_worker.py on ``spec``; its output goes to ``log_path``."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, full_env.get("PYTHONPATH", "")) if p)
    log = open(log_path, "w")  # pylint: disable=consider-using-with  (closed by the child's exit)
    return subprocess.Popen(worker_command(spec, spec_path), stdout=log, stderr=subprocess.STDOUT, env=full_env,
                            cwd=REPO_ROOT)


def wait_worker(process: subprocess.Popen, log_path: str, timeout: float) -> None:
    """Waits for a worker and fails with the end of its log when it fails or times out."""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"worker timed out after {timeout}s:\n{tail(log_path)}") from None
    if code != 0:
        raise AssertionError(f"worker exited with {code}:\n{tail(log_path)}")


def tail(path: str, lines: int = 60) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)
