"""Benchmark: wall time of each component of the local pipeline, and the run's fixed cost apart from training.

Runs the whole pipeline on LocalDagRunner (in-process Beam, as ``make demo``) on the shapes set (``--data
shapes``, generated and converted here) or on the COCO sample (``--data coco128``: 80 classes, real photos up
to 640 pixels, read from ``--coco128`` or ``$MASKRCNN_TFX_COCO128``), then reads every execution's start and
end time from ML Metadata (the run's metadata store, not timers of ours) and prints a table: seconds per
component, its share of the run, the time spent outside the Trainer, and the Trainer split into its training
steps and its fixed cost (model building and tracing, its own evaluation, the export).

The step time comes from the Trainer's TensorBoard logs: orbit writes ``steps_per_second`` for every training
loop, and the loops after the first (which includes tracing) give the time of a step. The run's fixed cost is
everything but ``train_steps`` such steps.

``--profile`` also samples the stack of the child's main thread (where LocalDagRunner runs every component and
in-process Beam runs its bundles) every 20 ms with the standard library, and prints, for each component, its
seconds split into what they went to (:data:`PROFILE_CATEGORIES`: Beam pipeline construction, its translation,
its bundles, TensorFlow tracing, model loading and calls, TFX packaging itself for Beam workers, ...).

``--peer DIR`` runs the same pipeline, on the same data, with the code of another checkout of this repository
(e.g. a worktree of an earlier commit) in the same invocation, alternating the two (``--repeats``), and prints
the ratio of their fixed costs: absolute times drift on a shared machine, a ratio measured side by side much
less. Every run is a subprocess with ``PYTHONPATH`` set to its checkout.

    .venv/bin/python -m benchmarks.pipeline [--data shapes|coco128] [--num-images 256] [--train-steps 50] \
        [--box-metric pycocotools] [--peer /path/to/other/checkout] [--repeats 1] [--profile] [--work-dir DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO128_ENV = "MASKRCNN_TFX_COCO128"
# Length of one training loop during the benchmark: short, so that a few loops follow the first one.
SUMMARY_INTERVAL = 5
# --profile: what a sampled stack went to, the first category whose function names it holds (innermost rules
# would misplace e.g. a model call inside a Beam bundle).
PROFILE_CATEGORIES = (
    ("TFX packaging for Beam workers", ("build_ephemeral_package",)),
    ("model load", ("load_partial",)),
    ("model calls", ("_call_flat",)),
    ("TF tracing and saving", ("trace_function", "trace_and_write_v2_saved_model", "save_and_return_nodes")),
    ("Beam translation", ("to_runner_api", "from_runner_api")),
    ("Beam bundles", ("_run_bundle", "process_bundle")),
    ("Beam construction", ("apply", "expand")),
)
PROFILE_OTHER = "other"
PROFILE_INTERVAL = 0.02


class _StackSampler:
    """Samples the main thread's stack every ``interval`` seconds: (time, the set of its functions' names)."""

    def __init__(self, interval: float = PROFILE_INTERVAL):
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)
        self._main = threading.main_thread().ident
        self.samples: List[Any] = []

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            frame = sys._current_frames().get(self._main)  # pylint: disable=protected-access
            names = set()
            while frame is not None:
                names.add(frame.f_code.co_name)
                frame = frame.f_back
            self.samples.append((time.time(), names))

    def __enter__(self) -> "_StackSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()


def _category(names) -> str:
    return next((label for label, marks in PROFILE_CATEGORIES if not names.isdisjoint(marks)), PROFILE_OTHER)


def profile_by_component(samples, executions) -> Dict[str, Dict[str, float]]:
    """Each component's seconds per category: its samples (by time, within its execution) counted, scaled so
    that a component's categories add up to its time in ML Metadata."""
    profile: Dict[str, Dict[str, float]] = {}
    for execution in executions:
        start = execution.start_ms / 1000.0
        end = start + execution.seconds
        counts: Dict[str, int] = {}
        for when, names in samples:
            if start <= when <= end:
                category = _category(names)
                counts[category] = counts.get(category, 0) + 1
        total = sum(counts.values())
        if total:
            profile[execution.component_id] = {k: execution.seconds * n / total for k, n in counts.items()}
    return profile


