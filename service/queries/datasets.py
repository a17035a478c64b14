"""Queries on the data sets users sent (service/datasets.py unpacks them)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Dataset
from service.principal import Principal


def get_dataset(session: Session, who: Principal, dataset_id: str) -> Dataset | None:
    """The data set if `who` may use it: its owner, or an admin; None otherwise, as for a missing one."""
    query = select(Dataset).where(Dataset.id == dataset_id)
    if not who.is_admin:
        query = query.where(Dataset.owner_id == who.id)
    return session.scalar(query)


def by_sha256(session: Session, owner_id: int, sha256: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.owner_id == owner_id, Dataset.sha256 == sha256))


def list_datasets(session: Session, who: Principal) -> list[Dataset]:
    """The caller's data sets, newest first."""
    return list(session.scalars(select(Dataset).where(Dataset.owner_id == who.id)
                                .order_by(Dataset.created_at.desc()).limit(1000)))
