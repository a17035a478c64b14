"""What routes receive through `Annotated[..., Depends(...)]`: the settings, a database session, the caller."""
from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.errors import ApiError
from service.ids import hash_token
from service.models import Token, User
from service.settings import Settings


@dataclass(frozen=True)
class Principal:
    """The caller: who they are and whether they see everyone's jobs."""

    id: int
    name: str
    is_admin: bool


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


class TokenCache:
    """token hash → Principal for a few seconds, so a busy client costs one query per request, not two."""

    def __init__(self, ttl: float = 10.0, size: int = 4096):
        self.ttl, self.size = ttl, size
        self._items: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: str, who: Principal) -> None:
        with self._lock:
            if len(self._items) >= self.size:
                self._items.clear()
            self._items[key] = (time.monotonic() + self.ttl, who)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})


def _lookup(make_session: sessionmaker[Session], digest: str) -> Principal | None:
    with make_session() as session:
        row = session.execute(select(User.id, User.name, User.is_admin).join(Token, Token.user_id == User.id)
                              .where(Token.token_hash == digest)).first()
    return Principal(row.id, row.name, row.is_admin) if row else None


async def get_current_user(request: Request,
                           credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                           ) -> Principal:
    # (the HTTPBearer dependency puts the scheme into the OpenAPI schema; the header is read by authenticate)
    return await authenticate(request)


async def authenticate(request: Request) -> Principal:
    """The caller of this request, from its bearer token (or the local admin when auth is off); 401 otherwise. Also
    called directly by the busiest route (POST /v1/jobs), where solving it as a dependency cost ~5 % of the server's
    CPU per submit (measured)."""
    # no session dependency: a cached token (most requests) needs none, and a generator dependency costs every
    # request a context manager
    state = request.app.state
    if state.settings.auth == "off":
        return _loopback_only(request, state.local_user)
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
    digest = hash_token(token)
    cache: TokenCache = state.token_cache
    who = cache.get(digest)
    if who is None:
        who = await run_in_threadpool(_lookup, state.read_sessionmaker, digest)
        if who is None:
            raise _unauthorized("invalid token")
        cache.put(digest, who)
    return who


def _loopback_only(request: Request, local: Principal) -> Principal:
    """With auth off, serve only connections that arrived on a loopback address, whatever the server was told."""
    server = request.scope.get("server")
    host = server[0] if server else None
    if host is None or not is_loopback(host):
        raise ApiError(403, "auth is off on this server: it answers only on a loopback address", code="forbidden")
    return local


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


CurrentUser = Annotated[Principal, Depends(get_current_user)]
