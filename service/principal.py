"""Who is asking: what the query modules and admission need to know of the caller (no FastAPI here)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """The caller: who they are and whether they see everyone's jobs."""

    id: int
    name: str
    is_admin: bool
