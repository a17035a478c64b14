"""`ttm admin ...`: users, tokens, migrations. Tokens go alone to stdout (TOKEN=$(ttm admin user create alice));
everything else goes to stderr."""
from __future__ import annotations

import math
from datetime import timedelta
from typing import Annotated

import typer

from service.db import session_scope
from service.migrate import DatabaseNotAtHead, check_at_head, upgrade_to_head
from service.models import Token
from service.queries import users
from service.settings import get_settings

admin_app = typer.Typer(help="Administer the job server: database migrations, users, API tokens.",
                        no_args_is_help=True)
user_app = typer.Typer(help="Users.", no_args_is_help=True)
project_app = typer.Typer(help="Projects: lab members who share teachers.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
admin_app.add_typer(user_app, name="user")
admin_app.add_typer(token_app, name="token")
admin_app.add_typer(project_app, name="project")


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _require_head() -> None:
    try:
        check_at_head(get_settings())
    except DatabaseNotAtHead as err:
        _err(f"error: {err}")
        raise typer.Exit(1) from None


def _expiry(value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return users.parse_duration(value)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--expires-in") from None


ExpiresIn = Annotated[str | None, typer.Option("--expires-in", metavar="DURATION",
                                               help="the token stops working after this long: 30m, 12h, 90d, 2w "
                                                    "(default: until revoked)")]


def _describe(token: Token) -> str:
    until = f"expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else "does not expire"
    return f"token id {token.public_id} ({until}; revoke with `ttm admin token revoke {token.public_id}`)"


@admin_app.command()
def migrate() -> None:
    """Bring the database (TTM_DATABASE_URL) to the newest schema."""
    settings = get_settings()
    upgrade_to_head(settings)
    _err(f"database at head: {settings.database_url.split('@')[-1]}")


@user_app.command("create")
def user_create(name: Annotated[str, typer.Argument(help="the user's name")],
                admin: Annotated[bool, typer.Option("--admin", help="sees and acts on every job")] = False,
                expires_in: ExpiresIn = None) -> None:
    """Create a user and print its first API token (only its hash is stored: keep it)."""
    lifetime = _expiry(expires_in)
    _require_head()
    try:
        with session_scope() as session:
            _, token = users.create_user(session, name, is_admin=admin, expires_in=lifetime)
            described = _describe(users.find_token(session, token))
    except users.UserExists as err:
        _err(f"error: {err}")
        raise typer.Exit(1) from None
    typer.echo(token)
    _err(f"created {'admin' if admin else 'user'} {name!r}; the token above is shown once")
    _err(described)


@user_app.command("list")
def user_list() -> None:
    """List users."""
    _require_head()
    with session_scope() as session:
        for user in users.list_users(session):
            typer.echo(f"{user.name}\t{'admin' if user.is_admin else 'user'}\t{user.created_at:%Y-%m-%d %H:%M}")


NONE_WORDS = ("none", "unlimited", "-")  # clears a limit


def _limit(value: str | None, option: str, kind: type) -> object:
    """None: leave as is; the string "none": clear (no limit of the user's own); else a positive number."""
    if value is None or value.lower() in NONE_WORDS:
        return value
    try:
        number = kind(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a number (or 'none' to clear it)", param_hint=option) from None
    if not math.isfinite(number) or number <= 0:
        raise typer.BadParameter(f"{value!r}: give a positive number, or 'none' to clear it", param_hint=option)
    return number


@user_app.command("set")
def user_set(
    name: Annotated[str, typer.Argument(help="an existing user's name")],
    weight: Annotated[float | None, typer.Option(help="the user's share of the queue (default 1): usage over "
                                                      "weight orders users within a priority class")] = None,
    max_running: Annotated[str | None, typer.Option(help="slots (GPUs; 1 per cpu job) the user's jobs may hold "
                                                         "at once; more wait at dispatch; 'none' clears")] = None,
    max_queued: Annotated[str | None, typer.Option(help="queued jobs the user may have (a submit past it is a "
                                                        "429); 'none': the server's TTM_LIMITS_MAX_QUEUED_PER_USER"
                                                   )] = None,
    gpu_hours_per_week: Annotated[str | None, typer.Option(help="past this many GPU-hours in the last 7 days a "
                                                                "submit is a 403; 'none' clears")] = None,
    priorities: Annotated[str | None, typer.Option(help="the classes the user may submit in, e.g. low,normal,high "
                                                        "(default low,normal; admins may use all)")] = None,
) -> None:
    """Set a user's share and limits in the lab queue (docs/SCHEDULING.md); prints the user's settings."""
    from service.models import User
    from service.scheduling import PRIORITY_RANK, allowed_priorities

    if weight is not None and (not math.isfinite(weight) or weight <= 0):
        raise typer.BadParameter(f"{weight!r}: give a positive share", param_hint="--weight")
    limits = {"max_running": _limit(max_running, "--max-running", int),
              "max_queued": _limit(max_queued, "--max-queued", int),
              "gpu_hours_per_week": _limit(gpu_hours_per_week, "--gpu-hours-per-week", float)}
    classes = None
    if priorities is not None:
        classes = [p.strip() for p in priorities.split(",") if p.strip()]
        unknown = [p for p in classes if p not in PRIORITY_RANK]
        if unknown or not classes:
            raise typer.BadParameter(f"classes are {', '.join(PRIORITY_RANK)}; got {priorities!r}",
                                     param_hint="--priorities")
    _require_head()
    with session_scope() as session:
        user = users.get_user(session, name)
        if user is None:
            _err(f"error: no user {name!r} (`ttm admin user list`)")
            raise typer.Exit(1)
        if weight is not None:
            user.weight = weight
        for field, value in limits.items():
            if value is not None:
                setattr(user, field, None if isinstance(value, str) else value)
        if classes is not None:
            user.priorities = ",".join(sorted(set(classes), key=PRIORITY_RANK.__getitem__))
        session.flush()
        assert isinstance(user, User)
        typer.echo(f"{user.name}: weight {user.weight:g}; max-running {user.max_running or 'none'}; max-queued "
                   f"{user.max_queued or 'server default'}; gpu-hours-per-week {user.gpu_hours_per_week or 'none'}; "
                   f"priorities {','.join(allowed_priorities(user))}")


@project_app.command("create")
def project_create(name: Annotated[str, typer.Argument(help="the project's name")],
                   members: Annotated[list[str] | None, typer.Argument(help="users to add")] = None) -> None:
    """Create a project (and add members): an artifact or job in it can teach every member's jobs."""
    from service.queries import projects

    _require_head()
    try:
        with session_scope() as session:
            project = projects.create_project(session, name)
            names = projects.set_members(session, name, members or [], add=True)
    except projects.ProjectError as err:
        _err(f"error: {err}")
        raise typer.Exit(1) from None
    _err(f"created project {project.name!r}; members: {', '.join(names) or 'none yet'}")


def _members(name: str, users_: list[str], add: bool) -> None:
    from service.queries import projects

    _require_head()
    try:
        with session_scope() as session:
            names = projects.set_members(session, name, users_, add=add)
    except projects.ProjectError as err:
        _err(f"error: {err}")
        raise typer.Exit(1) from None
    typer.echo(f"{name}: {', '.join(names) or 'no members'}")


@project_app.command("add")
def project_add(name: Annotated[str, typer.Argument(help="an existing project")],
                members: Annotated[list[str], typer.Argument(help="users to add")]) -> None:
    """Add members to a project."""
    _members(name, members, add=True)


@project_app.command("remove")
def project_remove(name: Annotated[str, typer.Argument(help="an existing project")],
                   members: Annotated[list[str], typer.Argument(help="users to remove")]) -> None:
    """Remove members from a project (jobs they already started from its teachers go on)."""
    _members(name, members, add=False)


@project_app.command("list")
def project_list() -> None:
    """List projects and their members."""
    from service.queries import projects

    _require_head()
    with session_scope() as session:
        for name, names in projects.list_projects(session):
            typer.echo(f"{name}\t{','.join(names)}")


@token_app.command("create")
def token_create(name: Annotated[str, typer.Argument(help="an existing user's name")],
                 expires_in: ExpiresIn = None) -> None:
    """Print a new API token for an existing user."""
    lifetime = _expiry(expires_in)
    _require_head()
    try:
        with session_scope() as session:
            token = users.create_token(session, name, lifetime)
            described = _describe(users.find_token(session, token))
    except users.NoSuchUser as err:
        _err(f"error: {err}")
        raise typer.Exit(1) from None
    typer.echo(token)
    _err(f"the token above is shown once; {described}")


@token_app.command("list")
def token_list(name: Annotated[str | None, typer.Argument(help="only this user's tokens")] = None) -> None:
    """List tokens: id, user, created, expires, status (never the token: only its hash is stored)."""
    _require_head()
    with session_scope() as session:
        for token, owner in users.list_tokens(session, name):
            expires = f"{token.expires_at:%Y-%m-%d %H:%M}" if token.expires_at else "never"
            typer.echo(f"{token.public_id}\t{owner}\t{token.created_at:%Y-%m-%d %H:%M}\t{expires}\t"
                       f"{users.token_status(token)}")


@token_app.command("revoke")
def token_revoke(ident: Annotated[str, typer.Argument(
        metavar="TOKEN_ID", help="the token's id (tok_..., as `token list` shows it; 6 hex digits or more "
                                 "suffice when they name one token), or the token itself")]) -> None:
    """Revoke a token: the server refuses it from the next request on (401 "token revoked")."""
    _require_head()
    try:
        with session_scope() as session:
            token, now = users.revoke_token(session, ident)
            public_id = token.public_id
    except (users.NoSuchToken, users.AmbiguousToken) as err:
        _err(f"error: {err}")
        raise typer.Exit(1) from None
    _err(f"revoked {public_id}" if now else f"{public_id} was already revoked")


def main() -> None:
    root = typer.Typer(no_args_is_help=True)
    root.add_typer(admin_app, name="admin")
    root()


if __name__ == "__main__":
    main()
