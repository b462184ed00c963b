"""Benchmark: COCO mask and box AP of the ``tiny`` preset on synthetic shapes, over training steps and wall time.

The Trainer (``trainer.train.train``) trains the ``tiny`` preset on 512 shapes images of 128x128 (seed fixed)
within a wall-time budget; at several points the model is exported (``trainer.export.export_serving_model``,
what the pipeline serves) and evaluated on 64 held-out shapes images (another seed) through the SavedModel's
``serving_default`` signature: box-relative masks pasted with ``maskrcnn_tfx.masks``, pycocotools COCOeval
``bbox`` and ``segm``. The AP curve is printed over steps and training wall time. Target: mask AP >= 0.5
within 30 minutes on 2 CPU cores.

Training runs in chunks: each chunk is one ``train()`` call that resumes from the previous chunk's checkpoint
in the same model dir (the product's resume path) and trains up to the next evaluation step. The budget counts
the training chunks' wall time (including each chunk's start-up: building the model, restoring, tracing);
export and evaluation time is printed separately and not counted. The total number of steps is planned from
the budget: a first chunk measures the seconds per step, then the cosine schedule's length is set to the
steps that fit into what remains (re-planned after every chunk, so a slower machine still ends its schedule
at the budget).

    .venv/bin/python benchmarks/train_accuracy.py --budget-minutes 30 [--work-dir /tmp/maskrcnn_bench_accuracy]

Settings (the tiny preset plus the overrides printed at the start) can be changed with ``--lr``,
``--batch-size``, ``--warmup-steps``, ``--evals``.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402  (sets sys.path and imports maskrcnn_tfx first)


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
    p.add_argument("--evals", type=int, default=5, help="evaluation points after the first chunk")
    p.add_argument("--max-steps", type=int, default=0, help="cap on the planned steps (0: budget only)")
    p.add_argument("--keep", action="store_true", help="keep the model dir of an earlier run (resume)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.get_logger().setLevel("ERROR")
    from maskrcnn_tfx.label_map import LabelMap  # pylint: disable=g-import-not-at-top
    from trainer import config as config_lib  # pylint: disable=g-import-not-at-top
    from trainer import export as export_lib  # pylint: disable=g-import-not-at-top
    from trainer import train as train_lib  # pylint: disable=g-import-not-at-top

    t0 = time.monotonic()
    data = _common.prepare_shapes(os.path.join(args.work_dir, "data"), num_train=args.num_train,
                                  num_eval=args.num_eval, image_size=args.image_size, seed=args.seed)
    print(f"data: {data.num_train} train + {data.num_eval} held-out shapes images of {data.image_size}x"
          f"{data.image_size} (seeds {data.seed} and {data.seed + _common.EVAL_SEED_OFFSET}), "
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

    def overrides(total_steps: int):
        return {
            "label_map_path": data.label_map,
            "model": {"input_size": args.image_size},
            "train": {
                "batch_size": args.batch_size, "train_steps": total_steps, "eval_steps": 0,
                "summary_interval": 50, "checkpoint_interval": 50, "max_checkpoints": 2,
                "learning_rate": {"schedule": "cosine", "base": args.lr, "cosine_alpha": 0.05,
                                  "warmup_steps": args.warmup_steps, "warmup_start": args.lr / 10,
                                  "cosine_decay_steps": max(total_steps - args.warmup_steps, 1)},
            },
        }

    print("settings: preset tiny +", json.dumps(overrides(planned)), "(train_steps / cosine_decay_steps "
          "re-planned from measured speed)", flush=True)
    print(f"budget: {args.budget_minutes:g} min of training wall time (export + evaluation not counted)",
          flush=True)

    curve = []
    train_seconds = 0.0
    eval_seconds = 0.0
    step = train_lib.latest_step(model_dir)
    target = first
    while True:
        config = config_lib.load_config("tiny", overrides(planned))
        chunk_start = time.monotonic()
        result = train_lib.train(config, data.train_pattern, None, model_dir, label_map=labels,
                                 train_steps=target)
        chunk_seconds = time.monotonic() - chunk_start
        chunk_steps = result.global_step - step
        train_seconds += chunk_seconds
        step = result.global_step
        loss = result.train_metrics.get("total_loss", float("nan"))
        print(f"chunk: steps {step - chunk_steps}->{step} in {chunk_seconds:.0f} s "
              f"({chunk_seconds / max(chunk_steps, 1):.3f} s/step incl. start-up; "
              f"{result.seconds_per_step or float('nan'):.3f} s/step in loops), total_loss {loss:.3f}",
              flush=True)

        e0 = time.monotonic()
        serving_dir = os.path.join(args.work_dir, "serving")
        shutil.rmtree(serving_dir, ignore_errors=True)
        export_lib.export_serving_model(result.model, config, labels, serving_dir)
        export_s = time.monotonic() - e0
        metrics = _common.coco_evaluate_saved_model(serving_dir, data.eval_annotations, data.eval_images_dir)
        eval_seconds += time.monotonic() - e0
        point = {"step": step, "train_minutes": train_seconds / 60, "wall_minutes": (time.monotonic() - t0) / 60,
                 "mask_AP": metrics["mask_AP"], "mask_AP50": metrics["mask_AP50"], "box_AP": metrics["box_AP"],
                 "box_AP50": metrics["box_AP50"], "total_loss": loss}
        curve.append(point)
        print(f"eval @ step {step}: mask AP {metrics['mask_AP']:.3f} (AP50 {metrics['mask_AP50']:.3f}), box AP "
              f"{metrics['box_AP']:.3f} (AP50 {metrics['box_AP50']:.3f}); training {train_seconds / 60:.1f} min, "
              f"export {export_s:.0f} s + eval {metrics['eval_seconds']:.0f} s", flush=True)
        del result
        tf.keras.backend.clear_session()

        if step >= planned:
            break
        # Re-plan: the remaining budget at the speed of the last chunk (its start-up included, since every
        # chunk pays it); the last chunk ends the schedule.
        seconds_per_step = chunk_seconds / max(chunk_steps, 1)
        remaining = budget - train_seconds
        if remaining <= 0:
            break
        # Steps left at the measured pace (each chunk pays its start-up again), up or down.
        fit = step + int(remaining / seconds_per_step)
        planned = min(fit, args.max_steps) if args.max_steps else fit
        if len(curve) == 1:
            stride = max(50, int(math.ceil((planned - step) / args.evals / 50.0)) * 50)
        if planned - step < 50:  # not worth another chunk's start-up
            break
        target = min(planned, step + stride)
        if planned - target < stride // 2:
            target = planned
        print(f"plan: {planned} steps in all (next evaluation at step {target})", flush=True)

    print()
    print("AP curve (held-out 64 images; COCO AP@[.5:.95]):")
    print(f"{'step':>6} {'train_min':>9} {'wall_min':>8} {'mask_AP':>7} {'mask_AP50':>9} {'box_AP':>6} "
          f"{'box_AP50':>8} {'loss':>6}")
    for p in curve:
        print(f"{p['step']:>6} {p['train_minutes']:>9.1f} {p['wall_minutes']:>8.1f} {p['mask_AP']:>7.3f} "
              f"{p['mask_AP50']:>9.3f} {p['box_AP']:>6.3f} {p['box_AP50']:>8.3f} {p['total_loss']:>6.3f}")
    best = max(curve, key=lambda p: p["mask_AP"])
    final = curve[-1]
    print(f"final: mask AP {final['mask_AP']:.3f}, box AP {final['box_AP']:.3f} after {final['step']} steps, "
          f"{final['train_minutes']:.1f} min of training (export+eval {eval_seconds / 60:.1f} min extra); "
          f"target mask AP >= 0.5: {'met' if best['mask_AP'] >= 0.5 else 'NOT met'} "
          f"(best {best['mask_AP']:.3f} at step {best['step']})")
    with open(os.path.join(args.work_dir, "curve.json"), "w", encoding="utf-8") as f:
        json.dump({"settings": overrides(planned), "curve": curve}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
