"""The export pass: each job that ended after running becomes one MLflow run on the tracking server of
TTM_MLFLOW_URI (service/queries/tracking.py holds the rows owed). The reconciler runs it in a thread of its own
(worker/reconcile.py), so a tracking server that is slow or away never holds up the jobs' own bookkeeping; the job's
end was recorded before, and nothing here changes it.

One run per job: named by the job's id, tagged with its owner (also as MLflow's user), teacher, final state and
sweep; its spec flattened to dotted params; every metric row of the job at step = epoch; the best student's files
and manifest as artifacts under best/; FINISHED, FAILED or KILLED as the job ended. An attempt claims its row
(commit), deletes the half-made run of an earlier attempt that did not finish, makes the run, then records the
outcome. A failure is retried after 30 s, doubling to an hour, MAX_ATTEMPTS times; the reconciler's log says each
attempt's outcome, and GET /v1/jobs/{id}/tracking shows the job's owner where it stands and the last error.

Every request to the server waits TTM_MLFLOW_TIMEOUT_SECONDS at most and is not retried by MLflow's client (the
pass retries later). The run directory is written by a trainer that may run a teacher's code: only regular files
named plainly by best.json are read, without following a link, and uploaded from copies.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from service.db import session_scope
from service.models import Job, utcnow
from service.queries import tracking as q
from service.settings import Settings
from service.states import CANCELLED, FAILED, SUCCEEDED

log = logging.getLogger("ttm.worker.tracking")

FIRST_RETRY_S = 30.0
MAX_RETRY_S = 3600.0
MAX_ATTEMPTS = 40  # 30 s doubling to an hour, then hourly: a day and a half of trying
BATCH = 10  # exports per pass
PASS_BUDGET_S = 60.0  # no new attempt starts past this within one pass
RUN_STATUS = {SUCCEEDED: "FINISHED", FAILED: "FAILED", CANCELLED: "KILLED"}
PARAM_VALUE_MAX = 6000  # what MLflow's server stores of a param's value
KEY = re.compile(r"[A-Za-z0-9_./ -]{1,250}")  # a param or metric key MLflow accepts (and see mlflow_key)
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")  # a file of the run directory, never a path


@dataclass
class ExportSummary:
    exported: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # to be tried again
    gave_up: list[str] = field(default_factory=list)


@dataclass
class RunRecord:
    """What one attempt sends, read from the database in its claim's transaction."""

    job_id: str
    state: str
    started_at: datetime | None
    finished_at: datetime | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: list[tuple[str, int, float, datetime]]
    run_dir: Path | None
    earlier_run_id: str | None


def retry_delay(attempt: int) -> float:
    return min(FIRST_RETRY_S * 2 ** (attempt - 1), MAX_RETRY_S)


def mlflow_client(settings: Settings) -> Any:
    """MLflow's client for the tracking server of the settings, its requests bounded (and no usage telemetry sent
    from a lab's server)."""
    from mlflow import MlflowClient
    from mlflow import environment_variables as mlflow_env

    for name, value in (("MLFLOW_HTTP_REQUEST_TIMEOUT", settings.mlflow_timeout_seconds),
                        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 0), ("MLFLOW_DISABLE_TELEMETRY", "true")):
        variable = getattr(mlflow_env, name, None)  # (an older client lacks some)
        if variable is not None:
            variable.set(value)
    return MlflowClient(tracking_uri=settings.mlflow_uri)


def export_due(settings: Settings, now: datetime | None = None, batch: int = BATCH) -> ExportSummary:
    """One pass over the due exports (none when TTM_MLFLOW_URI is unset). `now` is when the pass counts as running
    (tests move it forward to make retries due)."""
    summary = ExportSummary()
    if not settings.mlflow_uri:
        return summary
    now = now or utcnow()
    with session_scope(settings) as session:
        due = q.due(session, now, batch)
    if not due:
        return summary
    client = mlflow_client(settings)
    experiments: dict[str, str] = {}
    started = time.monotonic()
    for job_id, attempts in due:
        if time.monotonic() - started > PASS_BUDGET_S:
            break
        _attempt(settings, client, experiments, job_id, attempts, now, summary)
    log.info("mlflow: exported %s, to retry %s, gave up %s", summary.exported or "-", summary.failed or "-",
             summary.gave_up or "-")
    return summary


