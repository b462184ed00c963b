"""Benchmark: COCO mask and box AP of the ``tiny`` preset on synthetic shapes, over training steps and wall time.

The Trainer (``maskrcnn_tfx.trainer.train.train``) trains the ``tiny`` preset on 512 shapes images of 128x128 (seed
fixed) within a wall-time budget; at several points the model is exported
(``maskrcnn_tfx.trainer.export.export_serving_model``, what the pipeline serves) and evaluated on 64 held-out shapes
images (another seed) through the SavedModel's ``serving_default`` signature: box-relative masks pasted with
``maskrcnn_tfx.masks``, pycocotools COCOeval ``bbox`` and ``segm``. The AP curve is printed over steps and training wall
time. Target: mask AP >= 0.5 within 30 minutes on 2 CPU cores.

Training runs in two ``train()`` calls in the same model dir, the second resuming from the first's checkpoint
(the product's resume path). The first, short one measures the seconds per step and the start-up (building
the model, restoring, tracing); the cosine schedule's length is then set to the steps that fit into what is
left of the budget, and the second call trains to that step with the Trainer's own periodic evaluation on the
held-out images (Model Garden's COCO evaluator, pycocotools), so the curve costs no further start-ups. The
budget counts both calls' whole wall time, the in-training evaluations included. After each call the model is
exported and evaluated through its SavedModel (time printed separately, not counted): the final figure is the
served model's.

    .venv/bin/python -m benchmarks.train_accuracy --budget-minutes 30 [--work-dir /tmp/maskrcnn_bench_accuracy]

Settings (the tiny preset plus the overrides printed at the start) can be changed with ``--lr``,
``--batch-size``, ``--warmup-steps``, ``--evals``, and any Trainer field with ``--set`` (JSON overrides, e.g.
``--set '{"model": {"num_sampled_masks": 32}}'``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time

import maskrcnn_tfx  # noqa: F401  (before TensorFlow: selects tf_keras)
from benchmarks import _common
from maskrcnn_tfx.testing import data as shapes_sets


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-minutes", type=float, default=30.0, help="training wall-time budget")
    p.add_argument("--work-dir", default="/tmp/maskrcnn_bench_accuracy")
    p.add_argument("--num-train", type=int, default=512)
    p.add_argument("--num-eval", type=int, default=64)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="peak learning rate (cosine decay after warm-up); the tiny preset uses Adam at 1e-3")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--first-chunk", type=int, default=200, help="steps of the first chunk (measures speed)")
    p.add_argument("--evals", type=int, default=5, help="evaluations during the second call")
    p.add_argument("--set", default="{}", help="JSON overrides of the Trainer configuration, over the others")
    p.add_argument("--max-steps", type=int, default=0, help="cap on the planned steps (0: budget only)")
    p.add_argument("--keep", action="store_true", help="keep the model dir of an earlier run (resume)")
    return p.parse_args(argv)


def _validation_scalars(event_dir: str):
    """{step: {tag: value, "wall_time": seconds since the epoch}} of the Trainer's evaluation summaries
    (TensorBoard events in ``event_dir``)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    out = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(event_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                          else float(value.simple_value))
                point = out.setdefault(int(event.step), {})
                point[value.tag] = number
                point["wall_time"] = event.wall_time
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.get_logger().setLevel("ERROR")
    from maskrcnn_tfx.label_map import LabelMap  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.trainer import export as export_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.trainer import train as train_lib  # pylint: disable=g-import-not-at-top

    t0 = time.monotonic()
    data = shapes_sets.prepare_shapes(os.path.join(args.work_dir, "data"), num_train=args.num_train,
                                  num_eval=args.num_eval, image_size=args.image_size, seed=args.seed)
    print(f"data: {data.num_train} train + {data.num_eval} held-out shapes images of {data.image_size}x"
          f"{data.image_size} (seeds {data.seed} and {data.seed + shapes_sets.EVAL_SEED_OFFSET}), "
          f"ready in {time.monotonic() - t0:.0f} s", flush=True)
    labels = LabelMap.load(data.label_map)
    model_dir = os.path.join(args.work_dir, "model")
    if not args.keep:
        shutil.rmtree(model_dir, ignore_errors=True)

    budget = args.budget_minutes * 60.0
    first = args.first_chunk
    # A first guess of the run's length (0.6 s/step); re-planned from measured speed after each chunk.
    planned = max(first + 1, int(budget / 0.6))
    if args.max_steps:
        planned = min(planned, args.max_steps)

    extra = json.loads(args.set)

    def overrides(total_steps: int, eval_interval: int = 0):
        values = {
            "model": {"input_size": args.image_size},
            "train": {
                "batch_size": args.batch_size, "train_steps": total_steps,
                "eval_steps": -1 if eval_interval else 0, "eval_interval": eval_interval,
                "summary_interval": 50, "checkpoint_interval": 50, "max_checkpoints": 2,
                "learning_rate": {"schedule": "cosine", "base": args.lr, "cosine_alpha": 0.05,
                                  "warmup_steps": args.warmup_steps, "warmup_start": args.lr / 10,
                                  "cosine_decay_steps": max(total_steps - args.warmup_steps, 1)},
            },
        }
        return [values, extra]

    print("settings: preset tiny +", json.dumps(overrides(planned)), "(train_steps / cosine_decay_steps "
          "re-planned from measured speed)", flush=True)
    print(f"budget: {args.budget_minutes:g} min of training wall time (export + evaluation of the SavedModel not "
          f"counted)", flush=True)

    curve = []
    train_seconds = 0.0
    eval_seconds = 0.0

    def served_point(result, config, label):
        nonlocal eval_seconds
        e0 = time.monotonic()
        serving_dir = os.path.join(args.work_dir, "serving")
        shutil.rmtree(serving_dir, ignore_errors=True)
        export_lib.export_serving_model(result.model, config, labels, serving_dir)
        export_s = time.monotonic() - e0
        metrics = _common.coco_evaluate_saved_model(serving_dir, data.eval_annotations, data.eval_images_dir)
        eval_seconds += time.monotonic() - e0
        loss = result.train_metrics.get("total_loss", float("nan"))
        point = {"step": result.global_step, "train_minutes": train_seconds / 60,
                 "wall_minutes": (time.monotonic() - t0) / 60, "mask_AP": metrics["mask_AP"],
                 "mask_AP50": metrics["mask_AP50"], "box_AP": metrics["box_AP"], "box_AP50": metrics["box_AP50"],
                 "total_loss": loss, "evaluated_by": label}
        curve.append(point)
        print(f"eval @ step {point['step']} ({label}): mask AP {metrics['mask_AP']:.3f} (AP50 "
              f"{metrics['mask_AP50']:.3f}), box AP {metrics['box_AP']:.3f} (AP50 {metrics['box_AP50']:.3f}); "
              f"training {train_seconds / 60:.1f} min, export {export_s:.0f} s + eval {metrics['eval_seconds']:.0f} s",
              flush=True)
        return metrics["eval_seconds"]

    # 1. A short call: speed and start-up.
    step = train_lib.latest_step(model_dir)
    config = config_lib.load_trainer_config("tiny", overrides(planned))
    config.train.train_steps = max(first, step + 1)  # this call stops early; the schedule stays the planned one
    chunk_start = time.monotonic()
    result = train_lib.train(config, data.train_pattern, None, model_dir, label_map=labels)
    chunk_seconds = time.monotonic() - chunk_start
    chunk_steps = max(result.global_step - step, 1)
    train_seconds += chunk_seconds
    loop_seconds = result.seconds_per_step or chunk_seconds / chunk_steps
    startup = max(chunk_seconds - chunk_steps * loop_seconds, 0.0)
    print(f"call 1: steps {step}->{result.global_step} in {chunk_seconds:.0f} s ({loop_seconds:.3f} s/step in "
          f"loops, start-up {startup:.0f} s), total_loss {result.train_metrics.get('total_loss', float('nan')):.3f}",
          flush=True)
    step = result.global_step
    one_eval = served_point(result, config, "SavedModel")
    del result
    tf.keras.backend.clear_session()

    # 2. The rest of the budget in one call, evaluating on the way. Its start-up and evaluations are paid
    # from the budget too (estimated from call 1 and from the SavedModel evaluation).
    remaining = budget - train_seconds - startup - args.evals * one_eval
    planned = step + max(int(remaining / loop_seconds) // 50 * 50, 0)
    if args.max_steps:
        planned = min(planned, args.max_steps)
    if planned - step >= 50:
        stride = max(50, int(math.ceil((planned - step) / args.evals / 50.0)) * 50)
        print(f"plan: {planned} steps in all, evaluations every {stride} steps", flush=True)
        config = config_lib.load_trainer_config("tiny", overrides(planned, eval_interval=stride))
        chunk_start, call_2_epoch = time.monotonic(), time.time()
        result = train_lib.train(config, data.train_pattern, data.eval_pattern, model_dir, label_map=labels)
        chunk_seconds = time.monotonic() - chunk_start
        train_seconds += chunk_seconds
        print(f"call 2: steps {step}->{result.global_step} in {chunk_seconds:.0f} s (evaluations included), "
              f"total_loss {result.train_metrics.get('total_loss', float('nan')):.3f}", flush=True)
        in_training = _validation_scalars(os.path.join(model_dir, "validation"))
        call_2_start_minutes = (train_seconds - chunk_seconds) / 60
        for at, values in sorted(in_training.items()):
            if at >= result.global_step:
                continue  # The final step is evaluated through the SavedModel below.
            minutes = call_2_start_minutes + (values["wall_time"] - call_2_epoch) / 60
            curve.append({"step": at, "train_minutes": minutes, "wall_minutes": float("nan"),
                          "mask_AP": values.get("mask_AP", float("nan")),
                          "mask_AP50": values.get("mask_AP50", float("nan")),
                          "box_AP": values.get("AP", float("nan")), "box_AP50": values.get("AP50", float("nan")),
                          "total_loss": float("nan"), "evaluated_by": "in training"})
        if result.global_step in in_training:
            v = in_training[result.global_step]
            print(f"in-training evaluation @ step {result.global_step}: mask AP {v.get('mask_AP', float('nan')):.3f}, "
                  f"box AP {v.get('AP', float('nan')):.3f}", flush=True)
        print(f"(call 2 started at {call_2_start_minutes:.1f} training minutes)", flush=True)
        served_point(result, config, "SavedModel")
        curve.sort(key=lambda p: p["step"])

    print()
    print("AP curve (held-out 64 images; COCO AP@[.5:.95]):")
    print(f"{'step':>6} {'train_min':>9} {'wall_min':>8} {'mask_AP':>7} {'mask_AP50':>9} {'box_AP':>6} "
          f"{'box_AP50':>8} {'loss':>6}  evaluated by")
    for p in curve:
        print(f"{p['step']:>6} {p['train_minutes']:>9.1f} {p['wall_minutes']:>8.1f} {p['mask_AP']:>7.3f} "
              f"{p['mask_AP50']:>9.3f} {p['box_AP']:>6.3f} {p['box_AP50']:>8.3f} {p['total_loss']:>6.3f}  "
              f"{p['evaluated_by']}")
    final = curve[-1]
    print(f"final (served model): mask AP {final['mask_AP']:.3f}, box AP {final['box_AP']:.3f} after {final['step']} "
          f"steps, {final['train_minutes']:.1f} min of training (SavedModel export+eval {eval_seconds / 60:.1f} min "
          f"extra); target mask AP >= 0.5 within {args.budget_minutes:g} min: "
          f"{'met' if final['mask_AP'] >= 0.5 else 'NOT met'}")
    with open(os.path.join(args.work_dir, "curve.json"), "w", encoding="utf-8") as f:
        json.dump({"settings": overrides(planned), "curve": curve}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
