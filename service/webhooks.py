"""Webhooks: which addresses the server may call, the signature, and the body of a job's final-state event.

A receiver checks `X-TTM-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` under its owner's
secret (GET /v1/users/me/webhook-secret), as GitHub's and Stripe's are checked: docs/API.md shows how. The sending
itself (resolution, retries) is the reconciler's delivery pass, worker/webhooks.py.

Why an address policy: a job's URL is chosen by any user, and the server would call it from inside the lab's
network, where loopback, private ranges and the cloud metadata address (169.254.169.254) reach what users cannot.
Those are refused unless an admin allows them (TTM_WEBHOOK_ALLOW); a hostname is judged by what it resolves to when
it is called, so a name that later resolves elsewhere (DNS rebinding) is caught then.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from service.models import Job, Sweep

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
EVENT = "job.finished"
SWEEP_EVENT = "sweep.finished"
ALLOW_SETTING = "TTM_WEBHOOK_ALLOW"


@dataclass(frozen=True)
class AllowList:
    networks: tuple[IPNetwork, ...]
    hosts: frozenset[str]  # lower case


@lru_cache(maxsize=16)
def parse_allow_list(text: str) -> AllowList:
    """`127.0.0.1, 10.0.0.0/8, hooks.lab.internal`: addresses, networks and hostnames allowed although not public.
    Raises ValueError naming an entry that is none of these."""
    networks, hosts = [], set()
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        name = entry.lower().rstrip(".")
        if not name or not all(label and len(label) < 64 and all(c.isalnum() or c == "-" for c in label)
                               for label in name.split(".")):
            raise ValueError(f"{ALLOW_SETTING}: {entry!r} is not an address, a network (a.b.c.d/n) or a hostname")
        hosts.add(name)
    return AllowList(tuple(networks), frozenset(hosts))


def forbidden(ip: IPAddress, allow: AllowList) -> bool:
    """Loopback, private, link-local, unique-local, unspecified, shared (100.64/10), reserved and multicast
    addresses are forbidden unless allowed: only public unicast addresses are called by default."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    if any(ip.version == net.version and ip in net for net in allow.networks):
        return False
    return not ip.is_global or ip.is_multicast


def literal_ip(url: str) -> IPAddress | None:
    """The URL's host when it is written as an IP address (a hostname is judged when it is called)."""
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def submit_refusal(url: str, allow_text: str) -> str | None:
    """Why POST /v1/jobs refuses this notify.url, or None: its host is an address the server will not call."""
    ip = literal_ip(url)
    if ip is None or not forbidden(ip, parse_allow_list(allow_text)):
        return None
    return (f"{ip} is a loopback, private, link-local or otherwise non-public address, which this server does not "
            f"call unless its admin allows it ({ALLOW_SETTING}); give a public URL")


def notify_url(job: Job | Sweep) -> str | None:
    """The `notify.url` of a job's spec, or of a sweep's."""
    notify = (job.spec or {}).get("notify")
    url = notify.get("url") if isinstance(notify, dict) else None
    return url if isinstance(url, str) else None


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def event_body(subject: Job | Sweep, owner: str, delivery_id: str, sent_at: datetime) -> bytes:
    """The JSON a receiver gets, as the bytes that are signed: a job's end, or a sweep's (with its chosen job)."""
    body: dict[str, Any]
    if isinstance(subject, Sweep):
        body = {"event": SWEEP_EVENT,
                "sweep": {"id": subject.id, "name": subject.name, "state": subject.state, "reason": subject.reason,
                          "best_job_id": subject.best_job_id, "created_at": _iso(subject.created_at),
                          "finished_at": _iso(subject.finished_at), "owner": owner}}
    else:
        job = subject
        body = {"event": EVENT,
                "job": {"id": job.id, "name": job.name, "state": job.state, "reason": job.reason,
                        "best_top1": job.best_top1, "created_at": _iso(job.created_at),
                        "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at), "owner": owner}}
    body.update(delivery=delivery_id, sent_at=_iso(sent_at))
    return json.dumps(body, separators=(",", ":")).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-TTM-Signature value: the timestamp is signed with the body, so a captured request cannot be replayed
    later than the receiver's tolerance."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"
