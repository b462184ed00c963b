"""The local pipeline's sequence of runs on one pipeline root, shared by every test that needs a real run.

Each run costs minutes, so the session runs them once (the ``local_pipeline`` fixture, registered in
tests/conftest.py) and tests read their outcome and the metadata store:

1. ``first``: span 1, AP bounds of -1 (any AP passes), through ``maskrcnn-tfx run --config FILE`` as a user runs
   it (its stdout and stderr are kept): every component runs, the model is blessed and pushed to
   ``serving/<integer>/``;
2. ``strict``: the same data and trainer with a mask AP bound of 1.0 (no AP is above it): the data, validation,
   Transform and Trainer executions are CACHED; the Evaluator runs again, does not bless, and nothing new is
   pushed;
3. ``span2``: span 2 added, run by TFX's BeamDagRunner with Beam's DirectRunner in multi-processing mode (the
   Beam runner's end-to-end run, through ``maskrcnn-tfx run`` as well: a new span makes every component
   execute) on the same pipeline root and metadata store: the pipeline trains on span 2 and the Evaluator
   compares the new model with the last blessed one (the first run's) as its baseline; it is blessed and
   pushed as a second version.

Sharing one sequence saves a third training (the Trainer dominates every run). The returned
:class:`LocalPipelineRuns` gives the configuration, the paths and the runs (in order).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from typing import Any, Dict, List

import pytest

IMAGE_SIZE = 128
NUM_IMAGES = 24
EVAL_FRACTION = 0.25
# The split is a hash of (seed, image id): these seeds give 19 train and 5 eval images (several object counts).
SPAN_SEEDS = {1: 3, 2: 4}
TRAIN_STEPS = 3
PIPELINE_NAME = "maskrcnn-local-test"

def make_span(data_root: str, span: int, seed: int, *, num_images: int = NUM_IMAGES,
              image_size: int = IMAGE_SIZE) -> str:
    """Shapes images converted to ``<data_root>/span-<span>/{train,eval}/`` with its label map."""
    from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.data.shapes import generate_shapes  # pylint: disable=g-import-not-at-top

    raw = os.path.join(os.path.dirname(data_root), f"raw-{span}")
    annotations = generate_shapes(raw, num_images=num_images, image_size=image_size, seed=seed)
    output = os.path.join(data_root, f"span-{span}")
    convert_coco(annotations, os.path.join(raw, "coco", "images"), output, eval_fraction=EVAL_FRACTION,
                 progress=False, seed=seed)
    return output


def base_config(data_root: str, root: str, **evaluation: Any):
    """The runs' configuration: spans under ``data_root``, outputs under ``root``, a 3-step tiny model."""
    from maskrcnn_tfx import config as config_lib  # pylint: disable=g-import-not-at-top

    return config_lib.from_dict({
        "pipeline_name": PIPELINE_NAME,
        "pipeline_root": os.path.join(root, "pipeline_root"),
        "serving_dir": os.path.join(root, "serving"),
        "data": {"root": data_root, "train_pattern": "span-{SPAN}/train/*", "eval_pattern": "span-{SPAN}/eval/*",
                 "label_map_path": os.path.join(data_root, "span-1", "label_map.json")},
        "trainer": {"preset": "tiny", "train": {"train_steps": TRAIN_STEPS, "eval_steps": 1, "batch_size": 2,
                                                "eval_batch_size": 2}},
        # The runs are about the wiring, and a 3-step model's AP may be 0: bounds of -1 (AP must be above -1) let
        # every model with a defined AP pass, and max_ap_drop 1 lets it score below the last blessed one.
        "evaluation": dict({"min_mask_ap": -1.0, "min_box_ap": -1.0, "max_ap_drop": 1.0}, **evaluation),
    })


def versions(serving_dir: str) -> List[str]:
    """The integer version folders under a serving base directory, ascending."""
    if not os.path.isdir(serving_dir):
        return []
    return sorted((v for v in os.listdir(serving_dir) if v.isdigit()), key=int)


