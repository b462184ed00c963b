"""Benchmark: training images/s of our Trainer against Model Garden's own training loop, same experiment, same run.

Contenders, on the same converted shapes TFRecords and the same Model Garden ``ExperimentConfig`` (built by
``maskrcnn_tfx.trainer.experiment.to_experiment_config`` from the same ``tiny`` configuration, ``train_data.input_path``
pointing at the same files), same global batch size, steps and steps per loop, same strategy (the one our
``runtime.strategy: auto`` builds: one device, the CPU here):

- ``ours``: ``maskrcnn_tfx.trainer.train.train`` (what ``train_and_export`` runs before exporting), no evaluation;
- ``mg``: ``official.core.train_lib.run_experiment(mode="train")`` with Model Garden's own ``MaskRCNNTask``
  (``task_factory.get_task``) under Model Garden's precision policy, as ``official/vision/train.py`` does.

Each run is a fresh subprocess with a fresh model dir. Both are timed the same way: an orbit train action marks
the wall time and global step at the end of every training loop (``summary_interval`` steps); the first loop
(tracing, dataset start-up) is dropped and the seconds per step of the remaining loops give images/s. The
contenders alternate (ours, mg, ours, mg, ...) so that load from other processes on the machine hits both
alike; the ratio of the medians (ours / Model Garden) is printed, target >= 0.95.

    .venv/bin/python -m benchmarks.train_throughput [--rounds 3] [--loops 6] [--loop-steps 10] [--batch-size 4]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import maskrcnn_tfx  # noqa: F401  (before TensorFlow: selects tf_keras)
from maskrcnn_tfx.testing import data as shapes_sets

RESULT_PREFIX = "THROUGHPUT_RESULT "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of (ours, mg)")
    p.add_argument("--loops", type=int, default=6, help="training loops per run (the first is not timed)")
    p.add_argument("--loop-steps", type=int, default=10, help="steps per training loop (summary_interval)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--num-train", type=int, default=256)
    p.add_argument("--work-dir", default="/tmp/maskrcnn_bench_throughput")
    # Internal: one contender's run in this subprocess.
    p.add_argument("--worker", choices=("ours", "mg"), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def trainer_config(args):
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top

    steps = args.loops * args.loop_steps
    return config_lib.load_trainer_config("tiny", {
        "model": {"input_size": args.image_size},
        "train": {"batch_size": args.batch_size, "train_steps": steps, "eval_steps": 0,
                  "summary_interval": args.loop_steps, "checkpoint_interval": steps},
    })


class LoopMarks:
    """An orbit train action: (wall time, global step) at the end of each training loop."""

    def __init__(self):
        self.marks = []

    def __call__(self, output) -> None:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        step = tf.summary.experimental.get_step()  # orbit's Controller sets it to its global step.
        self.marks.append((time.monotonic(), int(step.numpy()) if step is not None else -1))


def loop_seconds_per_step(marks) -> List[float]:
    """Seconds per step of each loop after the first."""
    return [(t1 - t0) / (s1 - s0) for (t0, s0), (t1, s1) in zip(marks, marks[1:]) if s1 > s0]


def run_worker(args) -> Dict:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.get_logger().setLevel("ERROR")
    from maskrcnn_tfx.label_map import LabelMap  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.trainer import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.trainer import strategy as strategy_lib  # pylint: disable=g-import-not-at-top

    with open(args.data, encoding="utf-8") as f:
        data = json.load(f)
    cfg = trainer_config(args)
    labels = LabelMap.load(data["label_map"])
    strategy = strategy_lib.build_strategy(cfg.runtime)
    model_dir = tempfile.mkdtemp(prefix=f"tp_{args.worker}_", dir=args.work_dir)
    marks = LoopMarks()
    start = time.monotonic()
    if args.worker == "ours":
        from maskrcnn_tfx.trainer import train as train_lib  # pylint: disable=g-import-not-at-top

        # TrainResult.seconds_per_step: the same loop-end marks and formula as the mg branch below.
        result = train_lib.train(cfg, data["train"], None, model_dir, label_map=labels, strategy=strategy)
        total = time.monotonic() - start
        per_loop = []
        mean = result.seconds_per_step
        step = result.global_step
    else:
        from official.core import task_factory  # pylint: disable=g-import-not-at-top
        from official.core import train_lib as mg_train_lib  # pylint: disable=g-import-not-at-top
        from official.modeling import performance  # pylint: disable=g-import-not-at-top
        from official.vision.tasks import maskrcnn as _  # noqa: F401  (registers MaskRCNNTask)

        experiment = experiment_lib.to_experiment_config(cfg, labels, train_input=data["train"], file_type="tfrecord")
        performance.set_mixed_precision_policy(experiment.runtime.mixed_precision_dtype)
        with strategy.scope():
            task = task_factory.get_task(experiment.task, logging_dir=model_dir)
        model, _ = mg_train_lib.run_experiment(distribution_strategy=strategy, task=task, mode="train",
                                               params=experiment, model_dir=model_dir, train_actions=[marks])
        total = time.monotonic() - start
        per_loop = loop_seconds_per_step(marks.marks)
        timed = marks.marks
        mean = ((timed[-1][0] - timed[0][0]) / (timed[-1][1] - timed[0][1])) if len(timed) > 1 else None
        step = marks.marks[-1][1] if marks.marks else -1
    return {"worker": args.worker, "strategy": type(strategy).__name__, "global_step": step,
            "seconds_per_step": mean, "loop_seconds_per_step": per_loop, "total_seconds": total}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    if args.worker:
        result = run_worker(args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    data = shapes_sets.prepare_shapes(os.path.join(args.work_dir, "data"), num_train=args.num_train, num_eval=8,
                                  image_size=args.image_size)
    data_file = os.path.join(args.work_dir, "data.json")
    with open(data_file, "w", encoding="utf-8") as f:
        json.dump({"train": data.train_pattern, "label_map": data.label_map}, f)
    steps = args.loops * args.loop_steps
    print(f"tiny preset, {args.image_size}x{args.image_size} input, batch {args.batch_size}, {steps} steps per run "
          f"in loops of {args.loop_steps} (first loop not timed), {args.rounds} interleaved rounds, "
          f"{data.num_train} shapes training images", flush=True)
    results: Dict[str, List[Dict]] = {"ours": [], "mg": []}
    for r in range(args.rounds):
        order = ("mg", "ours") if r % 2 == 0 else ("ours", "mg")
        for who in order:
            cmd = [sys.executable, "-m", __spec__.name, "--worker", who, "--data", data_file,
                   "--loops", str(args.loops), "--loop-steps", str(args.loop_steps),
                   "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
                   "--work-dir", args.work_dir]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
            if proc.returncode or not lines:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
                raise SystemExit(f"{who} run failed (exit {proc.returncode})")
            res = json.loads(lines[-1][len(RESULT_PREFIX):])
            results[who].append(res)
            sps = res["seconds_per_step"]
            print(f"round {r + 1} {who:>4}: {sps:.3f} s/step = {args.batch_size / sps:.2f} images/s "
                  f"(steps {res['global_step']}, {res['strategy']}, whole run {res['total_seconds']:.0f} s)",
                  flush=True)
    med = {who: statistics.median(r["seconds_per_step"] for r in rs) for who, rs in results.items()}
    ips = {who: args.batch_size / s for who, s in med.items()}
    print(f"median images/s: ours {ips['ours']:.2f}, Model Garden {ips['mg']:.2f}; "
          f"ratio ours/Model Garden {ips['ours'] / ips['mg']:.3f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
