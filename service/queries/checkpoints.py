from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Checkpoint


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
