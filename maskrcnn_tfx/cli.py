"""``maskrcnn-tfx``: the product's one command.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and ``main(args) -> int``.
Modules are imported only when their subcommand runs, so ``--help`` answers without loading TensorFlow.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

import maskrcnn_tfx

# name -> (module, one-line help). New subcommands (run, predict, serve, report) are added here.
SUBCOMMANDS = {
    "convert-coco": ("maskrcnn_tfx.data.convert_cli",
                     "Convert COCO JSON annotations and images into sharded TFRecords and a label map."),
    "make-shapes": ("maskrcnn_tfx.data.shapes_cli",
                    "Generate the synthetic shapes data set (COCO JSON + images) and convert it to TFRecords."),
    "run": ("maskrcnn_tfx.pipelines.run_cli",
            "Run the TFX pipeline (local or Beam), or compile it for Kubeflow and submit it to KFP or Vertex AI."),
    "config": ("maskrcnn_tfx.pipelines.config_cli",
               "Show the configuration a run would use (the --config file and run's flags), merged and validated."),
    "watch": ("maskrcnn_tfx.pipelines.watch_cli",
              "Run the local pipeline on each new {SPAN} of the data, one run at a time, with a report after each."),
    "report": ("maskrcnn_tfx.report.cli",
               "Build the HTML report of a pipeline run (metrics, blessing, curves, data, gallery) and the runs index."),
    "predict": ("maskrcnn_tfx.serving.predict_cli",
                "Detections for images from a TF Serving endpoint (REST or gRPC); COCO results JSON, overlays."),
    "serve": ("maskrcnn_tfx.serving.serve_cli",
              "Serve the pushed models with TF Serving's REST and gRPC APIs (a local server for development)."),
    "serving-config": ("maskrcnn_tfx.serving.config_cli",
                       "Write TF Serving's models.config and batching parameters for the pushed models."),
}


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskrcnn-tfx",
        description="Mask R-CNN instance segmentation as a production TFX pipeline.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {maskrcnn_tfx.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported to fill in its arguments.
    chosen = next((a for a in (argv or []) if a in SUBCOMMANDS), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