@dataclasses.dataclass
class Run:
    """One run of the sequence: its configuration, its summary from MLMD and the serving versions after it."""

    name: str
    config: Any  # maskrcnn_tfx.pipelines.config.PipelineConfig (validated)
    summary: Any  # maskrcnn_tfx.pipelines.outputs.RunSummary
    versions: List[str]
    stdout: str = ""
    exit_code: int = 0
    stderr: str = ""  # what reached file descriptor 2 (C++ logging included) or sys.stderr during the run


@dataclasses.dataclass
class LocalPipelineRuns:
    """The runs of the module docstring on one pipeline root and metadata store."""

    config: Any  # the base PipelineConfig (validated, local runner); each Run has its own .config
    pipeline_root: str
    metadata_path: str
    serving_dir: str
    data_root: str
    runs: Dict[str, Run]  # "first", "strict", "span2", in run order


@contextlib.contextmanager
def _stderr_to(path: str):
    """Sends file descriptor 2 and sys.stderr to ``path`` (what a terminal would show of stderr); yields a
    function reading it back."""
    import sys  # pylint: disable=g-import-not-at-top

    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w+", encoding="utf-8") as f:
        os.dup2(f.fileno(), 2)
        try:
            with contextlib.redirect_stderr(f):
                yield lambda: open(path, encoding="utf-8").read()  # pylint: disable=consider-using-with
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_sequence(work: str) -> LocalPipelineRuns:
    """Runs the sequence under ``work`` (see the module docstring)."""
    import yaml  # pylint: disable=g-import-not-at-top

    from maskrcnn_tfx import cli  # pylint: disable=g-import-not-at-top
    from maskrcnn_tfx.pipelines import local_runner, outputs  # pylint: disable=g-import-not-at-top

    data_root = os.path.join(work, "spans")
    make_span(data_root, 1, seed=SPAN_SEEDS[1])
    config = base_config(data_root, work)
    serving_dir = config.resolved_serving_dir
    runs: Dict[str, Run] = {}

    def run_command(name: str, run_config, config_name: str) -> Run:
        """``maskrcnn-tfx run --config FILE`` as a user runs it, keeping what it prints."""
        config_file = os.path.join(work, config_name)
        with open(config_file, "w", encoding="utf-8") as f:
            yaml.safe_dump(run_config.to_dict(), f)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), _stderr_to(os.path.join(work, f"{name}.stderr")) as stderr:
            code = cli.main(["run", "--config", config_file])
        return Run(name, run_config, outputs.summarize_run(run_config), versions(serving_dir), out.getvalue(), code,
                   stderr=stderr())

    runs["first"] = run_command("first", config, "pipeline.yaml")

    # Same data and trainer, an unreachable mask AP: upstream is cached, the Evaluator runs and does not bless.
    strict = config.replace(evaluation={"min_mask_ap": 1.0})
    local_runner.run(strict)
    runs["strict"] = Run("strict", strict, outputs.summarize_run(strict), versions(serving_dir))

    # A new span, through the Beam runner with its default Beam options (DirectRunner, one process per core):
    # trained on span 2 and compared with the last blessed model (the first run's).
    make_span(data_root, 2, seed=SPAN_SEEDS[2])
    # Through the command too: its output is checked on the Beam runner (whose workers are processes).
    on_beam = config.replace(runner="beam", beam_args=[])
    runs["span2"] = run_command("span2", on_beam, "pipeline-beam.yaml")
    return LocalPipelineRuns(config=config, pipeline_root=config.pipeline_root,
                             metadata_path=config.resolved_metadata_path, serving_dir=serving_dir,
                             data_root=data_root, runs=runs)


@pytest.fixture(scope="session")
def local_pipeline(tmp_path_factory) -> LocalPipelineRuns:
    """The local pipeline's runs (see the module docstring), once per test session."""
    return run_sequence(str(tmp_path_factory.mktemp("local_pipeline")))
