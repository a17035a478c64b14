"""Identifiers and secrets."""
from __future__ import annotations

import hashlib
import secrets
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_job_id() -> str:
    """`job_` + 26 Crockford base32 characters: 48 bits of milliseconds, then 80 random bits (ULID layout), so ids
    sort by creation time and the list query orders by id alone."""
    n = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        n, r = divmod(n, 32)
        chars.append(_CROCKFORD[r])
    return "job_" + "".join(reversed(chars))


def new_artifact_id() -> str:
    return "art_" + secrets.token_hex(12)


def new_token() -> str:
    return "ttm_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
