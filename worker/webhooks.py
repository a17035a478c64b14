"""The delivery pass: sends the webhook calls that are due (service/queries/webhooks.py holds the rows,
service/webhooks.py the policy, the signature and the body). The reconciler runs it every tick.

Each attempt: claim the row (commit), resolve the host and refuse it if any address it gives is forbidden, POST to
that checked address (so the name cannot resolve elsewhere between the check and the call), never following a
redirect, then record the answer. A 2xx is delivered and never sent again; anything else is tried again after 10 s,
doubling to at most an hour, for a day after the job ended; then the row says it gave up.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx

from service.db import session_scope
from service.models import utcnow
from service.queries import webhooks as q
from service.queries.users import webhook_secret
from service.settings import Settings
from service.webhooks import ALLOW_SETTING, AllowList, event_body, forbidden, parse_allow_list, signature

log = logging.getLogger("ttm.worker.webhooks")

FIRST_RETRY_S = 10.0
MAX_RETRY_S = 3600.0
GIVE_UP_AFTER = timedelta(days=1)
BATCH = 20  # deliveries per pass: the reconciler's other work waits for the pass
PASS_BUDGET_S = 15.0  # no new attempt starts past this within one pass


@dataclass
class DeliverySummary:
    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # to be tried again
    gave_up: list[str] = field(default_factory=list)


class Refused(Exception):
    """The host resolves to an address the policy forbids: not called, and not tried again."""


def retry_delay(attempt: int) -> float:
    return min(FIRST_RETRY_S * 2 ** (attempt - 1), MAX_RETRY_S)


def checked_address(host: str, port: int, allow: AllowList) -> str:
    """The address to call for `host`: every address it resolves to must be allowed (a name with one private
    address among public ones is refused as well)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise OSError(f"cannot resolve {host}: {err.strerror}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if host.lower().rstrip(".") not in allow.hosts:
        for address in addresses:
            if forbidden(ipaddress.ip_address(address.split("%")[0]), allow):
                raise Refused(f"{host} resolves to {address}, an address this server does not call unless its "
                              f"admin allows it ({ALLOW_SETTING})")
    if not addresses:
        raise OSError(f"{host} has no address")
    return addresses[0]


def post(url: str, body: bytes, headers: dict[str, str], allow: AllowList, timeout: float) -> int:
    """POST to the URL's host at its checked address; returns the status code (the body is not read)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = checked_address(host, port, allow)
    netloc = (f"[{address}]" if ":" in address else address) + (f":{parts.port}" if parts.port else "")
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = parts.netloc.rsplit("@", 1)[-1]
    # trust_env off: a proxy from the environment would make its own resolution of the host
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        with client.stream("POST", pinned, content=body, headers={**headers, "Host": host_header},
                           extensions={"sni_hostname": host} if parts.scheme == "https" else {}) as response:
            return response.status_code


def deliver_due(settings: Settings, now: datetime | None = None, batch: int = BATCH) -> DeliverySummary:
    """One pass over the due deliveries. `now` is when the pass counts as running (tests move it forward to make
    retries due); the signature's timestamp is the real time."""
    now = now or utcnow()
    allow = parse_allow_list(settings.webhook_allow)
    summary = DeliverySummary()
    started = time.monotonic()
    with session_scope(settings) as session:
        due = q.due(session, now, batch)
    for delivery_id, attempts in due:
        if time.monotonic() - started > PASS_BUDGET_S:
            break
        _attempt(settings, delivery_id, attempts, now, allow, summary)
    if summary.delivered or summary.failed or summary.gave_up:
        log.info("webhooks: delivered %s, to retry %s, gave up %s", summary.delivered or "-",
                 summary.failed or "-", summary.gave_up or "-")
    return summary


def _attempt(settings: Settings, delivery_id: str, attempts: int, now: datetime, allow: AllowList,
             summary: DeliverySummary) -> None:
    attempt = attempts + 1
    with session_scope(settings) as session:
        found = q.delivery_with_subject(session, delivery_id)
        if found is None:
            return
        delivery, subject, owner = found
        if now - delivery.created_at > GIVE_UP_AFTER:  # (a sender that died mid-attempt, then a long outage)
            if q.give_up(session, delivery_id, attempts, f"gave up: not delivered within {GIVE_UP_AFTER}", now):
                summary.gave_up.append(delivery_id)
            return
        # if this attempt never reports, the row is due again after its backoff, and never while it can still run
        retry_at = now + timedelta(seconds=max(retry_delay(attempt), 4 * settings.webhook_timeout_seconds))
        if not q.claim(session, delivery_id, attempts, now, retry_at):
            return  # another sender has it
        secret = webhook_secret(session, owner.id)
        url = delivery.url
        sent_at = utcnow()
        body = event_body(subject, owner.name, delivery_id, sent_at)
    headers = {"Content-Type": "application/json", "User-Agent": "ttm-webhooks/1",
               "X-TTM-Signature": signature(secret, int(sent_at.timestamp()), body),
               "X-TTM-Delivery": delivery_id, "X-TTM-Event": delivery.event}
    status: int | None = None
    error: str | None = None
    final = False
    try:
        status = post(url, body, headers, allow, settings.webhook_timeout_seconds)
        if not 200 <= status < 300:
            error = f"the receiver answered {status}" + (" (redirects are not followed)"
                                                        if 300 <= status < 400 else "")
    except Refused as err:
        error, final = f"refused: {err}", True
    except Exception as err:  # noqa: BLE001 - whatever failed (network, TLS, a name idna cannot encode) is this
        error = f"{type(err).__name__}: {err}"[:1000]  # attempt's error, and the pass goes on to the next row
    next_at: datetime | None = None
    if error is not None and not final:
        next_at = now + timedelta(seconds=retry_delay(attempt))
        if next_at - delivery.created_at > GIVE_UP_AFTER:
            next_at, error = None, f"gave up after {attempt} attempts in {GIVE_UP_AFTER}; last: {error}"
            final = True
    with session_scope(settings) as session:
        q.record_attempt(session, delivery_id, attempt, status=status, error=error,
                         delivered_at=utcnow() if error is None else None, next_attempt_at=next_at)
    (summary.delivered if error is None else summary.gave_up if final else summary.failed).append(delivery_id)
