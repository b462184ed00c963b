"""Benchmark: CPU inference latency of the exported Mask R-CNN against torchvision's, in the same run.

Ours is what the product serves: Model Garden's ResNet-50-FPN Mask R-CNN (the ``coco_r50fpn`` preset with a
640x640 input and 100 detections, random-init weights: nothing can be downloaded here) exported by
``maskrcnn_tfx.trainer.export.export_serving_model``, reloaded with ``tf.saved_model.load`` and called through its
``serving_default`` signature on encoded JPEG bytes (decoding and preprocessing included). The peer is
torchvision's ``maskrcnn_resnet50_fpn`` (random init) at the same size and detection count, decoding the same
JPEGs, run as a subprocess under another interpreter (torch is not in the project's virtualenv); with no such
interpreter the peer is skipped and said so.

Both get the same number of intra-op threads (``--threads``, default 2) and one inter-op thread; torch's threads
are OpenMP's, run with ``OMP_WAIT_POLICY=PASSIVE`` (``--torch-omp-wait-policy``): spinning OpenMP threads make
torch several times slower whenever another process takes one of the cores (measured here: 12.5 s instead of
4 s per image), which would flatter ours on a shared machine. Each lever of
ours is a contender of its own: the float32 export as it is (``plain``), ``precision="bfloat16"`` (only where
the CPU has AVX512-BF16 or AMX), ``jit_compile=True`` (XLA), each called with 1 image per call and with 4.
The contenders are measured interleaved (every contender once on each group of 4 images, in a rotating order,
then the next group), so that load from other processes hits all of them alike; medians and p90 are per image
(a 4-image call counts as 4 images of a quarter of its time). Outputs are checked: detection counts of every
contender, and for the bfloat16 and XLA exports their agreement with the float32 export (same-class matches of
the float32 top detections, score, box and mask differences) within stated tolerances.

Both models keep every detection (score threshold 0, Model Garden's ``pre_nms_score_threshold`` and
torchvision's ``box_score_thresh``), so each image yields exactly ``--max-detections``: a random-init model's
scores would otherwise leave a count that depends on chance.

    .venv/bin/python -m benchmarks.inference_latency [--torch-python PATH] [--threads 2] [--rounds 2]

A Python with torch and torchvision for the peer (about 5.5 GB; wheels from PyPI), outside the repository:

    python3.11 -m venv /tmp/torch-peer-venv
    /tmp/torch-peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1

``--torch-python auto`` (default) tries $MASKRCNN_TFX_TORCH_PYTHON, this interpreter, /tmp/torch-peer-venv
and python3.11/python3 on PATH. The exports (the slow part: ~5 minutes each on 2 cores) are kept in
``--work-dir`` and reused by the next run with the same settings.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple


import maskrcnn_tfx  # noqa: F401  (before TensorFlow: selects tf_keras)

PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_torchvision_peer.py")
DEFAULT_TORCH_VENV_PYTHON = "/tmp/torch-peer-venv/bin/python"
GROUP = 4  # images per interleaving group, and the batched contenders' images per call

# Agreement of an export with the float32 one, on the float32 export's TOP_K best detections of each image:
# "matched" is the fraction of those with a same-class detection at IoU >= MATCH_IOU in the other export; the
# other bounds are on the matched pairs (box edges in pixels, mask as the mean |difference| of probabilities).
# A random-init model's scores are near ties (consecutive detections differ by ~1e-3, about bfloat16's rounding
# of them), so bfloat16 may let NMS keep the other of two overlapping boxes: hence its lower matched bound.
TOP_K = 50
MATCH_IOU = 0.9
TOLERANCES = {
    "bfloat16": {"matched": 0.85, "score": 0.02, "box_px": 3.0, "mask": 0.03},
    "float32": {"matched": 0.95, "score": 1e-3, "box_px": 0.5, "mask": 2e-3},  # XLA, and batch 4 vs 1
}

# Every lever of ours: name -> export_serving_model options.
LEVERS = {
    "plain": {},
    "bf16": {"precision": "bfloat16"},
    "xla": {"jit_compile": True},
    "xla+bf16": {"jit_compile": True, "precision": "bfloat16"},
}
DEFAULT_LEVERS = ("plain", "bf16", "xla")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default="auto",
                        help="interpreter with torch and torchvision for the peer; 'auto' looks for one, 'none' "
                             "skips the peer")
    parser.add_argument("--torch-models", default="maskrcnn_resnet50_fpn,maskrcnn_resnet50_fpn_v2",
                        help="torchvision builders to run; the first is the reference of the ratio (v2 has a "
                             "4-conv box head like Model Garden's, v1 two FC layers)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both frameworks")
    parser.add_argument("--torch-omp-wait-policy", default="passive", choices=("passive", "active", "inherit"),
                        help="OMP_WAIT_POLICY of the peer (torch's threads are OpenMP's): passive by default, "
                             "as with active spinning torch slows down several-fold whenever another process "
                             "takes a core (TensorFlow's thread pool does not spin like that); 'inherit' keeps "
                             "the environment's")
    parser.add_argument("--levers", default=",".join(DEFAULT_LEVERS),
                        help=f"our exports to measure, among {', '.join(LEVERS)} (plain is always measured)")
    parser.add_argument("--batch-sizes", default=f"1,{GROUP}", help=f"images per call for ours (1 and/or {GROUP})")
    parser.add_argument("--images", type=int, default=8, help=f"distinct test images (a multiple of {GROUP})")
    parser.add_argument("--rounds", type=int, default=2, help="timed passes over all the images")
    parser.add_argument("--preset", default="coco_r50fpn", help="trainer preset of ours (e.g. tiny for a smoke test)")
    parser.add_argument("--input-size", type=int, default=640)
    parser.add_argument("--max-detections", type=int, default=100)
    parser.add_argument("--coco128", default=os.environ.get("MASKRCNN_TFX_COCO128", ""),
                        help="images to crop the test JPEGs from (synthetic images when absent)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "maskrcnn_tfx_latency"),
                        help="exports and test images; reused when the settings match")
    parser.add_argument("--fresh", action="store_true", help="re-export even when --work-dir has the exports")
    parser.add_argument("--force-bf16", action="store_true", help="measure bf16 even without CPU support")
    args = parser.parse_args(argv)
    args.levers = ["plain"] + [lever for lever in args.levers.split(",") if lever and lever != "plain"]
    unknown = [lever for lever in args.levers if lever not in LEVERS]
    if unknown:
        parser.error(f"unknown lever(s) {', '.join(unknown)}; known: {', '.join(LEVERS)}")
    args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    if any(b not in (1, GROUP) for b in args.batch_sizes):
        parser.error(f"--batch-sizes takes 1 and/or {GROUP}")
    if args.images < GROUP or args.images % GROUP:
        parser.error(f"--images must be a positive multiple of {GROUP}")
    args.torch_models = [m for m in args.torch_models.split(",") if m]
    return args


# ------------------------------------------------------------------------------------------------ environment

def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load_average() -> float:
    """The 1-minute load average (other processes on the machine compete for its cores)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def find_torch_python(choice: str) -> Tuple[Optional[str], str]:
    """(interpreter, how it was found) or (None, why not)."""
    if choice == "none":
        return None, "skipped (--torch-python none)"
    candidates = [choice] if choice != "auto" else [
        os.environ.get("MASKRCNN_TFX_TORCH_PYTHON", ""), sys.executable, DEFAULT_TORCH_VENV_PYTHON,
        shutil.which("python3.11") or "", shutil.which("python3") or ""]
    tried = []
    for python in dict.fromkeys(c for c in candidates if c):
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            tried.append(f"{python} (missing)")
            continue
        try:
            subprocess.run([python, "-c", "import torch, torchvision"], check=True, capture_output=True,
                           timeout=300)
            return python, f"{python}"
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
            tried.append(f"{python} (no torch/torchvision)")
    return None, ("skipped: no Python with torch and torchvision (tried " + ", ".join(tried) + "); create one "
                  "as this script's docstring shows and pass --torch-python")