def prepare_data(args: argparse.Namespace, work: str) -> str:
    """The converted records (and label map) of the chosen data set under ``work``; reused when present."""
    from maskrcnn_tfx.data.convert import convert_coco  # pylint: disable=g-import-not-at-top

    data = os.path.join(work, f"tfrecords-{args.data}")
    if os.path.isfile(os.path.join(data, "label_map.json")):
        return data
    if args.data == "coco128":
        source = args.coco128 or os.environ.get(COCO128_ENV, "")
        annotations = os.path.join(source, "annotations", "instances.json")
        if not os.path.isfile(annotations):
            raise SystemExit(f"--data coco128 needs the COCO sample: --coco128 DIR or ${COCO128_ENV} naming a folder "
                             f"with annotations/instances.json and images/ (got {source or 'nothing'})")
        convert_coco(annotations, os.path.join(source, "images"), data, eval_fraction=args.eval_fraction,
                     progress=False)
    else:
        from maskrcnn_tfx.data.shapes import generate_shapes  # pylint: disable=g-import-not-at-top

        annotations = generate_shapes(os.path.join(work, "shapes"), num_images=args.num_images,
                                      image_size=args.image_size, seed=0)
        convert_coco(annotations, os.path.join(work, "shapes", "coco", "images"), data,
                     eval_fraction=args.eval_fraction, progress=False)
    return data


def pipeline_config(args: argparse.Namespace, data: str, root: str) -> Dict[str, Any]:
    trainer: Dict[str, Any] = {"preset": "tiny", "train": {
        "train_steps": args.train_steps, "summary_interval": SUMMARY_INTERVAL,
        "checkpoint_interval": SUMMARY_INTERVAL * max(1, args.train_steps)}}
    if args.input_size:
        trainer["model"] = {"input_size": args.input_size}
    return {
        "pipeline_name": "maskrcnn-benchmark", "pipeline_root": root, "serving_dir": os.path.join(root, "serving"),
        "data": {"root": data},
        "trainer": trainer,
        # Lower bounds of 0, which a peer checkout of before strict bounds accepts too: a short run's model is
        # blessed and pushed when its AP is above 0, so the benchmark times every component.
        "evaluation": {"box_metric": args.box_metric, "box_num_thresholds": args.box_num_thresholds,
                       "min_mask_ap": 0.0, "min_box_ap": 0.0, "max_ap_drop": None}}


def step_seconds(model_run_uri: str) -> Optional[float]:
    """Seconds per training step from orbit's ``steps_per_second`` of every loop after the first."""
    from maskrcnn_tfx.report import training  # pylint: disable=g-import-not-at-top

    series = training.read_scalars(os.path.join(model_run_uri, "train")) if model_run_uri else {}
    rates = [rate for _, rate in series.get("steps_per_second", [])[1:] if rate > 0]
    return statistics.mean(1.0 / rate for rate in rates) if rates else None


def _product_module(name: str):
    """A module of the code on the child's PYTHONPATH: ``maskrcnn_tfx.<name>``, or ``<name>`` in a peer checkout
    from before the one namespace (its pipelines/ and trainer/ were top-level packages). Decided by the imported
    ``maskrcnn_tfx`` package's own folder: an editable install of this checkout in the same environment would
    otherwise lend the peer this checkout's subpackages."""
    namespaced = _has_subpackage(name.split(".")[0])
    return importlib.import_module(f"maskrcnn_tfx.{name}" if namespaced else name)


def _has_subpackage(package: str) -> bool:
    """Whether the ``maskrcnn_tfx`` on the child's PYTHONPATH has ``package`` in its own folder."""
    import maskrcnn_tfx  # pylint: disable=g-import-not-at-top

    return any(os.path.isdir(os.path.join(folder, package)) for folder in maskrcnn_tfx.__path__)


def _load_config(values: Dict[str, Any]):
    """The child's validated configuration, in the form the code on its PYTHONPATH reads."""
    if _has_subpackage("config"):
        return importlib.import_module("maskrcnn_tfx.config").from_dict(values)
    # A peer from before the one configuration: the trainer's fields were its overrides, the steps apart.
    trainer = dict(values["trainer"])
    older = {"preset": trainer.pop("preset"), "train_steps": trainer["train"].pop("train_steps"),
             "overrides": trainer}
    return _product_module("pipelines.config").PipelineConfig.from_dict(dict(values, trainer=older)).validate()


