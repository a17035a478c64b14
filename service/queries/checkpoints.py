from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Checkpoint, Job
from service.states import FINAL_STATES, SUCCEEDED
from ttm.registry import EXPORT_FORMATS
from ttm.spec import OutputSpec


def list_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                                .order_by(Checkpoint.which, Checkpoint.format)))


def get_checkpoint(session: Session, job_id: str, which: str, fmt: str) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.which == which,
                                                   Checkpoint.format == fmt))


def best_weights(session: Session, job_id: str) -> Checkpoint | None:
    """The best checkpoint as loadable weights: safetensors if written, else the .pt file."""
    rows = {c.format: c for c in session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id,
                                                                         Checkpoint.which == "best"))}
    return rows.get("safetensors") or rows.get("pt")


def export_refusal(session: Session, job_id: str, fmt: str) -> str | None:
    """Why the job's `fmt` export was refused when it was made (its check or its exporter said no), from best.json's
    "exports" as the worker recorded it; None when it was not refused. The same student is refused again, so a
    refused export is never made again."""
    best = get_checkpoint(session, job_id, "best", "pt")
    made = ((best.manifest or {}) if best is not None else {}).get("exports", {}).get(fmt)
    if made is not None and not made.get("offered"):
        return str(made.get("reason") or "no reason recorded")
    return None


def why_missing(session: Session, job: Job, which: str, fmt: str) -> tuple[str, str]:
    """(code, message) for a checkpoint the job does not have: what happened and what to do. Exports (onnx, pt2,
    torchscript) are made where the spec asked for them, or on request once the job has succeeded (a download of the
    best student in that format); they are offered only when their check passed; best.json says how each went."""
    if fmt not in EXPORT_FORMATS:
        return "checkpoint_not_ready", (f"job {job.id} has no {which} checkpoint in format {fmt} yet (state: "
                                        f"{job.state}); checkpoints appear after the first epoch")
    if which != "best":
        return "export_best_only", f"exports are made of the best student only: ask for job {job.id}'s best {fmt}"
    refused = export_refusal(session, job.id, fmt)
    if refused is not None:
        return "export_refused", f"job {job.id}'s {fmt} export was refused when it was made: {refused}"
    if job.state == SUCCEEDED and get_checkpoint(session, job.id, "best", "pt") is not None:
        return "export_not_made", (f"job {job.id} has no {fmt} export yet: download it (GET /v1/jobs/{job.id}/"
                                   f"checkpoints/best?format={fmt}, or ttm download {job.id} --format {fmt}) and "
                                   "the server makes it")
    if job.state in FINAL_STATES:
        return "export_missing", (f"job {job.id} ended ({job.state}) without a {fmt} export: exports are made of "
                                  "the best student of a succeeded job, and this one has none")
    if fmt not in OutputSpec.model_validate((job.spec or {}).get("output") or {}).formats:
        return "export_not_requested", (f"job {job.id} was not asked for {fmt}: once it has succeeded, downloading "
                                        f"its best {fmt} makes the export (state: {job.state})")
    return "checkpoint_not_ready", (f"job {job.id}'s {fmt} export is made of the best student when training ends "
                                    f"(state: {job.state})")