# ------------------------------------------------------------------------------------------------ test images

def make_images(coco128: str, count: int, size: int, out_dir: str) -> Tuple[List[str], str]:
    """``count`` size x size JPEGs (quality 90): center squares of coco128 images, else synthetic ones."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel

    os.makedirs(out_dir, exist_ok=True)
    sources = sorted(glob.glob(os.path.join(coco128, "images", "*.jpg")))
    paths = []
    for i in range(count):
        if sources:
            image = Image.open(sources[(i * 7) % len(sources)]).convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
        else:
            rng = np.random.default_rng(i)
            y, x = np.mgrid[0:size, 0:size]
            base = np.stack([128 + 100 * np.sin(x / (9.0 + i)), 128 + 100 * np.cos(y / (7.0 + i)),
                             128 + 60 * np.sin((x + y) / 13.0)], axis=-1)
            image = Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
        path = os.path.join(out_dir, f"image_{i:02d}.jpg")
        image.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths, (f"{count} center crops of coco128 images" if sources else f"{count} synthetic images")


# ----------------------------------------------------------------------------------------------------- ours

def experiment_config(args):
    """The --preset (coco_r50fpn) at --input-size with --max-detections, keeping every detection."""
    from maskrcnn_tfx.label_map import LabelMap  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx import config as config_lib  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx.trainer import experiment as experiment_lib  # pylint: disable=import-outside-toplevel

    # COCO's class count as torchvision has it: ids 1..90 (+ background) = 91 outputs, no gaps (so no detection
    # is dropped for an id outside the label map).
    label_map = LabelMap.from_pairs([(i, f"class_{i}") for i in range(1, 91)])
    config = config_lib.load_trainer_config(args.preset, {
        "model": {"input_size": args.input_size, "max_num_detections": args.max_detections},
        "train": {"init_checkpoint": ""}})  # random init: no checkpoint can be downloaded here
    experiment = experiment_lib.to_experiment_config(config, label_map)
    experiment.task.model.detection_generator.pre_nms_score_threshold = 0.0
    return experiment, label_map


def export_all(args, levers: Sequence[str]) -> Dict[str, str]:
    """Exports each lever's SavedModel into --work-dir (reusing matching ones); returns lever -> folder."""
    settings = {"preset": args.preset, "input_size": args.input_size, "max_detections": args.max_detections,
                "version": 1}
    folders = {lever: os.path.join(args.work_dir, "exports", lever.replace("+", "_")) for lever in levers}
    stamp = os.path.join(args.work_dir, "exports", "settings.json")
    reusable = False
    if not args.fresh and os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as f:
            reusable = json.load(f) == settings
    if not reusable:
        shutil.rmtree(os.path.join(args.work_dir, "exports"), ignore_errors=True)
    todo = [lever for lever in levers if not os.path.isfile(os.path.join(folders[lever], "saved_model.pb"))]
    for lever in levers:
        if lever not in todo:
            print(f"  reusing the {lever} export in {folders[lever]}")
    if not todo:
        return folders
    from maskrcnn_tfx.trainer import export  # pylint: disable=import-outside-toplevel
    from maskrcnn_tfx.trainer import model as model_lib  # pylint: disable=import-outside-toplevel

    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    experiment, label_map = experiment_config(args)
    start = time.perf_counter()
    model = model_lib.build_model(experiment)
    # Every export gets the same random-init weights, also those reused from an earlier run.
    weights = os.path.join(args.work_dir, "exports", "random_init", "model")
    if os.path.isfile(weights + ".index"):
        tf.train.Checkpoint(model=model).read(weights).assert_consumed()
    else:
        os.makedirs(os.path.join(args.work_dir, "exports"), exist_ok=True)
        tf.train.Checkpoint(model=model).write(weights)
        with open(stamp, "w", encoding="utf-8") as f:
            json.dump(settings, f)
    print(f"  built the random-init model in {time.perf_counter() - start:.0f} s")
    for lever in todo:
        start = time.perf_counter()
        shutil.rmtree(folders[lever], ignore_errors=True)
        export.export_serving_model(model, experiment, label_map, folders[lever], **LEVERS[lever])
        print(f"  exported {lever} ({LEVERS[lever] or 'defaults'}) in {time.perf_counter() - start:.0f} s")
    return folders