def run_once(config_file: str, result_file: str, profile: bool = False) -> None:
    """The child: runs the pipeline of ``config_file`` with the code on its PYTHONPATH, writes the times (with
    ``profile``, also what each component's time went to)."""
    import maskrcnn_tfx  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (selects tf_keras)

    local_runner = _product_module("pipelines.local_runner")
    outputs = _product_module("pipelines.outputs")
    with open(config_file, encoding="utf-8") as f:
        config = _load_config(json.load(f))
    started = time.time()
    with (_StackSampler() if profile else contextlib.nullcontext()) as sampler:
        local_runner.run(config)
    wall = time.time() - started
    run = outputs.summarize_run(config)  # with the blessing, the pushed model and the metrics
    assert run is not None, "the run left nothing in the metadata store"
    executions = sorted(run.executions.values(), key=lambda e: e.start_ms)
    # The Trainer's execution is the one with a model_run output (its TensorBoard logs).
    model_run = next((e.outputs["model_run"] for e in executions if e.outputs.get("model_run")), [])
    with open(result_file, "w", encoding="utf-8") as f:
        json.dump({"wall": wall, "components": [[e.component_id, e.state, e.seconds] for e in executions],
                   "step_seconds": step_seconds(model_run[0].uri if model_run else ""),
                   "blessed": run.blessed, "pushed": run.pushed, "metrics": run.metrics,
                   "profile": profile_by_component(sampler.samples, executions) if sampler else None}, f)


