from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.ids import hash_token, new_token
from service.models import Token, User

LOCAL_USER = "local"


class UserExists(ValueError):
    pass


class NoSuchUser(LookupError):
    pass


def get_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def create_user(session: Session, name: str, is_admin: bool = False) -> tuple[User, str]:
    """A new user and its first token; the token is returned once and only its sha256 is stored."""
    if get_user(session, name) is not None:
        raise UserExists(f"user {name!r} exists; `ttm admin token create {name}` gives it another token")
    user = User(name=name, is_admin=is_admin)
    session.add(user)
    session.flush()
    return user, create_token(session, user)


def create_token(session: Session, user: User | str) -> str:
    if isinstance(user, str):
        found = get_user(session, user)
        if found is None:
            raise NoSuchUser(f"no user {user!r}; create it with `ttm admin user create {user}`")
        user = found
    token = new_token()
    session.add(Token(user_id=user.id, token_hash=hash_token(token)))
    session.flush()
    return token


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def local_admin(session: Session) -> User:
    """The built-in admin that requests act as when auth is off."""
    user = get_user(session, LOCAL_USER)
    if user is None:
        user = User(name=LOCAL_USER, is_admin=True)
        session.add(user)
        session.flush()
    return user