# ----------------------------------------------------------------------------------------------------- peer

class TorchPeer:
    """The torchvision subprocess (see _torchvision_peer.py)."""

    def __init__(self, python: str, args, image_paths: Sequence[str], num_classes: int):
        config = {"threads": args.threads, "input_size": args.input_size, "max_detections": args.max_detections,
                  "num_classes": num_classes, "models": args.torch_models, "images": list(image_paths)}
        self._log = open(os.path.join(args.work_dir, "torchvision_peer.log"), "w", encoding="utf-8")
        env = dict(os.environ)
        if args.torch_omp_wait_policy != "inherit":
            env["OMP_WAIT_POLICY"] = args.torch_omp_wait_policy.upper()
        self.omp_wait_policy = env.get("OMP_WAIT_POLICY", "unset (libgomp spins)")
        self._proc = subprocess.Popen([python, PEER_SCRIPT, json.dumps(config)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1, env=env)
        self.info = self._read()
        if not self.info.get("ready"):
            raise RuntimeError(f"torchvision peer did not start: {self.info}")

    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torchvision peer ended (see {self._log.name})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"torchvision peer: {reply['error']}")
        return reply

    def run(self, model: str, index: int) -> dict:
        self._proc.stdin.write(json.dumps({"model": model, "image": index}) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self._proc.stdin.write('{"quit": true}\n')
            self._proc.stdin.flush()
            self._proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
        self._log.close()


# ------------------------------------------------------------------------------------------------ agreement

def _iou(box, boxes):
    import numpy as np  # pylint: disable=import-outside-toplevel

    y0 = np.maximum(box[0], boxes[:, 0])
    x0 = np.maximum(box[1], boxes[:, 1])
    y1 = np.minimum(box[2], boxes[:, 2])
    x1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def agreement(reference: List[dict], other: List[dict], size: int) -> dict:
    """How ``other``'s detections agree with ``reference``'s (float32) on the same images: for each of the
    reference's TOP_K best, the same-class detection of ``other`` with the highest IoU; differences of the
    matched pairs (boxes in pixels of the size x size image)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    matched = total = 0
    score_diff, box_diff, mask_diff = [0.0], [0.0], [0.0]
    for ref, oth in zip(reference, other):
        n_ref, n_oth = int(ref["num_detections"]), int(oth["num_detections"])
        for i in range(min(TOP_K, n_ref)):
            total += 1
            same_class = np.nonzero(oth["detection_classes"][:n_oth] == ref["detection_classes"][i])[0]
            if not len(same_class):
                continue
            ious = _iou(ref["detection_boxes"][i], oth["detection_boxes"][same_class])
            j = same_class[int(np.argmax(ious))]
            if ious.max() < MATCH_IOU:
                continue
            matched += 1
            score_diff.append(abs(float(ref["detection_scores"][i] - oth["detection_scores"][j])))
            box_diff.append(float(np.abs(ref["detection_boxes"][i] - oth["detection_boxes"][j]).max()) * size)
            mask_diff.append(float(np.abs(ref["detection_masks"][i] - oth["detection_masks"][j]).mean()))
    return {"matched": matched / max(total, 1), "score": max(score_diff), "box_px": max(box_diff),
            "mask": max(mask_diff)}


# -------------------------------------------------------------------------------------------------- timings

@dataclasses.dataclass
class Contender:
    name: str
    kind: str  # "ours" | "torch"
    lever: str = ""
    batch: int = 1
    model: str = ""
    per_image: List[float] = dataclasses.field(default_factory=list)  # seconds per image, one per call
    per_call: List[float] = dataclasses.field(default_factory=list)
    detections: List[int] = dataclasses.field(default_factory=list)
    first_call: float = 0.0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    flags = cpu_flags()
    bf16_hw = bool(flags & {"avx512_bf16", "amx_bf16"})
    levers = [lever for lever in args.levers if "bf16" not in lever or bf16_hw or args.force_bf16]
    skipped = [lever for lever in args.levers if lever not in levers]

    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; AVX512-BF16: {'avx512_bf16' in flags}, "
          f"AMX: {'amx_bf16' in flags}; TensorFlow {tf.__version__} (oneDNN "
          f"{'on' if os.environ.get('TF_ENABLE_ONEDNN_OPTS', '1') != '0' else 'off'}); "
          f"threads: {args.threads} intra-op, 1 inter-op")
    if skipped:
        print(f"Skipping {', '.join(skipped)}: this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX), where "
              "bfloat16 is emulated and slower than float32 (--force-bf16 measures it anyway)")
    image_paths, images_note = make_images(args.coco128, args.images, args.input_size,
                                           os.path.join(args.work_dir, "images"))
    encoded = []
    for path in image_paths:
        with open(path, "rb") as f:
            encoded.append(f.read())
    print(f"Images: {images_note}, {args.input_size}x{args.input_size} JPEG; {args.max_detections} "
          f"detections per image, score threshold 0 for both")

    print("Exporting (coco_r50fpn preset, random init, through maskrcnn_tfx.trainer.export.export_serving_model):")
    folders = export_all(args, levers)

    torch_python, torch_note = find_torch_python(args.torch_python)
    contenders: List[Contender] = []
    loaded = {}
    for lever in levers:
        start = time.perf_counter()
        loaded[lever] = tf.saved_model.load(folders[lever]).signatures["serving_default"]
        load_seconds = time.perf_counter() - start
        for batch in args.batch_sizes:
            c = Contender(f"ours {lever} b{batch}", "ours", lever=lever, batch=batch)
            start = time.perf_counter()
            loaded[lever](images=tf.constant(encoded[:batch]))
            c.first_call = time.perf_counter() - start
            contenders.append(c)
            print(f"  loaded {lever} in {load_seconds:.0f} s; first call with {batch} image(s) "
                  f"(graph optimization{', XLA compilation' if 'xla' in lever else ''}): {c.first_call:.1f} s")
    peer = None
    if torch_python:
        try:
            peer = TorchPeer(torch_python, args, image_paths, num_classes=91)
            versions = peer.info["versions"]
            torch_note = (f"{torch_python}: torch {versions['torch']}, torchvision {versions['torchvision']}, "
                          f"{peer.info['threads']} threads, mkldnn {peer.info['mkldnn']}, OMP_WAIT_POLICY "
                          f"{peer.omp_wait_policy}")
            for model in args.torch_models:
                contenders.append(Contender(f"torchvision {model.replace('maskrcnn_resnet50_fpn', 'r50fpn')}",
                                            "torch", model=model))
        except (RuntimeError, OSError, ValueError) as e:
            torch_note = f"skipped: {e}"
            peer = None
    print(f"torchvision peer: {torch_note}")

    # Outputs of every image from each of our exports (first round, batch 1 or the smallest), for the checks.
    outputs: Dict[str, List[dict]] = {lever: [None] * len(encoded) for lever in levers}
    batch_outputs: Dict[str, List[dict]] = {lever: [None] * len(encoded) for lever in levers}
    groups = [list(range(g, g + GROUP)) for g in range(0, len(encoded), GROUP)]
    print(f"Timing {len(contenders)} contenders interleaved: {args.rounds} round(s) x {len(groups)} group(s) "
          f"of {GROUP} images ...")
    start_all = time.perf_counter()
    loads = [load_average()]
    step = 0
    for round_index in range(args.rounds):
        for group in groups:
            # Rotating order, so no contender always runs right after the same one.
            order = contenders[step % len(contenders):] + contenders[:step % len(contenders)]
            step += 1
            for c in order:
                if c.kind == "torch":
                    for index in group:
                        reply = peer.run(c.model, index)
                        c.per_call.append(reply["seconds"])
                        c.per_image.append(reply["seconds"])
                        c.detections.append(reply["detections"])
                    continue
                serve = loaded[c.lever]
                for first in range(0, GROUP, c.batch):
                    indices = group[first:first + c.batch]
                    start = time.perf_counter()
                    result = serve(images=tf.constant([encoded[i] for i in indices]))
                    result = {k: v.numpy() for k, v in result.items()}
                    seconds = time.perf_counter() - start
                    c.per_call.append(seconds)
                    c.per_image.append(seconds / len(indices))
                    c.detections.extend(int(n) for n in result["num_detections"])
                    if round_index == 0:
                        target = outputs if c.batch == min(args.batch_sizes) else batch_outputs
                        for k, i in enumerate(indices):
                            target[c.lever][i] = {key: value[k] for key, value in result.items()}
            loads.append(load_average())
        print(f"  round {round_index + 1}/{args.rounds} done ({time.perf_counter() - start_all:.0f} s, "
              f"load average {loads[-1]:.1f})")
    if peer:
        peer.close()

    report(args, contenders, outputs, batch_outputs, levers)
    # This process and the peer never run at once, so their own load is about 1-2 (threads) of these.
    busy = max(loads) > args.threads + 0.5
    print(f"Machine load average during the timing: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} "
          f"cores{' (other processes competed for the cores: absolute figures are inflated)' if busy else ''}")
    return 0


def report(args, contenders: List[Contender], outputs, batch_outputs, levers) -> None:
    torch_reference = next((c for c in contenders if c.kind == "torch"), None)
    reference_median = statistics.median(torch_reference.per_image) if torch_reference else None
    print()
    print(f"Per-image latency, {args.input_size}x{args.input_size}, {args.max_detections} detections, "
          f"{args.threads} threads (seconds; a {GROUP}-image call counts {GROUP} images of 1/{GROUP} of its time)")
    header = (f"{'contender':<28} {'calls':>5} {'per call':>9} {'median':>8} {'p90':>8} {'vs plain b1':>11} "
              f"{'ours/torchvision':>16} {'detections/image':>17}")
    print(header)
    print("-" * len(header))
    plain = next(c for c in contenders if c.lever == "plain" and c.batch == min(args.batch_sizes))
    plain_median = statistics.median(plain.per_image)
    for c in contenders:
        median = statistics.median(c.per_image)
        counts = sorted(set(c.detections))
        ratio = f"{median / reference_median:.2f}" if reference_median and c.kind == "ours" else ""
        speedup = f"{plain_median / median:.2f}x" if c.kind == "ours" else ""
        print(f"{c.name:<28} {len(c.per_call):>5} {statistics.median(c.per_call):>9.3f} {median:>8.3f} "
              f"{percentile(c.per_image, 0.9):>8.3f} {speedup:>11} {ratio:>16} "
              f"{','.join(map(str, counts)):>17}")
    print()
    firsts = ", ".join(f"{c.name} {c.first_call:.1f} s" for c in contenders if c.kind == "ours")
    print(f"First call after loading (not in the figures above): {firsts}")

    print()
    print(f"Agreement with the float32 export (its top {TOP_K} detections of each image; matched = a "
          f"same-class detection at IoU >= {MATCH_IOU}; max differences over matched pairs):")
    reference = outputs["plain"]
    failures = []
    for lever in levers:
        checks = []
        if lever != "plain":
            checks.append((f"{lever} b{min(args.batch_sizes)}", outputs[lever], "bfloat16" if "bf16" in lever
                           else "float32"))
        if any(o is not None for o in batch_outputs[lever]):
            checks.append((f"{lever} b{GROUP} vs {lever} b1", batch_outputs[lever], None))
        for name, other, tolerance_key in checks:
            base = reference if tolerance_key else outputs[lever]
            a = agreement(base, other, args.input_size)
            tolerance = TOLERANCES[tolerance_key or "float32"]
            ok = (a["matched"] >= tolerance["matched"] and a["score"] <= tolerance["score"]
                  and a["box_px"] <= tolerance["box_px"] and a["mask"] <= tolerance["mask"])
            if not ok:
                failures.append(name)
            print(f"  {name:<22} matched {a['matched']:6.1%} (>= {tolerance['matched']:.0%}), score {a['score']:.4f} "
                  f"(<= {tolerance['score']}), box {a['box_px']:.2f} px (<= {tolerance['box_px']}), "
                  f"mask mean |diff| {a['mask']:.4f} (<= {tolerance['mask']}): {'ok' if ok else 'OUT OF TOLERANCE'}")
    all_counts = {n for c in contenders for n in c.detections}
    print(f"Detections per image over all contenders and images: {sorted(all_counts)}"
          f"{'' if all_counts == {args.max_detections} else '  (NOT all equal: the comparison is skewed)'}")

    print()
    ours_b1 = [c for c in contenders if c.kind == "ours" and c.batch == 1
               and (c.lever == "plain" or c.name.split()[1] + " b1" not in failures)]
    if reference_median and ours_b1:
        best = min(ours_b1, key=lambda c: statistics.median(c.per_image))
        best_median = statistics.median(best.per_image)
        verdict = "meets" if best_median <= reference_median else "misses"
        print(f"Result: best of ours at 1 image per call = {best.name} {best_median:.3f} s/image vs "
              f"{torch_reference.name} {reference_median:.3f} s/image: ratio {best_median / reference_median:.2f} "
              f"({verdict} the target ratio <= 1.0); plain float32 ratio "
              f"{plain_median / reference_median:.2f}")
        others = [c for c in contenders if c.kind == "torch" and c is not torch_reference]
        for c in others:
            median = statistics.median(c.per_image)
            print(f"  vs {c.name} {median:.3f} s/image: ratio {best_median / median:.2f} (plain "
                  f"{plain_median / median:.2f})")
    elif not reference_median:
        print("Result: no torchvision figures (peer skipped); ours only.")
    if failures:
        print(f"Out of tolerance: {', '.join(failures)}")


if __name__ == "__main__":
    sys.exit(main())