def export_forever(settings: Settings, stop: threading.Event, interval: float) -> None:
    """The reconciler's export thread: a pass every `interval` seconds until `stop` is set."""
    log.info("exporting finished jobs to MLflow at %s, experiment %s", settings.mlflow_shown_uri,
             settings.mlflow_experiment)
    while not stop.is_set():
        try:
            export_due(settings)
        except ImportError as err:  # the [tracking] extra is not installed: say so, and stop trying
            log.error("TTM_MLFLOW_URI is set but MLflow's client is missing (%s): pip install 'ttm[tracking]'", err)
            return
        except Exception:  # the database is away, say: each attempt's outcome is recorded as it ends
            log.exception("mlflow export pass failed")
        stop.wait(interval)


# ------------------------------------------------------------------------------------------------ one attempt
def _attempt(settings: Settings, client: Any, experiments: dict[str, str], job_id: str, attempts: int,
             now: datetime, summary: ExportSummary) -> None:
    attempt = attempts + 1
    with session_scope(settings) as session:
        found = q.job_for_export(session, job_id)
        if found is None:
            return
        job, owner, export = found
        # if this attempt never reports, the row is due again after its backoff, and not while it may still run
        retry_at = now + timedelta(seconds=max(retry_delay(attempt), 20 * settings.mlflow_timeout_seconds))
        if not q.claim(session, job_id, attempts, now, retry_at):
            return  # another exporter has it
        record = _run_record(session, job, owner.name, export.run_id)
    error: str | None = None
    run_id = None
    try:
        run_id = _export(settings, client, experiments, record, attempt)
    except Exception as err:  # noqa: BLE001 - whatever failed (network, the server's refusal) is this attempt's error
        error = f"{type(err).__name__}: {err}"[:1000]
    next_at: datetime | None = None
    gave_up = False
    if error is not None:
        if attempt >= MAX_ATTEMPTS:
            error, gave_up = f"gave up after {attempt} attempts; last: {error}", True
        else:
            next_at = now + timedelta(seconds=retry_delay(attempt))
    with session_scope(settings) as session:
        q.record_attempt(session, job_id, attempt, error=error, exported_at=utcnow() if error is None else None,
                         next_attempt_at=next_at)
    if error is None:
        log.info("job %s: exported to MLflow as run %s", job_id, run_id)
    else:
        log.warning("job %s: MLflow export attempt %d failed%s: %s", job_id, attempt,
                    "; gave up" if gave_up else f", tried again from {next_at:%H:%M:%S} UTC", error)
    (summary.exported if error is None else summary.gave_up if gave_up else summary.failed).append(job_id)


def _run_record(session: Any, job: Job, owner: str, earlier_run_id: str | None) -> RunRecord:
    tags = {"mlflow.user": owner, "ttm.owner": owner, "ttm.job": job.id, "ttm.job_name": job.name,
            "ttm.state": job.state, "ttm.teacher": _teacher(session, job.spec.get("teacher"))}
    sweep = getattr(job, "sweep_id", None) or job.spec.get("sweep")  # a sweep's trial (none before sweeps)
    if isinstance(sweep, str) and sweep:
        tags["ttm.sweep"] = sweep
    if job.note:
        tags["mlflow.note.content"] = job.note  # the run's description in MLflow's UI
    return RunRecord(job_id=job.id, state=job.state, started_at=job.started_at, finished_at=job.finished_at,
                     tags=tags, params=flatten(job.spec), metrics=q.metric_history(session, job.id),
                     run_dir=Path(job.out_dir) if job.out_dir else None, earlier_run_id=earlier_run_id)


