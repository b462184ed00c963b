"""Benchmark: fine-tuning from a checkpoint against training from scratch, for the same number of steps.

1. Pretraining: the ``tiny`` preset trains on shapes images of one seed with their own 3 classes (square,
   circle, triangle); its model dir is the checkpoint, as the Trainer writes it.
2. The task: shapes images of another seed, relabelled to 2 classes ("round": circles; "polygon": squares and
   triangles), so the label map, and with it the class layers' shapes, differ from the checkpoint's.
3. Fine-tuned: the ``finetune`` preset with ``train.init_checkpoint`` = the pretraining model dir
   (``all_but_class_layers``: everything but the class logits, per-class box regression and mask logits).
4. From scratch: the ``tiny`` preset (the product's from-scratch recipe), the same number of steps and batch.

Both are evaluated at the end of training on the same held-out relabelled images (the Trainer's own
evaluation: Model Garden's COCO evaluator, pycocotools), and their box and mask AP are printed with the ratio.
Everything goes through ``maskrcnn_tfx.trainer.train.train``, what the TFX Trainer's ``run_fn`` calls.

    .venv/bin/python -m benchmarks.finetune [--pretrain-steps 400] [--steps 100] [--work-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time

import maskrcnn_tfx  # noqa: F401  (before TensorFlow: selects tf_keras)

# Shapes' ids (square 1, circle 2, triangle 3) -> the fine-tuning task's (id, name).
RELABEL = {1: (2, "polygon"), 2: (1, "round"), 3: (2, "polygon")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", default="/tmp/maskrcnn_bench_finetune")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--pretrain-images", type=int, default=256)
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--train-images", type=int, default=64, help="images of the fine-tuning task")
    p.add_argument("--eval-images", type=int, default=32, help="held-out images of the fine-tuning task")
    p.add_argument("--steps", type=int, default=100, help="training steps of both the fine-tuned and scratch runs")
    p.add_argument("--batch-size", type=int, default=4)
    return p.parse_args(argv)


def make_set(out_dir: str, *, num_images: int, image_size: int, seed: int, relabel: bool, split: str) -> dict:
    """Shapes images converted to TFRecords (once; reused when ``out_dir`` holds them), relabelled if asked."""
    from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.data.shapes import generate_shapes  # pylint: disable=g-import-not-at-top

    done = os.path.join(out_dir, "DONE.json")
    if os.path.exists(done):
        with open(done, encoding="utf-8") as f:
            return json.load(f)
    annotations = generate_shapes(os.path.join(out_dir, "raw"), num_images=num_images, image_size=image_size,
                                  seed=seed, num_workers=2)
    if relabel:
        with open(annotations, encoding="utf-8") as f:
            coco = json.load(f)
        for annotation in coco["annotations"]:
            annotation["category_id"] = RELABEL[annotation["category_id"]][0]
        coco["categories"] = [{"id": i, "name": n} for i, n in sorted(set(RELABEL.values()))]
        annotations = os.path.join(out_dir, "relabelled.json")
        with open(annotations, "w", encoding="utf-8") as f:
            json.dump(coco, f)
    report = convert_coco(annotations, os.path.join(out_dir, "raw", "coco", "images"),
                          os.path.join(out_dir, "tfrecords"), split_name=split, progress=False, num_workers=2)
    body = {"pattern": report.file_pattern(split), "label_map": report.label_map_file}
    with open(done, "w", encoding="utf-8") as f:
        json.dump(body, f)
    return body


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.get_logger().setLevel("ERROR")
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.trainer import train as train_lib  # pylint: disable=g-import-not-at-top

    size = args.image_size
    data_dir = os.path.join(args.work_dir, "data")
    pretrain = make_set(os.path.join(data_dir, f"pretrain_{args.pretrain_images}x{size}"),
                        num_images=args.pretrain_images, image_size=size, seed=0, relabel=False, split="train")
    task_train = make_set(os.path.join(data_dir, f"task_train_{args.train_images}x{size}"),
                          num_images=args.train_images, image_size=size, seed=1, relabel=True, split="train")
    task_eval = make_set(os.path.join(data_dir, f"task_eval_{args.eval_images}x{size}"),
                         num_images=args.eval_images, image_size=size, seed=2, relabel=True, split="eval")
    print(f"pretraining: {args.pretrain_images} shapes images {size}x{size}, 3 classes; task: "
          f"{args.train_images} train + {args.eval_images} held-out images (other seeds), relabelled to 2 classes",
          flush=True)

    runs_dir = os.path.join(args.work_dir, "runs")
    shutil.rmtree(runs_dir, ignore_errors=True)
    common = {"model": {"input_size": size}, "data": {"shuffle_buffer_size": 256}}

    def run(name, preset, data, steps, eval_data=None, **train):
        values = {**common,
                  "train": {"batch_size": args.batch_size, "eval_batch_size": 4, "train_steps": steps,
                            "eval_steps": -1 if eval_data else 0, "eval_interval": 0,
                            "checkpoint_interval": steps, "summary_interval": steps, **train}}
        config = config_lib.load_trainer_config(preset, values)
        start = time.monotonic()
        result = train_lib.train(config, data["pattern"], eval_data["pattern"] if eval_data else None,
                                 os.path.join(runs_dir, name), label_map=data["label_map"])
        seconds = time.monotonic() - start
        metrics = result.eval_metrics
        print(f"{name}: preset {preset}, {result.global_step} steps in {seconds:.0f} s, "
              f"lr {config.train.learning_rate.base:g}"
              + (f", init {config.train.init_checkpoint_modules} from {config.train.init_checkpoint}"
                 if config.train.init_checkpoint else "")
              + (f": box AP {metrics['AP']:.3f} (AP50 {metrics['AP50']:.3f}), mask AP {metrics['mask_AP']:.3f} "
                 f"(AP50 {metrics['mask_AP50']:.3f})" if eval_data else ""), flush=True)
        tf.keras.backend.clear_session()
        return result, metrics

    pretrained, _ = run("pretrain", "tiny", pretrain, args.pretrain_steps)
    _, tuned = run("finetuned", "finetune", task_train, args.steps, task_eval, init_checkpoint=pretrained.model_dir)
    _, scratch = run("scratch", "tiny", task_train, args.steps, task_eval)

    def ratio(a, b):
        return f"{a / b:.1f}x" if b > 0 else "inf" if a > 0 else "n/a"

    print(f"\nafter {args.steps} steps on the relabelled task ({args.eval_images} held-out images):")
    print(f"  {'':12s} {'box AP':>8s} {'box AP50':>9s} {'mask AP':>8s} {'mask AP50':>10s}")
    for name, m in (("fine-tuned", tuned), ("from scratch", scratch)):
        print(f"  {name:12s} {m['AP']:8.3f} {m['AP50']:9.3f} {m['mask_AP']:8.3f} {m['mask_AP50']:10.3f}")
    print(f"  fine-tuned / scratch: box AP {ratio(tuned['AP'], scratch['AP'])}, "
          f"mask AP {ratio(tuned['mask_AP'], scratch['mask_AP'])}")
    beats = tuned["AP"] > scratch["AP"] and tuned["mask_AP"] > scratch["mask_AP"]
    print(f"fine-tuned beats scratch on box and mask AP: {'yes' if beats else 'NO'}")
    return 0 if beats else 1


if __name__ == "__main__":
    sys.exit(main())
