"""From the spec a user sent to the spec the trainer runs: server references become paths on this machine.

- a teacher's `weights` / `torchscript` given as an artifact id (art_...) → that artifact's file in the store;
- a teacher given as `{job: job_...}` → that job's best student (safetensors) and its architecture;
- a dataset `root` / `path` relative to TTM_DATA_ROOT → an absolute path, which must stay inside the data root.

Anything else that names a server path is refused (DESIGN decision 5: datasets are named or under the admin's data
root, never arbitrary server paths).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Artifact, Checkpoint, Job
from service.settings import Settings
from ttm.spec import JobSpec, parse_spec


class ResolveError(ValueError):
    """The spec names something this server does not have; the message says what."""


def resolve_spec(session: Session, spec_data: dict[str, Any], settings: Settings) -> JobSpec:
    spec = parse_spec(spec_data)
    if spec.teacher is not None:
        spec = spec.model_copy(update={"teacher": _resolve_teacher(session, spec, settings)})
    ds = spec.dataset
    ds.root = _under_data_root(ds.root, settings, "dataset.root")
    ds.path = _under_data_root(ds.path, settings, "dataset.path")
    return spec


def _resolve_teacher(session: Session, spec: JobSpec, settings: Settings):
    t = spec.teacher
    assert t is not None
    if t.job:
        ckpt = session.scalars(select(Checkpoint).where(Checkpoint.job_id == t.job, Checkpoint.which == "best",
                                                        Checkpoint.format == "safetensors")).one_or_none()
        if ckpt is None:
            state = session.scalar(select(Job.state).where(Job.id == t.job))
            if state is None:
                raise ResolveError(f"teacher.job: there is no job {t.job}")
            raise ResolveError(f"teacher.job: job {t.job} ({state}) has no best checkpoint yet; "
                               "a teacher job must have finished at least one epoch")
        return t.model_copy(update={"job": None, "arch": ckpt.manifest["arch"], "weights": ckpt.path,
                                    "format": "safetensors"})
    update = {}
    for field in ("weights", "torchscript"):
        ref = getattr(t, field)
        if ref is not None:
            update[field] = _artifact_path(session, ref, settings, f"teacher.{field}")
    return t.model_copy(update=update)


def _artifact_path(session: Session, ref: str, settings: Settings, field: str) -> str:
    if ref.startswith("art_"):
        art = session.get(Artifact, ref)
        if art is None:
            raise ResolveError(f"{field}: there is no artifact {ref}; upload it first (POST /v1/artifacts)")
        path = Path(art.path)
        path = path if path.is_absolute() else settings.artifact_dir / path
    else:  # a path can only be one the server wrote itself, e.g. a run directory in the artifact store
        path = Path(ref)
        if not _inside(path, settings.artifact_dir):
            raise ResolveError(f"{field}: {ref!r} is a server path; give an artifact id (art_...) instead")
    if not path.is_file():
        raise ResolveError(f"{field}: the file of {ref} is missing from the artifact store ({path})")
    return str(path)


def _under_data_root(value: str | None, settings: Settings, field: str) -> str | None:
    if value is None:
        return None
    root = settings.data_root.resolve()
    path = Path(value)
    path = (path if path.is_absolute() else root / path).resolve()
    if not _inside(path, root):
        raise ResolveError(f"{field}: {value!r} lies outside the server's data root {root} (TTM_DATA_ROOT)")
    return str(path)


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())