def _teacher(session: Any, teacher: Any) -> str:
    """job:<id>, zoo:<name> (an artifact with a zoo teacher's bytes), sha256:<hex> of the artifact, or none."""
    from ttm import zoo

    if not isinstance(teacher, dict):
        return "none"
    if teacher.get("job"):
        return f"job:{teacher['job']}"
    ref = teacher.get("weights") or teacher.get("torchscript")
    if not isinstance(ref, str):
        return "none"
    sha = q.artifact_sha256(session, ref) if ref.startswith("art_") else None
    if sha is None:
        return ref
    named = [t.name for t in zoo.teachers().values() if t.sha256 == sha]
    return f"zoo:{named[0]}" if named else f"sha256:{sha}"


def flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 0.1}} → {"train.lr": "0.1"}; lists as JSON, nulls left out."""
    out: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif value is not None and mlflow_key(name):
            text = json.dumps(value) if isinstance(value, (list, bool)) else str(value)
            out[name] = text[:PARAM_VALUE_MAX]
    return out


def mlflow_key(name: str) -> bool:
    """A key MLflow's server takes: its characters, and a path that normalizes to itself (no a//b, ./a or a/..),
    since it may store one as a file. A name it refuses would fail the whole run's every attempt."""
    return bool(KEY.fullmatch(name)) and posixpath.normpath(name) == name and not name.startswith(("/", ".."))


def _ms(t: datetime | None) -> int | None:
    return int(t.timestamp() * 1000) if t is not None else None


def _export(settings: Settings, client: Any, experiments: dict[str, str], record: RunRecord, attempt: int) -> str:
    from mlflow.entities import Metric, Param

    if record.earlier_run_id:  # an earlier attempt's run, perhaps half made: a run is sent whole or not at all
        try:
            client.delete_run(record.earlier_run_id)
        except Exception as err:  # noqa: BLE001 - deleted already (or never made): nothing to undo
            log.info("job %s: earlier MLflow run %s not deleted: %s", record.job_id, record.earlier_run_id, err)
    experiment_id = _experiment_id(client, experiments, settings.mlflow_experiment)
    run = client.create_run(experiment_id, start_time=_ms(record.started_at), tags=record.tags,
                            run_name=record.job_id)
    run_id = run.info.run_id
    with session_scope(settings) as session:
        q.record_run(session, record.job_id, attempt, run_id, experiment_id)
    metrics = [Metric(name, value, int(at.timestamp() * 1000), epoch) for name, epoch, value, at in record.metrics
               if mlflow_key(name)]
    params = [Param(key, value) for key, value in record.params.items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    if record.run_dir is not None:
        tmp_root = settings.artifact_dir / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="mlflow-", dir=tmp_root) as tmp:
            for path in best_student_copies(record.run_dir, Path(tmp)):
                client.log_artifact(run_id, str(path), artifact_path="best")
    client.set_terminated(run_id, status=RUN_STATUS.get(record.state, "FAILED"), end_time=_ms(record.finished_at))
    return run_id


def _experiment_id(client: Any, known: dict[str, str], name: str) -> str:
    if name in known:
        return known[name]
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        known[name] = experiment.experiment_id
        return known[name]
    try:
        known[name] = client.create_experiment(name)
    except Exception:  # another exporter created it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        known[name] = experiment.experiment_id
    return known[name]


def best_student_copies(run_dir: Path, into: Path) -> list[Path]:
    """Copies of best.json and of the files it names (the checkpoint in each format, exports), read from regular
    files only and never through a link; none when the job has no best student."""
    manifest_copy = _copy_regular(run_dir, "best.json", into)
    if manifest_copy is None:
        return []
    try:
        files = json.loads(manifest_copy.read_text()).get("files", {})
    except (ValueError, AttributeError):
        return [manifest_copy]
    copies = []
    for info in files.values() if isinstance(files, dict) else []:
        name = info.get("name") if isinstance(info, dict) else None
        if isinstance(name, str) and PLAIN_NAME.fullmatch(name) and name != "best.json":
            copy = _copy_regular(run_dir, name, into)
            if copy is not None:
                copies.append(copy)
    return [*copies, manifest_copy]


def _copy_regular(run_dir: Path, name: str, into: Path) -> Path | None:
    try:
        fd = os.open(run_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # missing, or a link
        return None
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            return None
        target = into / name
        with open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
    return target
