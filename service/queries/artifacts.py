from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.ids import new_artifact_id
from service.models import Artifact
from service.principal import Principal


def get_artifact(session: Session, who: Principal, artifact_id: str) -> Artifact | None:
    """The artifact if `who` may see it: its owner, or an admin."""
    query = select(Artifact).where(Artifact.id == artifact_id)
    if not who.is_admin:
        query = query.where(Artifact.owner_id == who.id)
    return session.scalar(query)


def find_by_sha(session: Session, owner_id: int, sha256: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.owner_id == owner_id, Artifact.sha256 == sha256))


def list_artifacts(session: Session, owner_id: int, *, sha256: str | None = None, limit: int = 100) -> list[Artifact]:
    """The owner's artifacts, newest first; with `sha256`, the one holding those bytes (if any)."""
    query = select(Artifact).where(Artifact.owner_id == owner_id)
    if sha256 is not None:
        query = query.where(Artifact.sha256 == sha256)
    return list(session.scalars(query.order_by(Artifact.created_at.desc(), Artifact.id.desc()).limit(limit)))


def blob_known(session: Session, sha256: str) -> Artifact | None:
    """Any owner's artifact with these bytes: the blob on disk was checked when it first arrived."""
    return session.scalar(select(Artifact).where(Artifact.sha256 == sha256).limit(1))


def add_artifact(session: Session, owner_id: int, *, sha256: str, size: int, fmt: str, path: str,
                 filename: str | None, tensors: dict[str, list[int]] | None, project_id: int | None = None
                 ) -> tuple[Artifact, bool]:
    """Insert, or return the owner's existing artifact with the same bytes (shared with `project_id` now, when
    given); the flag says whether it is new."""
    existing = find_by_sha(session, owner_id, sha256)
    if existing is not None:
        if project_id is not None and existing.project_id != project_id:
            existing.project_id = project_id
            session.commit()
        return existing, False
    artifact = Artifact(id=new_artifact_id(), owner_id=owner_id, sha256=sha256, size=size, format=fmt, path=path,
                        filename=filename, tensors=tensors, project_id=project_id)
    session.add(artifact)
    try:
        session.commit()
    except IntegrityError:  # the same owner uploaded the same bytes concurrently
        session.rollback()
        existing = find_by_sha(session, owner_id, sha256)
        if existing is None:
            raise
        return existing, False
    return artifact, True
