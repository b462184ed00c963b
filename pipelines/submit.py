"""Submits the compiled pipeline JSON to a Kubeflow Pipelines endpoint or to Vertex AI Pipelines, once or on a
schedule, and checks beforehand that the cluster can read every path the pipeline names.

- Kubeflow Pipelines (``kubeflow.kfp.host``): ``kfp.Client`` (KFP v2 API). A one-off run, or a recurring run
  on a cron schedule or an interval, in an experiment (default: the pipeline's name), with a start time and
  at most ``schedule.max_concurrency`` runs at once. Credentials: a bearer token file, a session cookie file,
  an IAP OAuth client id, a CA bundle.
- Vertex AI (``kubeflow.vertex.project``): ``google.cloud.aiplatform.PipelineJob`` for a one-off run, or its
  ``create_schedule`` (a pipeline job schedule) for a recurring one; the runs act as
  ``vertex.service_account``. Credentials: Application Default Credentials, or an OAuth access token file.

Either prints the run's or schedule's id and the URL to watch it (:class:`Submission`). Nothing here is
imported until a submission is asked for, so ``--help`` and compiling stay light.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import os
import re
import tempfile
from typing import List

from maskrcnn_tfx.config.schema import PipelineConfig
from maskrcnn_tfx.config.submission import KUBEFLOW, VERTEX, interval_seconds, split_cron, target

# https://console.cloud.google.com pages of a Vertex AI run and schedule.
_VERTEX_CONSOLE = "https://console.cloud.google.com/vertex-ai/locations/{region}/pipelines/{kind}/{id}?project={project}"


class SubmissionError(RuntimeError):
    """The endpoint refused the submission, or could not be reached; the message says which request failed."""


@dataclasses.dataclass
class Submission:
    """What was created: a run or a recurring run / schedule, its id and the page that shows it."""

    target: str  # kubeflow | vertex
    kind: str  # run | schedule
    id: str
    url: str
    name: str = ""  # Vertex: the full resource name
    experiment_id: str = ""  # Kubeflow

    def lines(self) -> List[str]:
        what = {(KUBEFLOW, "run"): "Kubeflow Pipelines run", (KUBEFLOW, "schedule"): "Kubeflow Pipelines recurring run",
                (VERTEX, "run"): "Vertex AI pipeline job", (VERTEX, "schedule"): "Vertex AI pipeline job schedule"}
        out = [f"{what[(self.target, self.kind)]}: {self.id}"]
        if self.name and self.name != self.id:
            out.append(f"  resource: {self.name}")
        out.append(f"  watch it at: {self.url}")
        return out


def kfp_cron(cron: str) -> str:
    """KFP's scheduler (robfig/cron) reads 6 fields with seconds first: a 5-field expression gains ``0``."""
    zone, fields = split_cron(cron)
    if len(fields) == 5:
        fields = ["0"] + fields
    return " ".join(([zone] if zone else []) + fields)


def run_name(config: PipelineConfig) -> str:
    if config.kubeflow.run_name:
        return config.kubeflow.run_name
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{config.pipeline_name}-{stamp}"


def _read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


# ---------------------------------------------------------------------------------------------------------
# Submission


def submit(config: PipelineConfig, pipeline_json: str) -> Submission:
    """Submits the compiled pipeline ``pipeline_json`` as ``config`` says (:func:`target` must not be "")."""
    where = target(config)
    if where == KUBEFLOW:
        return submit_kubeflow(config, pipeline_json)
    if where == VERTEX:
        return submit_vertex(config, pipeline_json)
    raise ValueError("nothing to submit to: set kubeflow.kfp.host or kubeflow.vertex.project")


