from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.ids import hash_token, new_token, new_webhook_secret
from service.models import Token, User, utcnow

LOCAL_USER = "local"


class UserExists(ValueError):
    pass


class NoSuchUser(LookupError):
    pass


class NoSuchToken(LookupError):
    pass


class AmbiguousToken(LookupError):
    pass


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `2w`: how long a new token lives."""
    units = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
    number, unit = text[:-1], text[-1:].lower()
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise ValueError(f"bad duration {text!r}: give a positive number and a unit, as in 30m, 12h, 90d or 2w")
    return int(number) * units[unit]


def get_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def create_user(session: Session, name: str, is_admin: bool = False,
                expires_in: timedelta | None = None) -> tuple[User, str]:
    """A new user and its first token; the token is returned once and only its sha256 is stored."""
    if get_user(session, name) is not None:
        raise UserExists(f"user {name!r} exists; `ttm admin token create {name}` gives it another token")
    user = User(name=name, is_admin=is_admin)
    session.add(user)
    session.flush()
    return user, create_token(session, user, expires_in)


def create_token(session: Session, user: User | str, expires_in: timedelta | None = None) -> str:
    """A new token for the user, valid for `expires_in` (none: until revoked)."""
    if isinstance(user, str):
        found = get_user(session, user)
        if found is None:
            raise NoSuchUser(f"no user {user!r}; create it with `ttm admin user create {user}`")
        user = found
    token = new_token()
    expires_at = utcnow() + expires_in if expires_in is not None else None
    session.add(Token(user_id=user.id, token_hash=hash_token(token), expires_at=expires_at))
    session.flush()
    return token


def list_tokens(session: Session, name: str | None = None) -> list[tuple[Token, str]]:
    """Tokens (and their user's name), oldest first; only one user's if `name` is given."""
    query = select(Token, User.name).join(User, User.id == Token.user_id).order_by(Token.id)
    if name is not None:
        query = query.where(User.name == name)
    return [(token, owner) for token, owner in session.execute(query).all()]


def find_token(session: Session, ident: str) -> Token:
    """The token named by its public id (`tok_` and at least 6 of its hex digits), or by the token itself."""
    if ident.startswith("ttm_"):
        found = session.scalar(select(Token).where(Token.token_hash == hash_token(ident)))
        if found is None:
            raise NoSuchToken("no such token")
        return found
    prefix = ident.removeprefix("tok_").lower()
    if len(prefix) < 6 or any(c not in "0123456789abcdef" for c in prefix):
        raise NoSuchToken(f"bad token id {ident!r}: give its id as `ttm admin token list` shows it (tok_...), "
                          "or the token itself")
    matches = list(session.scalars(select(Token).where(Token.token_hash.startswith(prefix)).limit(2)))
    if not matches:
        raise NoSuchToken(f"no token {ident!r}")
    if len(matches) > 1:
        raise AmbiguousToken(f"{ident!r} names more than one token: give more of its id")
    return matches[0]


def revoke_token(session: Session, ident: str) -> tuple[Token, bool]:
    """Revoke a token from now on; returns it and whether it was revoked by this call (not before)."""
    token = find_token(session, ident)
    if token.revoked_at is not None:
        return token, False
    token.revoked_at = utcnow()
    session.flush()
    return token, True


def token_status(token: Token, now: datetime | None = None) -> str:
    now = now or utcnow()
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"



def webhook_secret(session: Session, user_id: int) -> str:
    """The user's webhook secret, made on first need. The UPDATE only fills an empty one, so two first needs at
    once (a delivery pass, the user asking) end with one secret, the first committed."""
    session.execute(update(User).where(User.id == user_id, User.webhook_secret.is_(None))
                    .values(webhook_secret=new_webhook_secret()), execution_options={"synchronize_session": False})
    secret = session.scalar(select(User.webhook_secret).where(User.id == user_id))
    assert secret is not None
    return secret


def rotate_webhook_secret(session: Session, user_id: int) -> str:
    """A new secret from now on: every delivery is signed when it is sent, pending ones included."""
    secret = new_webhook_secret()
    session.execute(update(User).where(User.id == user_id).values(webhook_secret=secret),
                    execution_options={"synchronize_session": False})
    return secret


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
