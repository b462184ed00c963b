"""``maskrcnn-tfx run``: runs the pipeline (local, Beam) or compiles it (Kubeflow), then says where outputs are.

Examples::

    maskrcnn-tfx run --data outputs/shapes/tfrecords --train-steps 200
    maskrcnn-tfx run --config pipeline.yaml --runner beam --beam-arg=--direct_num_workers=4
    maskrcnn-tfx run --config pipeline.yaml --runner kubeflow --image gcr.io/me/maskrcnn-tfx:0.1.0
    maskrcnn-tfx run --data my/tfrecords --preset finetune --init-checkpoint pretrained/ckpt-800
    maskrcnn-tfx run --config pipeline.yaml --runner kubeflow --kfp-host https://kf.example.com/pipeline \
        --schedule "0 3 * * 1"            # or --vertex-project PROJECT (pipelines/submit.py)

Flags override the YAML file's values; the merged configuration is validated once, before anything runs.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Any, Dict, List

from maskrcnn_tfx.pipelines import submit
from maskrcnn_tfx import config as config_lib
from maskrcnn_tfx.config.schema import INIT_CHECKPOINT_MODULES, RUNNERS, ConfigError, PipelineConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a configuration YAML file (see maskrcnn_tfx/config/schema.py; "
                                           "`maskrcnn-tfx config show` prints the merged result)")
    parser.add_argument("--runner", choices=RUNNERS, help="local (default): run here; beam: BeamDagRunner; "
                                                        "kubeflow: compile a KFP v2 / Vertex AI pipeline JSON "
                                                        "(and submit it with --kfp-host or --vertex-project)")
    parser.add_argument("--data", help="the converted data: TFRecords in train/ and eval/ and label_map.json")
    parser.add_argument("--train-pattern", help="train split files, relative to --data (may hold {SPAN})")
    parser.add_argument("--eval-pattern", help="eval split files, relative to --data (may hold {SPAN})")
    parser.add_argument("--label-map", help="the label map (default: DATA/label_map.json)")
    parser.add_argument("--schema", help="a curated schema.pbtxt (ImportSchemaGen instead of SchemaGen)")
    parser.add_argument("--pipeline-name", help="the pipeline's name in the metadata store")
    parser.add_argument("--pipeline-root", help="where the artifacts go (default: outputs/pipeline)")
    parser.add_argument("--metadata-path", help="the SQLite metadata file (default: PIPELINE_ROOT/metadata.sqlite)")
    parser.add_argument("--serving-dir", help="where blessed models are pushed, as <version>/ folders "
                                             "(default: PIPELINE_ROOT/serving)")
    parser.add_argument("--preset", help="the trainer preset (tiny, finetune, coco_r50fpn) or a preset YAML file")
    parser.add_argument("--train-steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--eval-steps", type=int, help="the Trainer's own evaluation, in batches (-1: the "
                                                         "whole eval split; 0: none, the preset's default)")
    parser.add_argument("--min-mask-ap", type=float, help="bless only with a mask AP strictly above this "
                                                          "(default 0.001; -1: any AP)")
    parser.add_argument("--min-box-ap", type=float, help="bless only with a box AP strictly above this "
                                                         "(default 0.001; -1: any AP)")
    parser.add_argument("--init-checkpoint", metavar="PATH",
                        help="fine-tune from pretrained weights: a checkpoint prefix (.../ckpt-N), a folder of "
                             "checkpoints (its latest) or a SavedModel, downloaded beforehand")
    parser.add_argument("--init-checkpoint-modules", choices=INIT_CHECKPOINT_MODULES,
                        help="what --init-checkpoint loads (default: the preset's): backbone; backbone_fpn; "
                             "all_but_class_layers (any label map: the class logits, box regression and mask "
                             "logits start fresh); all (same classes)")
    parser.add_argument("--max-ap-drop", type=float, help="bless only if AP is at most this below the last "
                                                          "blessed model's")
    parser.add_argument("--box-metric", choices=("pycocotools", "tfma"),
                        help="box AP implementation: pycocotools (default: COCO's exact box AP, cheap at any "
                             "number of classes) or tfma (TFMA's COCOMeanAveragePrecision: seconds per image "
                             "and class)")
    parser.add_argument("--box-num-thresholds", type=int, help="score thresholds of --box-metric tfma (cost)")
    parser.add_argument("--infra-validation", choices=("off", "docker", "kubernetes"),
                        help="check the model loads in TF Serving before pushing (default: off)")
    parser.add_argument("--beam-arg", action="append", dest="beam_args", metavar="ARG",
                        help="a Beam pipeline option, repeatable (e.g. --beam-arg=--runner=FlinkRunner)")
    parser.add_argument("--image", help="kubeflow: the container image of every component")
    parser.add_argument("--output-file", help="kubeflow: where to write the pipeline JSON")
    parser.add_argument("--no-cache", action="store_true", help="run every component even if cached")
    parser.add_argument("--verbose", action="store_true",
                        help="show TFX's, TensorFlow's and Beam's log lines as well (they always go to the run's "
                             "log file, PIPELINE_ROOT/logs/run-<time>.log)")
    submit.add_arguments(parser)


def config_changes(args: argparse.Namespace) -> Dict[str, Any]:
    """The flags given, as a nested dict of configuration fields (the schema's: maskrcnn_tfx/config/schema.py)."""
    changes: Dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        *sections, key = path.split(".")
        target = changes
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = value

    put("runner", args.runner)
    put("pipeline_name", args.pipeline_name)
    put("pipeline_root", args.pipeline_root)
    put("metadata_path", args.metadata_path)
    put("serving_dir", args.serving_dir)
    put("beam_args", args.beam_args)
    if args.no_cache:
        put("enable_cache", False)
    put("data.root", args.data)
    put("data.train_pattern", args.train_pattern)
    put("data.eval_pattern", args.eval_pattern)
    put("data.label_map_path", args.label_map)
    put("data.schema_path", args.schema)
    put("trainer.preset", args.preset)
    put("trainer.train.train_steps", args.train_steps)
    put("trainer.train.eval_steps", args.eval_steps)
    put("trainer.train.init_checkpoint", args.init_checkpoint)
    put("trainer.train.init_checkpoint_modules", args.init_checkpoint_modules)
    put("evaluation.min_mask_ap", args.min_mask_ap)
    put("evaluation.min_box_ap", args.min_box_ap)
    put("evaluation.max_ap_drop", args.max_ap_drop)
    put("evaluation.box_metric", args.box_metric)
    put("evaluation.box_num_thresholds", args.box_num_thresholds)
    put("infra_validation.mode", args.infra_validation)
    put("kubeflow.image", args.image)
    put("kubeflow.output_file", args.output_file)
    if submit.config_changes(args):
        changes.setdefault("kubeflow", {}).update(submit.config_changes(args))
    return changes


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The configuration file (if any) with the flags given merged over it, validated once."""
    return config_lib.load(args.config, config_changes(args))


def main(args: argparse.Namespace) -> int:
    from maskrcnn_tfx.pipelines import run_output  # pylint: disable=g-import-not-at-top  (light: no TensorFlow)

    verbose = bool(getattr(args, "verbose", False))
    preamble: List[str] = []
    try:
        # Whatever loading prints (a remote preset loads TensorFlow's file system) goes to the run's log.
        with contextlib.nullcontext(preamble) if verbose else run_output.captured_output() as preamble:
            config = config_from_args(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if config.runner == "kubeflow":
        from maskrcnn_tfx.pipelines import kubeflow_runner  # pylint: disable=g-import-not-at-top

        path = kubeflow_runner.compile_pipeline(config)
        print(f"Kubeflow V2 pipeline JSON: {path} (image {config.kubeflow.image})")
        if not submit.target(config):
            return 0
        try:
            submission = submit.submit(config, path)
        except submit.SubmissionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print("\n".join(submission.lines()))
        return 0

    return _run(config, verbose=verbose, preamble="".join(preamble))


def _run(config: PipelineConfig, verbose: bool = False, preamble: str = "") -> int:
    """Runs the pipeline with a line per component on the terminal and the rest in the run's log file."""
    from maskrcnn_tfx.pipelines import run_output  # pylint: disable=g-import-not-at-top  (light: no TensorFlow)

    log_path = run_output.log_path_for(config.pipeline_root)
    print(f"Running pipeline {config.pipeline_name} ({config.runner} runner); the details go to {log_path}",
          flush=True)
    failure: Any = None
    failed_component, summary = None, None
    previous = run_output.previous_durations(config.resolved_metadata_path, config.pipeline_name)
    # The runners (TFX, TensorFlow) are imported inside: their start-up messages go to the log too.
    with run_output.RunOutput([], log_path, verbose=verbose, previous=previous, preamble=preamble) as out:
        try:
            from maskrcnn_tfx.pipelines import outputs  # pylint: disable=g-import-not-at-top
            from maskrcnn_tfx.pipelines.pipeline import create_pipeline  # pylint: disable=g-import-not-at-top
            if config.runner == "beam":
                from maskrcnn_tfx.pipelines import beam_runner as runner  # pylint: disable=g-import-not-at-top
            else:
                from maskrcnn_tfx.pipelines import local_runner as runner  # pylint: disable=g-import-not-at-top
            # Built once: its components name the progress lines, and the runner runs it.
            pipeline = create_pipeline(config)
            out.set_components([c.id for c in pipeline.components])
            runner.run(config, pipeline)
        except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
            # The components' own errors (validation reports, thresholds) are the message a user needs.
            failure = e if not isinstance(e, KeyboardInterrupt) else "interrupted (Ctrl-C)"
            failed_component = out.fail_running(str(failure))
            logging.getLogger(__name__).exception("The pipeline stopped%s",
                                                  f" at {failed_component}" if failed_component else "")
        try:
            summary = outputs.summarize_run(config)
        except Exception:  # pylint: disable=broad-except
            logging.getLogger(__name__).exception("Could not read the run's outcome from the metadata store")
        shown = set(out.shown_components)
    if summary is not None:
        # The summary's rows of the components printed as the run went are left out; the rest follows them.
        print("\n".join(line for line in summary.lines()
                        if not (line.startswith("  ") and line.split() and line.split()[0] in shown)))
    print(f"pipeline root: {config.pipeline_root} (metadata: {config.resolved_metadata_path})\nlog: {log_path}")
    if failure is not None:
        where = f" at {failed_component}" if failed_component else ""
        print(f"error: the pipeline stopped{where}: {failure}\n(the whole log: {log_path})", file=sys.stderr)
        return 1
    return 0
