"""From the spec a user sent to the spec the trainer runs: server references become paths on this machine.

- the teacher (an artifact id in `weights` / `torchscript`, or `{job: job_...}`: that job's best student) becomes
  files in the artifact store, through `service.teachers.resolve_teacher`, the function the API admits jobs with;
- a dataset `root` / `path` relative to TTM_DATA_ROOT becomes an absolute path, which must stay inside the data root
  (DESIGN decision 5), checked by `service.paths.inside_data_root`, the function the API admits jobs with; checked
  again here because the tree may have changed since (a `train/` turned into a symlink).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from service.models import Dataset
from service.paths import PathRefused, inside_data_root
from service.settings import Settings
from service.teachers import TeacherProblem, resolve_teacher
from ttm.spec import JobSpec, parse_spec


class ResolveError(ValueError):
    """The spec names something this server does not have (any more); the message says what."""


def resolve_spec(session: Session, spec_data: dict[str, Any], settings: Settings) -> JobSpec:
    spec = parse_spec(spec_data)
    if spec.teacher is not None:
        try:
            source = resolve_teacher(session, spec, None)  # the API checked ownership when it admitted the job
        except TeacherProblem as err:
            raise ResolveError(f"{err.field}: {err}") from None
        assert source is not None
        for path in (source.weights, source.torchscript):
            if path is not None and not Path(path).is_file():
                raise ResolveError(f"the teacher's file is missing from the artifact store: {path}")
        teacher = spec.teacher.model_copy(update={"job": None, "arch": source.arch, "weights": source.weights,
                                                  "torchscript": source.torchscript, "format": source.fmt})
        spec = spec.model_copy(update={"teacher": teacher})
    data = spec.dataset
    try:
        # the trainer child does not see the settings: a named dataset without a root gets the data root itself
        data.root = str(inside_data_root(data.root, "dataset.root", settings.data_root) if data.root is not None
                        else settings.data_root.resolve())
        if data.path is not None:
            data.path = str(inside_data_root(data.path, "dataset.path", settings.data_root, image_folder=True))
    except PathRefused as err:
        raise ResolveError(f"{err.field}: {err}") from None
    if data.id is not None:  # a data set sent to the server: its folder under the artifact directory
        sent = session.get(Dataset, data.id)
        if sent is None or not Path(sent.path, "train").is_dir():
            raise ResolveError(f"dataset.id: data set {data.id} is missing from the artifact store")
        data.path, data.id = sent.path, None
    return spec
