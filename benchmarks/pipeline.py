"""Benchmark: wall time of each component of the local pipeline on the shapes data set (256 images).

Generates and converts the shapes images, runs the whole pipeline on LocalDagRunner (in-process Beam, as
``make demo``), then reads every execution's start and end time from ML Metadata (the run's metadata store,
not timers of ours) and prints a table: seconds per component, its share of the run, and the time spent
outside training (everything but the Trainer: ingestion, validation, Transform, evaluation, push).

    .venv/bin/python benchmarks/pipeline.py [--num-images 256] [--train-steps 50] [--work-dir DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import maskrcnn_tfx  # noqa: E402,F401  (before TensorFlow: selects tf_keras)

TRAINER_ID = "Trainer"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--box-num-thresholds", type=int, default=200)
    parser.add_argument("--work-dir", help="keep the data and pipeline here (default: a temporary folder)")
    args = parser.parse_args()

    from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.data.shapes import generate_shapes  # pylint: disable=g-import-not-at-top
    from pipelines import local_runner, outputs  # pylint: disable=g-import-not-at-top
    from pipelines.config import PipelineConfig  # pylint: disable=g-import-not-at-top

    work = args.work_dir or tempfile.mkdtemp(prefix="maskrcnn-pipeline-bench-")
    data = os.path.join(work, "tfrecords")
    if not os.path.isfile(os.path.join(data, "label_map.json")):
        annotations = generate_shapes(os.path.join(work, "shapes"), num_images=args.num_images,
                                      image_size=args.image_size, seed=0)
        convert_coco(annotations, os.path.join(work, "shapes", "coco", "images"), data, eval_fraction=0.125,
                     progress=False)
    root = os.path.join(work, "pipeline")
    shutil.rmtree(root, ignore_errors=True)  # a cached run would time nothing
    config = PipelineConfig.from_dict({
        "pipeline_name": "maskrcnn-benchmark", "pipeline_root": root, "data": {"root": data},
        "trainer": {"preset": "tiny", "train_steps": args.train_steps},
        "evaluation": {"box_num_thresholds": args.box_num_thresholds}}).validate()

    started = time.time()
    local_runner.run(config)
    wall = time.time() - started
    run = outputs.latest_run(config)
    assert run is not None, "the run left nothing in the metadata store"

    executions = sorted(run.executions.values(), key=lambda e: e.start_ms)
    total = sum(e.seconds for e in executions)
    print(f"\nLocal pipeline on {args.num_images} shapes images of {args.image_size}x{args.image_size}, "
          f"{args.train_steps} train steps, {os.cpu_count()} CPU cores (times from ML Metadata)")
    print(f"{'component':<32} {'state':<9} {'seconds':>9} {'share':>7}")
    for e in executions:
        print(f"{e.component_id:<32} {e.state:<9} {e.seconds:9.1f} {100 * e.seconds / max(total, 1e-9):6.1f}%")
    trainer = run.executions[TRAINER_ID].seconds if TRAINER_ID in run.executions else 0.0
    outside = total - trainer
    print(f"{'sum of components':<42} {total:9.1f}")
    print(f"{'outside training (all but Trainer)':<42} {outside:9.1f} {100 * outside / max(total, 1e-9):6.1f}%")
    # The peer in the same run: absolute times drift on a shared machine, this ratio much less.
    print(f"{'outside training / Trainer':<42} {outside / max(trainer, 1e-9):9.2f}x")
    print(f"{'wall time (incl. orchestration)':<42} {wall:9.1f}")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"work dir: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
