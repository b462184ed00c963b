"""``maskrcnn-tfx config show``: the configuration a run would use, merged and validated, as YAML.

Takes the same ``--config`` file and flags as ``maskrcnn-tfx run`` and prints what that run would get: the
pipeline's settings (flags over the file over the defaults, paths made absolute) and the Trainer's configuration
resolved from its preset and overrides, exactly as the Trainer will read it from its ``custom_config``. Nothing
runs and nothing is written::

    maskrcnn-tfx config show --config pipeline.yaml --train-steps 2000 > resolved.yaml
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict

import yaml

from maskrcnn_tfx.pipelines import run_cli
from maskrcnn_tfx.pipelines.config import PipelineConfig, PipelineConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the merged, validated configuration of a run as YAML",
                              description="Print the configuration `maskrcnn-tfx run` would use with these "
                                          "flags (same flags as run), merged and validated, as YAML.")
    run_cli.add_arguments(show)


def resolved(config: PipelineConfig) -> Dict[str, Any]:
    """The pipeline's settings and the Trainer's resolved configuration, as plain data."""
    from maskrcnn_tfx.pipelines import pipeline  # pylint: disable=g-import-not-at-top  (imports TFX)
    from maskrcnn_tfx.trainer import config as trainer_config  # pylint: disable=g-import-not-at-top

    trainer = trainer_config.load_config(overrides=pipeline.trainer_custom_config(config))
    settings = config.to_dict()
    # The defaults that depend on other fields, as the run will use them.
    settings.update(metadata_path=config.resolved_metadata_path, serving_dir=config.resolved_serving_dir,
                    beam_args=config.resolved_beam_args)
    settings["data"]["label_map_path"] = config.label_map_path
    return {"pipeline": settings, "trainer_resolved": trainer.as_dict()}


def main(args: argparse.Namespace) -> int:
    from maskrcnn_tfx.pipelines import run_output  # pylint: disable=g-import-not-at-top  (light: no TensorFlow)

    # TensorFlow's and TFX's start-up messages (C++, at import) would be mixed into the YAML: keep them out.
    with run_output.captured_output():
        from maskrcnn_tfx.trainer.config import ConfigError  # pylint: disable=g-import-not-at-top

        try:
            values = resolved(run_cli.config_from_args(args))
            problem = None
        except (PipelineConfigError, ConfigError) as e:
            values, problem = None, e
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(f"# maskrcnn-tfx {' '.join(sys.argv[1:]) or 'config show'}")
    print("# pipeline: the run's settings (the --config file, then the flags; empty paths resolved).")
    print("# trainer_resolved: what the Trainer trains with (its preset, then trainer.overrides and the steps).")
    sys.stdout.write(yaml.safe_dump(values, sort_keys=False, default_flow_style=False))
    return 0
