"""What routes receive through `Annotated[..., Depends(...)]`: the settings, a database session, the caller."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.errors import ApiError
from service.ids import hash_token
from service.local_guard import refusal
from service.models import Token, User, utcnow
from service.principal import Principal
from service.settings import Settings


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


# The session dependencies are async so that FastAPI runs them on the event loop instead of a thread each: making a
# Session does no I/O (it checks out a connection on first use), and closing one after a commit does none either.
async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for routes that write; they commit explicitly."""
    session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


async def get_read_session(request: Request) -> AsyncIterator[Session]:
    """A session on autocommit connections for routes that only read: no BEGIN/ROLLBACK round trips."""
    session = request.app.state.read_sessionmaker()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]

_bearer = HTTPBearer(auto_error=False, description="an API token: `ttm admin user create NAME` prints one")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})


def _lookup(make_session: sessionmaker[Session], digest: str) -> Principal:
    """The token's user, or the 401 that says why not (unknown, revoked, expired)."""
    with make_session() as session:
        row = session.execute(select(User.id, User.name, User.is_admin, Token.expires_at, Token.revoked_at)
                              .join(Token, Token.user_id == User.id).where(Token.token_hash == digest)).first()
    if row is None:
        raise _unauthorized("invalid token")
    if row.revoked_at is not None:
        raise _unauthorized("token revoked")
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise _unauthorized("token expired")
    return Principal(row.id, row.name, row.is_admin)


async def get_current_user(request: Request,
                           credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                           ) -> Principal:
    # (the HTTPBearer dependency puts the scheme into the OpenAPI schema; the header is read by authenticate)
    return await authenticate(request)


async def authenticate(request: Request) -> Principal:
    """The caller of this request, from its bearer token (or the local admin when auth is off); 401 otherwise. Also
    called directly by the busiest route (POST /v1/jobs), where solving it as a dependency cost ~5 % of the server's
    CPU per submit (measured)."""
    # no session dependency: the lookup's own short session is closed before the route runs (a generator
    # dependency would hold it until the response ends, for an event stream its whole life)
    state = request.app.state
    if state.settings.auth == "off":
        return _loopback_only(request, state.local_user)
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
    # one indexed query per request, no cache: `ttm admin token revoke` takes effect on the next request
    return await run_in_threadpool(_lookup, state.read_sessionmaker, hash_token(token))


def _loopback_only(request: Request, local: Principal) -> Principal:
    """With auth off, serve only the machine's own user (service/local_guard.py; its middleware has refused the
    rest before routing, and this repeats the check for any app built without it)."""
    err = refusal(request.scope)
    if err is not None:
        raise err
    return local


CurrentUser = Annotated[Principal, Depends(get_current_user)]
