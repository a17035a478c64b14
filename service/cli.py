"""`ttm admin ...`: users, tokens, migrations. Tokens go alone to stdout (TOKEN=$(ttm admin user create alice));
everything else goes to stderr."""
from __future__ import annotations

from typing import Annotated

import typer

from service.db import session_scope
from service.migrate import DatabaseNotAtHead, check_at_head, upgrade_to_head
from service.queries import users
from service.settings import get_settings

admin_app = typer.Typer(help="Administer the job server: database migrations, users, API tokens.",
                        no_args_is_help=True)
user_app = typer.Typer(help="Users.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
admin_app.add_typer(user_app, name="user")
admin_app.add_typer(token_app, name="token")


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _require_head() -> None:
    try:
        check_at_head(get_settings())
    except DatabaseNotAtHead as err:
        _err(f"error: {err}")
        raise typer.Exit(1) from None


@admin_app.command()
def migrate() -> None:
    """Bring the database (TTM_DATABASE_URL) to the newest schema."""
    settings = get_settings()
    upgrade_to_head(settings)
    _err(f"database at head: {settings.database_url.split('@')[-1]}")


@user_app.command("create")
def user_create(name: Annotated[str, typer.Argument(help="the user's name")],
                admin: Annotated[bool, typer.Option("--admin", help="sees and acts on every job")] = False) -> None:
    """Create a user and print its first API token (only its hash is stored: keep it)."""
    _require_head()
    try:
        with session_scope() as session:
            _, token = users.create_user(session, name, is_admin=admin)
    except users.UserExists as err:
        _err(f"error: {err}")
        raise typer.Exit(1) from None
    typer.echo(token)
    _err(f"created {'admin' if admin else 'user'} {name!r}; the token above is shown once")


@user_app.command("list")
def user_list() -> None:
    """List users."""
    _require_head()
    with session_scope() as session:
        for user in users.list_users(session):
            typer.echo(f"{user.name}\t{'admin' if user.is_admin else 'user'}\t{user.created_at:%Y-%m-%d %H:%M}")


@token_app.command("create")
def token_create(name: Annotated[str, typer.Argument(help="an existing user's name")]) -> None:
    """Print a new API token for an existing user."""
    _require_head()
    try:
        with session_scope() as session:
            token = users.create_token(session, name)
    except users.NoSuchUser as err:
        _err(f"error: {err}")
        raise typer.Exit(1) from None
    typer.echo(token)


def main() -> None:
    root = typer.Typer(no_args_is_help=True)
    root.add_typer(admin_app, name="admin")
    root()


if __name__ == "__main__":
    main()