def run_child(code_dir: str, config: Dict[str, Any], work: str, name: str, profile: bool = False) -> Dict[str, Any]:
    shutil.rmtree(config["pipeline_root"], ignore_errors=True)  # a cached run would time nothing
    os.makedirs(config["pipeline_root"], exist_ok=True)
    config_file = os.path.join(work, f"{name}.config.json")
    result_file = os.path.join(work, f"{name}.result.json")
    with open(config_file, "w", encoding="utf-8") as f:
        json.dump(config, f)
    env = dict(os.environ, PYTHONPATH=code_dir, TF_USE_LEGACY_KERAS="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log_file = os.path.join(work, f"{name}.log")
    with open(log_file, "w", encoding="utf-8") as log:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", config_file, result_file]
                              + (["--profile"] if profile else []),
                              env=env, cwd=code_dir, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the run {name} (code of {code_dir}) failed ({done.returncode}); its log: {log_file}")
    with open(result_file, encoding="utf-8") as f:
        return json.load(f)


def summary(result: Dict[str, Any], train_steps: int) -> Dict[str, float]:
    from maskrcnn_tfx.pipelines import component_ids as ids  # pylint: disable=g-import-not-at-top

    total = sum(seconds for _, _, seconds in result["components"])
    trainer = sum(seconds for cid, _, seconds in result["components"] if cid == ids.TRAINER)
    step = result["step_seconds"]
    steps_time = train_steps * step if step is not None else float("nan")
    return {"total": total, "trainer": trainer, "outside": total - trainer, "steps": steps_time,
            "trainer_fixed": trainer - steps_time, "fixed": total - steps_time, "wall": result["wall"],
            "step": step if step is not None else float("nan")}


def print_run(label: str, result: Dict[str, Any], train_steps: int) -> Dict[str, float]:
    s = summary(result, train_steps)
    print(f"\n{label}")
    print(f"{'component':<32} {'state':<9} {'seconds':>9} {'share':>7}")
    for component_id, state, seconds in result["components"]:
        print(f"{component_id:<32} {state:<9} {seconds:9.1f} {100 * seconds / max(s['total'], 1e-9):6.1f}%")
    print(f"{'sum of components':<42} {s['total']:9.1f}")
    print(f"{'outside training (all but Trainer)':<42} {s['outside']:9.1f} "
          f"{100 * s['outside'] / max(s['total'], 1e-9):6.1f}%")
    print(f"{'outside training / Trainer':<42} {s['outside'] / max(s['trainer'], 1e-9):9.2f}x")
    print(f"{'Trainer: seconds per step (loops 2+)':<42} {s['step']:9.3f}")
    print(f"{'Trainer: its {} steps'.format(train_steps):<42} {s['steps']:9.1f}")
    print(f"{'Trainer: fixed cost (all but its steps)':<42} {s['trainer_fixed']:9.1f}")
    print(f"{'run fixed cost (all but training steps)':<42} {s['fixed']:9.1f}")
    print(f"{'wall time (incl. orchestration)':<42} {s['wall']:9.1f}")
    for component_id, seconds_by_category in (result.get("profile") or {}).items():
        if sum(seconds_by_category.values()) >= 0.5:
            print(f"  {component_id}: " + ", ".join(f"{category} {seconds:.1f}" for category, seconds in sorted(
                seconds_by_category.items(), key=lambda item: -item[1])))
    metrics = result.get("metrics") or {}
    print(f"blessed: {result.get('blessed')}, pushed: {result.get('pushed')}, "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items()) if k in ("mask_ap", "box_ap")))
    return s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("shapes", "coco128"), default="shapes")
    parser.add_argument("--coco128", default="", help=f"the COCO sample's folder (default ${COCO128_ENV})")
    parser.add_argument("--num-images", type=int, default=256, help="shapes images to generate")
    parser.add_argument("--image-size", type=int, default=128, help="shapes image size")
    parser.add_argument("--eval-fraction", type=float, default=0.125)
    parser.add_argument("--input-size", type=int, default=0,
                        help="the model's input size (default: the tiny preset's 128 on shapes, 256 on coco128)")
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--box-metric", choices=("pycocotools", "tfma"), default="pycocotools",
                        help="the Evaluator's box AP (stated explicitly: it dominates the Evaluator with 'tfma')")
    parser.add_argument("--box-num-thresholds", type=int, default=200)
    parser.add_argument("--peer", default="", help="another checkout of this repository to run side by side")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each code (alternating with the peer)")
    parser.add_argument("--profile", action="store_true",
                        help="sample the run's stack and print what each component's time went to")
    parser.add_argument("--work-dir", help="keep the data and pipelines here (default: a temporary folder)")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:  # pylint: disable=protected-access
        run_once(*args._child, profile=args.profile)  # pylint: disable=protected-access
        return 0
    if args.data == "coco128" and not args.input_size:
        args.input_size = 256

    import maskrcnn_tfx  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (selects tf_keras)

    work = args.work_dir or tempfile.mkdtemp(prefix="maskrcnn-pipeline-bench-")
    os.makedirs(work, exist_ok=True)
    data = prepare_data(args, work)
    codes = [("this checkout", REPO)] + ([("peer " + os.path.abspath(args.peer), os.path.abspath(args.peer))]
                                         if args.peer else [])
    results: Dict[str, List[Dict[str, float]]] = {label: [] for label, _ in codes}
    for repeat in range(args.repeats):
        # A B, then B A, ...: neither code always runs first on a warm or cold machine.
        order = codes if repeat % 2 == 0 else codes[::-1]
        for label, code_dir in order:
            name = f"{'peer' if label.startswith('peer') else 'this'}-{repeat}"
            config = pipeline_config(args, data, os.path.join(work, f"pipeline-{name}"))
            result = run_child(code_dir, config, work, name, profile=args.profile)
            description = (f"{label} ({code_dir}), run {repeat + 1}: {args.data}, {args.train_steps} train steps, "
                           f"box metric {args.box_metric}, {os.cpu_count()} CPU cores (times from ML Metadata)")
            results[label].append(print_run(description, result, args.train_steps))

    print(f"\nSummary ({args.data}; median over {args.repeats} run(s) of each; seconds)")
    header = f"{'':<16}" + "".join(f"{k:>12}" for k in ("total", "trainer", "outside", "steps", "trainer_fix",
                                                          "run_fixed"))
    print(header)
    medians = {}
    for label, _ in codes:
        m = {k: statistics.median(r[k] for r in results[label]) for k in results[label][0]}
        medians[label] = m
        print(f"{label[:16]:<16}" + "".join(f"{m[k]:12.1f}" for k in ("total", "trainer", "outside", "steps",
                                                                      "trainer_fixed", "fixed")))
        print(f"{'':<16}outside / Trainer {m['outside'] / max(m['trainer'], 1e-9):.2f}x")
    if args.peer:
        ours, peer = medians[codes[0][0]], medians[codes[1][0]]
        print(f"run fixed cost, this / peer: {ours['fixed'] / max(peer['fixed'], 1e-9):.2f}x "
              f"(Trainer's fixed cost {ours['trainer_fixed'] / max(peer['trainer_fixed'], 1e-9):.2f}x, "
              f"outside the Trainer {ours['outside'] / max(peer['outside'], 1e-9):.2f}x)")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"work dir: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
