"""What a Kubeflow Pipelines or Vertex AI run can read, and whether its submission options are well formed.

Part of the configuration's validation (:mod:`maskrcnn_tfx.config.validation` calls :func:`problems` for the
kubeflow runner), so a cluster run fails on this machine, before compiling, rather than in a pod. The
schedule's syntax (cron, intervals, RFC 3339 times) is read here and by the submission
(maskrcnn_tfx/pipelines/submit.py).
"""
from __future__ import annotations

import datetime
import os
import re
from typing import List, Optional

from maskrcnn_tfx.config.schema import PipelineConfig
from maskrcnn_tfx.files import is_remote

KUBEFLOW = "kubeflow"
VERTEX = "vertex"
_INTERVAL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TZ_PREFIX = re.compile(r"^((?:CRON_)?TZ=\S+)\s+")


def target(config: PipelineConfig) -> str:
    """Where ``config`` is submitted: ``kubeflow``, ``vertex``, or "" (compile only)."""
    if config.kubeflow.kfp.host:
        return KUBEFLOW
    if config.kubeflow.vertex.project:
        return VERTEX
    return ""



def problems(config: PipelineConfig) -> List[str]:
    """Every reason ``config`` (paths already absolute) cannot be compiled for, or submitted to, a cluster."""
    k = config.kubeflow
    problems: List[str] = []
    where = target(config)
    if k.kfp.host and k.vertex.project:
        problems.append("kubeflow.kfp.host and kubeflow.vertex.project are both set: submit to one of "
                        "Kubeflow Pipelines (--kfp-host) or Vertex AI (--vertex-project)")
    mounted = []
    for path in k.mounted_paths:
        if not os.path.isabs(path):
            problems.append(f"kubeflow.mounted_paths: {path!r} must be an absolute path, the same in every pod")
        else:
            mounted.append(os.path.normpath(path))

    paths = [("pipeline_root", config.pipeline_root), ("data.root", config.data.root),
             ("serving_dir", config.resolved_serving_dir), ("data.label_map_path", config.label_map_path),
             ("data.schema_path", config.data.schema_path)]
    # The preset was read here, into the trainer section; the checkpoint is read by the Trainer's pod.
    paths.append(("trainer.train.init_checkpoint", config.trainer.train.init_checkpoint))
    for field, path in paths:
        if path:
            problem = _path_problem(field, path, mounted, vertex=where == VERTEX)
            if problem:
                problems.append(problem)

    s = k.schedule
    if s.cron and s.every:
        problems.append(f"kubeflow.schedule: give a cron expression (--schedule) or an interval (--every), "
                        f"not both ({s.cron!r}, {s.every!r})")
    if (s.cron or s.every) and not where:
        problems.append("a schedule (--schedule / --every) is submitted to an endpoint: add --kfp-host URL or "
                        "--vertex-project PROJECT")
    if s.cron:
        problem = cron_problem(s.cron, where)
        if problem:
            problems.append(problem)
    if s.every:
        if where == VERTEX:
            problems.append(f"Vertex AI schedules take a cron expression, not an interval: replace --every "
                            f"{s.every} by --schedule, e.g. --schedule \"0 3 * * 1\" for every Monday 03:00 UTC")
        elif interval_seconds(s.every) is None:
            problems.append(f"kubeflow.schedule.every: {s.every!r} is not an interval such as 30m, 6h, 1d, 1w "
                            f"or a number of seconds")
    for name in ("start_time", "end_time"):
        value = getattr(s, name)
        if value and parse_time(value) is None:
            problems.append(f"kubeflow.schedule.{name}: {value!r} is not an RFC 3339 time with its zone, "
                            f"e.g. 2026-01-05T03:00:00Z")
    if s.start_time and s.end_time and parse_time(s.start_time) and parse_time(s.end_time) and \
            parse_time(s.end_time) <= parse_time(s.start_time):
        problems.append(f"kubeflow.schedule.end_time {s.end_time} is not after start_time {s.start_time}")
    if s.max_concurrency < 1:
        problems.append(f"kubeflow.schedule.max_concurrency must be >= 1, not {s.max_concurrency}")

    if where == KUBEFLOW:
        if not re.match(r"^https?://[^/\s]+", k.kfp.host):
            problems.append(f"kubeflow.kfp.host must be an http:// or https:// URL, not {k.kfp.host!r}")
        for name in ("token_file", "cookies_file", "ssl_ca_cert"):
            value = getattr(k.kfp, name)
            if value and not os.path.isfile(value):
                problems.append(f"kubeflow.kfp.{name}: {value} is not a file")
        if k.kfp.token_file and k.kfp.client_id:
            problems.append("kubeflow.kfp: give a token file or an IAP client id, not both")
    if where == VERTEX:
        if not re.match(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$|^\d+$", k.vertex.project):
            problems.append(f"kubeflow.vertex.project: {k.vertex.project!r} is not a Google Cloud project id")
        if not re.match(r"^[a-z]+-[a-z]+\d+$", k.vertex.region):
            problems.append(f"kubeflow.vertex.region: {k.vertex.region!r} is not a region such as us-central1")
        if k.vertex.token_file and not os.path.isfile(k.vertex.token_file):
            problems.append(f"kubeflow.vertex.token_file: {k.vertex.token_file} is not a file")
    return problems



def _path_problem(field: str, path: str, mounted: List[str], *, vertex: bool) -> Optional[str]:
    if vertex:
        if path.startswith("gs://"):
            return None
        return (f"{field} {path} is not in Cloud Storage: Vertex AI's pipeline steps run on Google's machines and "
                f"read only gs:// paths; copy it to a bucket and give a gs://BUCKET/... URI")
    if is_remote(path):
        return None
    real = os.path.normpath(path)
    if any(real == m or real.startswith(m.rstrip(os.sep) + os.sep) for m in mounted):
        return None
    return (f"{field} {path} is on this machine's disk, which the pipeline's pods cannot read: give a "
            f"gs:// or s3:// URI, or a path on a volume every pod mounts at the same place, declared with "
            f"--mounted-path FOLDER (kubeflow.mounted_paths)")



def interval_seconds(every: str) -> Optional[int]:
    """``30m``, ``6h``, ``1d``, ``1w`` or plain seconds as seconds; None when malformed or not positive."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", every)
    if not match or int(match.group(1)) <= 0:
        return None
    return int(match.group(1)) * _INTERVAL_UNITS[match.group(2)]



def split_cron(cron: str):
    match = _TZ_PREFIX.match(cron.strip())
    zone = match.group(1) if match else ""
    fields = cron.strip()[match.end():].split() if match else cron.split()
    return zone, fields



def cron_problem(cron: str, where: str) -> Optional[str]:
    _, fields = split_cron(cron)
    allowed = (5, 6) if where == KUBEFLOW else (5,)
    if len(fields) not in allowed or not all(re.fullmatch(r"[\d*?/,\-A-Za-z#LW]+", f) for f in fields):
        shape = "5 fields (minute hour day-of-month month day-of-week)" + (
            ", or Kubeflow's 6 with seconds first" if where == KUBEFLOW else "")
        return f"kubeflow.schedule.cron: {cron!r} is not a cron expression of {shape}, e.g. \"0 3 * * 1\""
    return None



def parse_time(value: str) -> Optional[datetime.datetime]:
    try:
        parsed = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
