"""Projects: lab members who share teachers. An artifact or a job in a project may be named as a teacher by every
member; everything else about it stays its owner's (and the admins')."""
from __future__ import annotations

import re

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from service.models import Project, ProjectMember, User

MAX_NAME = 100
NAME_PATTERN = r"^[A-Za-z0-9._-]+$"  # what create_project accepts; a query naming a project is held to it too


class ProjectError(ValueError):
    pass


def visible_teacher(model, user_id: int) -> ColumnElement[bool]:  # noqa: ANN001  # Artifact or Job
    """Rows of `model` the user may name as a teacher: their own, or in a project they belong to."""
    projects = select(ProjectMember.project_id).where(ProjectMember.user_id == user_id)
    return or_(model.owner_id == user_id, model.project_id.in_(projects))


def project_id_for(session: Session, user_id: int, name: str) -> int:
    """The id of the project `name` if the user belongs to it; ProjectError saying what is wrong otherwise (the same
    words for a project that does not exist and one the user is not in: names are not disclosed)."""
    found = session.scalar(select(Project.id).join(ProjectMember, ProjectMember.project_id == Project.id)
                           .where(Project.name == name, ProjectMember.user_id == user_id))
    if found is None:
        raise ProjectError(f"you are not a member of a project {name!r}; an admin adds members with "
                           f"`ttm admin project add {name} USER`")
    return found


def projects_of(session: Session, user_id: int) -> list[str]:
    return list(session.scalars(select(Project.name).join(ProjectMember, ProjectMember.project_id == Project.id)
                                .where(ProjectMember.user_id == user_id).order_by(Project.name)))


def create_project(session: Session, name: str) -> Project:
    if not name or len(name) > MAX_NAME or not re.fullmatch(NAME_PATTERN, name):
        raise ProjectError(f"a project name is 1-{MAX_NAME} ASCII letters, digits, '-', '_' or '.', not {name!r}")
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise ProjectError(f"project {name!r} exists already")
    project = Project(name=name)
    session.add(project)
    session.flush()
    return project


def set_members(session: Session, name: str, user_names: list[str], *, add: bool) -> list[str]:
    """Add (or remove) users to (from) a project; returns its members afterwards."""
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise ProjectError(f"no project {name!r} (`ttm admin project list`)")
    for user_name in user_names:
        user_id = session.scalar(select(User.id).where(User.name == user_name))
        if user_id is None:
            raise ProjectError(f"no user {user_name!r} (`ttm admin user list`)")
        member = session.get(ProjectMember, (project.id, user_id))
        if add and member is None:
            session.add(ProjectMember(project_id=project.id, user_id=user_id))
        elif not add and member is not None:
            session.delete(member)
    session.flush()
    return members(session, project.id)


def members(session: Session, project_id: int) -> list[str]:
    return list(session.scalars(select(User.name).join(ProjectMember, ProjectMember.user_id == User.id)
                                .where(ProjectMember.project_id == project_id).order_by(User.name)))


def list_projects(session: Session) -> list[tuple[str, list[str]]]:
    return [(p.name, members(session, p.id)) for p in session.scalars(select(Project).order_by(Project.name))]
