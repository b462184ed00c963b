"""``maskrcnn-tfx config show``: the configuration a run would use, merged and validated, as YAML.

Takes the same ``--config`` file and flags as ``maskrcnn-tfx run`` and prints what that run would get: the
file's values with the flags over them, the trainer section resolved from its preset (exactly what the Trainer
receives in its ``custom_config``), paths made absolute and the defaults that depend on other fields filled
in. Nothing runs and nothing is written; the output is itself a configuration file ``run --config`` takes::

    maskrcnn-tfx config show --config pipeline.yaml --train-steps 2000 > resolved.yaml
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict

import yaml

from maskrcnn_tfx import config as config_lib
from maskrcnn_tfx.pipelines import run_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the merged, validated configuration of a run as YAML",
                              description="Print the configuration `maskrcnn-tfx run` would use with these "
                                          "flags (same flags as run), merged and validated, as YAML.")
    run_cli.add_arguments(show)


def resolved(config: config_lib.PipelineConfig) -> Dict[str, Any]:
    """The whole configuration as plain data, with the defaults that depend on other fields as a run uses them."""
    values = config_lib.to_dict(config)
    values.update(metadata_path=config.resolved_metadata_path, serving_dir=config.resolved_serving_dir,
                  beam_args=config.resolved_beam_args)
    values["data"]["label_map_path"] = config.label_map_path
    return values


def main(args: argparse.Namespace) -> int:
    try:
        values = resolved(run_cli.config_from_args(args))
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# maskrcnn-tfx {' '.join(sys.argv[1:]) or 'config show'}")
    print("# The --config file, then the flags; the trainer section resolved from its preset (what the Trainer "
          "trains with).")
    sys.stdout.write(yaml.safe_dump(values, sort_keys=False, default_flow_style=False))
    return 0
