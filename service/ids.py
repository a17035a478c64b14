"""Identifiers and secrets."""
from __future__ import annotations

import hashlib
import secrets
import threading
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


_last_id = 0
_id_lock = threading.Lock()


def new_job_id() -> str:
    """`job_` + 26 Crockford base32 characters: 48 bits of milliseconds, then 80 random bits (ULID layout), so ids
    sort by creation time and the list query orders by id alone. Within a process they also sort in the order they
    were made: an id that would not sort after the last one (the same millisecond, or the clock stepped back) is the
    last one plus one. Queue positions count the jobs with smaller ids, so two submits of one millisecond keep their
    order."""
    global _last_id
    with _id_lock:
        n = max((time.time_ns() // 1_000_000) << 80 | secrets.randbits(80), _last_id + 1)
        _last_id = n
    chars = []
    for _ in range(26):
        n, r = divmod(n, 32)
        chars.append(_CROCKFORD[r])
    return "job_" + "".join(reversed(chars))


def new_sweep_id() -> str:
    """`swp_` + the same time-sortable characters as a job's id: the newest sweep is the largest id."""
    return "swp_" + new_job_id().removeprefix("job_")


def new_artifact_id() -> str:
    return "art_" + secrets.token_hex(12)


def new_dataset_id() -> str:
    return "ds_" + secrets.token_hex(12)


def new_token() -> str:
    return "ttm_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_delivery_id() -> str:
    return "dlv_" + secrets.token_hex(12)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)