def submit_kubeflow(config: PipelineConfig, pipeline_json: str) -> Submission:
    """A run or recurring run on the KFP endpoint ``kubeflow.kfp.host`` (KFP v2 API, ``kfp.Client``)."""
    import kfp  # pylint: disable=g-import-not-at-top
    import kfp_server_api  # pylint: disable=g-import-not-at-top
    import urllib3  # pylint: disable=g-import-not-at-top

    k = config.kubeflow
    with open(pipeline_json, encoding="utf-8") as f:
        # TFX writes a Vertex PipelineJob (pipelineSpec + runtimeConfig); KFP takes the PipelineSpec itself.
        pipeline_spec = json.load(f)["pipelineSpec"]
    name = run_name(config)
    chatter = io.StringIO()  # kfp.Client prints its own links; ours follow, once
    try:
        with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(chatter):
            # kfp.Client reads packages by extension only: .yaml (JSON is YAML).
            package = os.path.join(folder, "pipeline.yaml")
            with open(package, "w", encoding="utf-8") as f:
                json.dump(pipeline_spec, f)
            client = kfp.Client(
                host=k.kfp.host, ui_host=k.kfp.ui_host or None, namespace=k.kfp.namespace or "kubeflow",
                existing_token=_read_secret(k.kfp.token_file) if k.kfp.token_file else None,
                cookies=_read_secret(k.kfp.cookies_file) if k.kfp.cookies_file else None,
                client_id=k.kfp.client_id or None, ssl_ca_cert=k.kfp.ssl_ca_cert or None,
                verify_ssl=None if k.kfp.verify_ssl else False)
            experiment = client.create_experiment(name=k.kfp.experiment or config.pipeline_name,
                                                  namespace=k.kfp.namespace or None)
            common = dict(experiment_id=experiment.experiment_id, job_name=name, pipeline_package_path=package,
                          pipeline_root=config.pipeline_root, service_account=k.kfp.service_account or None)
            s = k.schedule
            if s.cron or s.every:
                every = interval_seconds(s.every) if s.every else None
                # int64 fields are strings in the API's JSON (kfp_server_api types them 'str').
                response = client.create_recurring_run(
                    **common, cron_expression=kfp_cron(s.cron) if s.cron else None,
                    interval_second=str(every) if every else None, start_time=s.start_time or None,
                    end_time=s.end_time or None, max_concurrency=str(s.max_concurrency), no_catchup=True)
                kind, ident, page = "schedule", response.recurring_run_id, "recurringrun"
            else:
                response = client.run_pipeline(**common)
                kind, ident, page = "run", response.run_id, "runs"
    except kfp_server_api.ApiException as e:
        raise SubmissionError(f"Kubeflow Pipelines at {k.kfp.host} refused the request: HTTP {e.status} "
                              f"{e.reason}: {(e.body or b'')[:500]!r}") from None
    except (OSError, TimeoutError, urllib3.exceptions.HTTPError) as e:
        raise SubmissionError(f"cannot reach Kubeflow Pipelines at {k.kfp.host}: {e}") from None
    ui = (k.kfp.ui_host or k.kfp.host).rstrip("/")
    return Submission(KUBEFLOW, kind, ident, f"{ui}/#/{page}/details/{ident}",
                      experiment_id=experiment.experiment_id)


def submit_vertex(config: PipelineConfig, pipeline_json: str) -> Submission:
    """A pipeline job or pipeline job schedule on Vertex AI (``google.cloud.aiplatform``, over REST)."""
    import requests  # pylint: disable=g-import-not-at-top
    from google.api_core import exceptions as api_exceptions  # pylint: disable=g-import-not-at-top
    from google.auth import exceptions as google_auth_exceptions  # pylint: disable=g-import-not-at-top
    from google.cloud import aiplatform  # pylint: disable=g-import-not-at-top

    k = config.kubeflow
    v = k.vertex
    credentials = None
    if v.token_file:
        from google.oauth2 import credentials as oauth2  # pylint: disable=g-import-not-at-top
        credentials = oauth2.Credentials(token=_read_secret(v.token_file))
    from google.cloud.aiplatform import initializer  # pylint: disable=g-import-not-at-top

    # aiplatform's clients read their endpoint and transport from its global settings (aiplatform.init).
    initializer.global_config.init(project=v.project, location=v.region, credentials=credentials,
                                   api_endpoint=v.api_endpoint or None, api_transport="rest")
    name = run_name(config)
    job_id = re.sub(r"[^-a-z0-9]+", "-", name.lower()).strip("-")[:128]
    try:
        job = aiplatform.PipelineJob(display_name=name, template_path=pipeline_json, job_id=job_id,
                                     pipeline_root=config.pipeline_root, labels=dict(v.labels) or None,
                                     project=v.project, location=v.region, credentials=credentials)
        s = k.schedule
        if s.cron:
            schedule = job.create_schedule(
                cron=s.cron, display_name=name, start_time=s.start_time or None, end_time=s.end_time or None,
                max_concurrent_run_count=s.max_concurrency, service_account=v.service_account or None,
                network=v.network or None)
            resource = schedule.resource_name
            kind, page = "schedule", "schedules"
        else:
            job.submit(service_account=v.service_account or None, network=v.network or None)
            resource = job.resource_name
            kind, page = "run", "runs"
    except api_exceptions.GoogleAPICallError as e:
        raise SubmissionError(f"Vertex AI ({v.project}, {v.region}) refused the request: {e}") from None
    except google_auth_exceptions.DefaultCredentialsError as e:
        raise SubmissionError(f"no Google credentials for Vertex AI: {e} (run `gcloud auth application-default "
                              f"login`, set GOOGLE_APPLICATION_CREDENTIALS, or give --vertex-token-file)") from None
    except requests.exceptions.RequestException as e:
        raise SubmissionError(f"cannot reach Vertex AI ({v.api_endpoint or v.region}): {e}") from None
    ident = resource.rsplit("/", 1)[-1]
    url = _VERTEX_CONSOLE.format(region=v.region, kind=page, id=ident, project=v.project)
    return Submission(VERTEX, kind, ident, url, name=resource)


