"""A training process for the trainer tests: ``python tests/_train_worker.py SPEC.json``.

SPEC holds ``config`` (trainer fields, may name a preset), ``label_map``, ``train_files``, ``eval_files``,
``model_dir``,
``result`` (where to write the result JSON) and optionally ``logical_cpus`` (split the CPU into that many
logical devices before TensorFlow starts, for MirroredStrategy) and ``base_model``. A multi-worker run gets
its cluster from TF_CONFIG, set by the test.

The result JSON: global_step, num_replicas, strategy, train_metrics and a SHA-256 of the trainable weights.
"""
import hashlib
import json
import sys


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)

    import maskrcnn_tfx  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    if spec.get("logical_cpus"):
        # Must happen before TensorFlow initializes its devices.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(int(spec["logical_cpus"]))])

    from maskrcnn_tfx.trainer import model as model_lib  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.trainer import train as train_lib  # pylint: disable=g-import-not-at-top

    result = train_lib.train(spec["config"], spec["train_files"], spec.get("eval_files"), spec["model_dir"],
                             label_map=spec["label_map"], base_model=spec.get("base_model"))
    digest = hashlib.sha256()
    for _, variable in model_lib.model_parts_variables(result.model):
        if variable.trainable:
            digest.update(np.ascontiguousarray(variable.numpy(), np.float32).tobytes())
    body = {
        "global_step": result.global_step,
        "num_replicas": result.num_replicas,
        "strategy": result.strategy,
        "train_metrics": result.train_metrics,
        "seconds_per_step": result.seconds_per_step,
        "weights_sha256": digest.hexdigest(),
    }
    with open(spec["result"], "w") as f:
        json.dump(body, f)
    print("WORKER RESULT", json.dumps(body), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
