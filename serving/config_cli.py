"""``maskrcnn-tfx serving-config``: write TF Serving's ``models.config`` and batching parameters.

    maskrcnn-tfx serving-config --output serving/config --version-label stable=1700000000

writes ``serving/config/models.config`` and ``serving/config/batching_parameters.txt``, the files
``serving/docker-compose.yml`` and the Kubernetes ConfigMap give TF Serving. ``--base-path`` is the model's
folder as TF Serving sees it (inside the container: ``/models/NAME``, where the Pusher's base directory is
mounted); the local server reads the same file with a local path (``serve --model-config-file``).
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from maskrcnn_tfx.serving import model_config  # pylint: disable=import-outside-toplevel  (no TensorFlow)

    defaults = model_config.BatchingParameters()
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write both files into")
    parser.add_argument("--model-name", default=model_config.DEFAULT_MODEL_NAME,
                        help=f"default {model_config.DEFAULT_MODEL_NAME}")
    parser.add_argument("--base-path", metavar="PATH",
                        help=f"the model's version folders as the server sees them (default "
                             f"{model_config.CONTAINER_MODELS_DIR}/NAME)")
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--num-versions", type=int, default=1, metavar="N",
                        help="serve the N highest versions (default 1)")
    policy.add_argument("--all-versions", action="store_true", help="serve every version")
    policy.add_argument("--versions", type=int, nargs="+", metavar="V", help="serve these versions only")
    parser.add_argument("--version-label", action="append", default=[], metavar="LABEL=VERSION",
                        help="a version label (repeatable), e.g. stable=1700000000")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--batch-timeout-micros", type=int, default=defaults.batch_timeout_micros)
    parser.add_argument("--max-enqueued-batches", type=int, default=defaults.max_enqueued_batches)
    parser.add_argument("--num-batch-threads", type=int, default=defaults.num_batch_threads)
    parser.add_argument("--allowed-batch-sizes", type=int, nargs="+", default=[], metavar="N")


def main(args: argparse.Namespace) -> int:
    from maskrcnn_tfx.serving import model_config as mc  # pylint: disable=import-outside-toplevel

    try:
        labels = {}
        for item in args.version_label:
            label, _, version = item.partition("=")
            if not label or not version.isdigit():
                raise mc.ModelConfigError(f"--version-label {item!r} is not LABEL=VERSION")
            labels[label] = int(version)
        if args.all_versions:
            policy = mc.VersionPolicy("all")
        elif args.versions:
            policy = mc.VersionPolicy("specific", versions=tuple(args.versions))
        else:
            policy = mc.VersionPolicy("latest", num_versions=args.num_versions)
        model = mc.ServedModel(args.model_name, args.base_path or f"{mc.CONTAINER_MODELS_DIR}/{args.model_name}",
                               policy, labels)
        batching = mc.BatchingParameters(
            max_batch_size=args.max_batch_size, batch_timeout_micros=args.batch_timeout_micros,
            max_enqueued_batches=args.max_enqueued_batches, num_batch_threads=args.num_batch_threads,
            allowed_batch_sizes=tuple(args.allowed_batch_sizes))
        models_file, batching_file = mc.write_serving_config(args.output, [model], batching)
    except mc.ModelConfigError as e:
        print(f"serving-config: error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {models_file} and {batching_file}")
    return 0