# ---------------------------------------------------------------------------------------------------------
# Command-line options of `maskrcnn-tfx run --runner kubeflow` (the kubeflow section of the configuration)


def add_arguments(parser) -> None:
    group = parser.add_argument_group(
        "kubeflow / vertex submission", "With --kfp-host or --vertex-project the compiled pipeline is submitted, "
        "once or on a schedule; the pipeline root, data, serving dir and trainer files must then be gs:// or s3:// "
        "URIs or lie under a --mounted-path.")
    add = group.add_argument
    add("--mounted-path", action="append", dest="mounted_paths", metavar="FOLDER",
        help="a folder every pod mounts at the same path (PVC, NFS); local paths under it are accepted (repeatable)")
    add("--run-name", help="the run's (or schedule's) display name (default: PIPELINE_NAME-UTC time)")
    add("--schedule", metavar="CRON", help="a recurring run on this cron schedule, e.g. \"0 3 * * 1\" (UTC)")
    add("--every", metavar="INTERVAL", help="kubeflow: a recurring run every 30m, 6h, 1d, 1w, ...")
    add("--start-time", help="the schedule's first run no earlier than this RFC 3339 time (default: now)")
    add("--end-time", help="no run of the schedule after this RFC 3339 time")
    add("--max-concurrency", type=int, help="runs of the schedule that may run at once (default 1)")
    add("--kfp-host", metavar="URL", help="submit to this Kubeflow Pipelines endpoint (KFP v2 API)")
    add("--kfp-ui-host", metavar="URL", help="the KFP UI that printed links point to (default: --kfp-host)")
    add("--kfp-namespace", help="the profile namespace of a multi-user Kubeflow")
    add("--experiment", help="kubeflow: the experiment of the run (default: the pipeline name)")
    add("--kfp-service-account", help="kubeflow: the Kubernetes service account the run uses")
    add("--kfp-token-file", metavar="FILE", help="kubeflow: a file holding a bearer token for the endpoint")
    add("--kfp-cookies-file", metavar="FILE", help="kubeflow: a file holding the Cookie header (e.g. a Dex "
                                                   "authservice_session=...)")
    add("--kfp-client-id", help="kubeflow behind Google IAP: the OAuth client id")
    add("--kfp-ssl-ca-cert", metavar="FILE", help="kubeflow: the CA bundle of the endpoint's certificate")
    add("--kfp-insecure", action="store_true", help="kubeflow: do not verify the endpoint's TLS certificate")
    add("--vertex-project", help="submit to Vertex AI Pipelines in this Google Cloud project")
    add("--vertex-region", help="the Vertex AI region (default us-central1)")
    add("--vertex-service-account", help="vertex: the service account the pipeline's steps act as")
    add("--vertex-network", help="vertex: the VPC network to peer with (projects/NUMBER/global/networks/NAME)")
    add("--vertex-token-file", metavar="FILE", help="vertex: an OAuth access token file (default: Application "
                                                    "Default Credentials)")
    add("--vertex-api-endpoint", help="vertex: another API endpoint (e.g. Private Service Connect)")


def config_changes(args) -> dict:
    """The kubeflow section's values given on the command line (None: not given)."""
    values = {
        "mounted_paths": args.mounted_paths, "run_name": args.run_name,
        "schedule": {"cron": args.schedule, "every": args.every, "start_time": args.start_time,
                     "end_time": args.end_time, "max_concurrency": args.max_concurrency},
        "kfp": {"host": args.kfp_host, "ui_host": args.kfp_ui_host, "namespace": args.kfp_namespace,
                "experiment": args.experiment, "service_account": args.kfp_service_account,
                "token_file": args.kfp_token_file, "cookies_file": args.kfp_cookies_file,
                "client_id": args.kfp_client_id, "ssl_ca_cert": args.kfp_ssl_ca_cert,
                "verify_ssl": False if args.kfp_insecure else None},
        "vertex": {"project": args.vertex_project, "region": args.vertex_region,
                   "service_account": args.vertex_service_account, "network": args.vertex_network,
                   "token_file": args.vertex_token_file, "api_endpoint": args.vertex_api_endpoint},
    }

    def given(d):
        return {k: given(v) if isinstance(v, dict) else v for k, v in d.items()
                if v is not None and (not isinstance(v, dict) or given(v))}
    return given(values)
