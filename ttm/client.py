"""The job server's Python client, on httpx.

    from ttm.client import Client

    with Client("http://gpu-box:8000", token) as c:      # or TTM_SERVER / TTM_TOKEN
        job = c.submit("wttm.yaml")                       # a local teacher file is uploaded for you
        job = c.wait(job["id"], timeout=3600, on_event=print)
        c.download(job["id"], "best", "safetensors", "student.safetensors")

Requests that are safe to repeat are retried with exponential backoff after a connection error or a 5xx answer:
reads, uploads (addressed by sha256), cancels, and job submissions, which always carry an Idempotency-Key (one is
made per `submit` call when none is given). A 4xx answer is never retried: it raises `ApiError` at once.

This module speaks HTTP only; like the rest of ttm/ it never imports service/ or worker/.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("ttm.client")

DEFAULT_SERVER = "http://127.0.0.1:8000"  # where `ttm serve` listens by default
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
FORMATS = ("pt", "safetensors", "torchscript")
SUFFIXES = {"pt": ".pt", "safetensors": ".safetensors", "torchscript": ".torchscript.pt"}
CHUNK = 1024 * 1024


# ---------------------------------------------------------------------------------------------- errors
class ClientError(Exception):
    """Anything this client raises on purpose."""


class ApiError(ClientError):
    """The server answered with an error: {"error": {"code", "message", "field"?, "errors"?}}."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 errors: list[dict[str, str]] | None = None):
        self.status, self.code, self.message, self.field, self.errors = status, code, message, field, errors or []
        super().__init__(f"{status} {code}: {message}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiError":
        try:
            body = response.json()["error"]
            return cls(response.status_code, str(body.get("code", "error")), str(body.get("message", "")),
                       body.get("field"), body.get("errors"))
        except (ValueError, KeyError, TypeError, AttributeError):  # not our error shape (a proxy, a crash page)
            text = response.text.strip()[:300] or response.reason_phrase
            return cls(response.status_code, f"http_{response.status_code}", text)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        if self.errors:
            out["errors"] = self.errors
        return out


class ServerUnreachable(ClientError):
    """No answer from the server after the retries (refused, reset, timed out, DNS)."""


class ChecksumMismatch(ClientError):
    """A downloaded or uploaded file's sha256 differs from the one the server states."""


class WaitTimeout(ClientError, TimeoutError):
    """`wait` ran out of time; `job` is the job as last seen (still queued or running)."""

    def __init__(self, message: str, job: dict[str, Any] | None = None):
        super().__init__(message)
        self.job = job


# ---------------------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a job: `type` is "state" or "metric"; `id` resumes the stream after it."""

    type: str
    data: dict[str, Any]
    id: str | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[Event]:
    """text/event-stream lines → events. Comments (the server's keep-alive pings) and `retry:` are skipped."""
    kind, data, event_id = "message", [], None
    for line in lines:
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = {"text": text}
                yield Event(kind, payload if isinstance(payload, dict) else {"value": payload}, event_id)
            kind, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            event_id = value


# ---------------------------------------------------------------------------------------------- config
def resolve_config(server: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    """The server URL and token: the arguments, else TTM_SERVER / TTM_TOKEN, else the local default server."""
    server = server or os.environ.get("TTM_SERVER") or DEFAULT_SERVER
    if "://" not in server:
        server = f"http://{server}"
    return server.rstrip("/"), token or os.environ.get("TTM_TOKEN") or None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def format_for(dest: str | Path | None) -> str:
    """The checkpoint format a destination's name asks for: .safetensors, .torchscript(.pt)/.ts, else pt."""
    name = Path(dest).name.lower() if dest else ""
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith((".torchscript.pt", ".torchscript", ".ts")):
        return "torchscript"
    return "pt"


@dataclass
class _Retry:
    """Exponential backoff with jitter: base·2^attempt, capped, times a random factor in [0.5, 1]."""

    retries: int = 5
    base: float = 0.25
    cap: float = 8.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def pause(self, attempt: int, why: str) -> None:
        delay = min(self.cap, self.base * 2 ** attempt) * random.uniform(0.5, 1.0)
        log.warning("%s; retry %d/%d in %.1f s", why, attempt + 1, self.retries, delay)
        self.sleep(delay)


# ---------------------------------------------------------------------------------------------- the client
class Client:
    """A session with one job server. `timeout` is per request (connect, read, write); an event stream's reads
    wait up to `stream_timeout` (the server pings every 15 s, so a silent minute means the connection is dead)."""

    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 30.0, *,
                 retries: int = 5, backoff: float = 0.25, stream_timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.server, self.token = resolve_config(server, token)
        self.timeout, self.stream_timeout = timeout, stream_timeout
        self.retry = _Retry(retries=retries, base=backoff)
        headers = {"User-Agent": "ttm-client/0.1", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ plumbing
    def _send(self, method: str, path: str, *, stream: bool = False, params: dict[str, Any] | None = None,
              json_body: Any = None, headers: dict[str, str] | None = None,
              content: Callable[[], Iterable[bytes]] | None = None,
              timeout: httpx.Timeout | float | None = None) -> httpx.Response:
        """One request with retries. Every request sent through here is safe to repeat (see the module's doc).
        `content` is a factory, so a retried upload starts from the first byte again."""
        for attempt in range(self.retry.retries + 1):
            request = self._http.build_request(method, path, params=params, json=json_body, headers=headers,
                                               content=content() if content else None,
                                               timeout=timeout if timeout is not None else self.timeout)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.UnsupportedProtocol as err:
                raise ServerUnreachable(f"{self.server}: {err}") from None
            except httpx.TransportError as err:
                if attempt >= self.retry.retries:
                    raise ServerUnreachable(f"cannot reach {self.server}: {_describe(err)}") from None
                self.retry.pause(attempt, f"{method} {path}: {_describe(err)}")
                continue
            if response.status_code < 400:
                return response
            if stream:
                response.read()
                response.close()
            if response.status_code < 500 or attempt >= self.retry.retries:
                raise ApiError.from_response(response)
            self.retry.pause(attempt, f"{method} {path}: server error {response.status_code}")
        raise AssertionError("unreachable")

    def _get(self, path: str, **params: Any) -> Any:
        return self._send("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    # ------------------------------------------------------------------------------------------ artifacts
    def find_artifact(self, sha256: str) -> dict[str, Any] | None:
        """Your artifact holding these bytes, or None."""
        found = self._get("/v1/artifacts", sha256=sha256)
        return found[0] if found else None

    def upload(self, path: str | Path, filename: str | None = None) -> dict[str, Any]:
        """Upload teacher weights (state_dict, safetensors or TorchScript). The sha256 goes first: a file the
        server already has from you is not sent again. The artifact dict gets `uploaded`: whether bytes were sent."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        sha256 = sha256_file(path)
        try:
            known = self.find_artifact(sha256)
        except ApiError as err:
            if err.status not in (404, 405):  # an older server without the lookup: just upload
                raise
            known = None
        if known is not None:
            return {**known, "uploaded": False}
        size = path.stat().st_size

        def body() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        response = self._send("POST", "/v1/artifacts", params={"filename": filename or path.name}, content=body,
                              headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                              timeout=httpx.Timeout(self.timeout, write=max(self.timeout, 120.0), read=600.0))
        artifact = response.json()
        if artifact.get("sha256") != sha256:
            raise ChecksumMismatch(f"uploaded {path} (sha256 {sha256}) but the server stored {artifact.get('sha256')}")
        return {**artifact, "uploaded": response.status_code == 201}

    # ------------------------------------------------------------------------------------------ jobs
    def spec_body(self, spec: Any) -> dict[str, Any]:
        """The JSON body for POST /v1/jobs from a JobSpec, a dict, or a spec file (YAML/JSON, validated here);
        local teacher files (`weights`, `torchscript`) are uploaded and replaced by their artifact ids."""
        from ttm.spec import JobSpec, SpecError, load_spec

        if isinstance(spec, (str, Path)):
            spec = load_spec(spec)  # relative paths are resolved against the file's folder
        if isinstance(spec, JobSpec):
            body = spec.model_dump(mode="json", exclude_none=True)
        elif isinstance(spec, dict):
            body = json.loads(json.dumps(spec))  # a deep copy that is also JSON-clean
        else:
            raise TypeError(f"a spec is a JobSpec, a dict or a file path, not {type(spec).__name__}")
        teacher = body.get("teacher")
        if isinstance(teacher, dict):
            for key in ("weights", "torchscript"):
                ref = teacher.get(key)
                if not isinstance(ref, str) or ref.startswith("art_"):
                    continue
                path = Path(ref).expanduser()
                if not path.is_file():
                    raise SpecError([(f"teacher.{key}", f"{ref} is neither an artifact id (art_...) nor a file")])
                artifact = self.upload(path)
                log.info("teacher.%s: %s is artifact %s%s", key, path, artifact["id"],
                         "" if artifact["uploaded"] else " (already on the server)")
                teacher[key] = artifact["id"]
        return body

    def submit(self, spec: Any, idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a job; returns it (queued). The same `idempotency_key` with the same spec returns the job of
        the first submission instead of a new one; with another spec, ApiError 409."""
        body = self.spec_body(spec)
        key = idempotency_key or f"ttm-client-{uuid.uuid4().hex}"
        return self._send("POST", "/v1/jobs", json_body=body, headers={"Idempotency-Key": key}).json()

    def jobs(self, state: str | list[str] | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Your jobs (an admin: everyone's), newest first, at most `limit`."""
        states = ",".join(state) if isinstance(state, (list, tuple)) else state
        out: list[dict[str, Any]] = []
        cursor = None
        while len(out) < limit:
            page = self._get("/v1/jobs", state=states, cursor=cursor, limit=min(200, limit - len(out)))
            out.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out

    def job(self, job_id: str) -> dict[str, Any]:
        return self._get(f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job at once, or ask a running one to stop (state `cancelling` until it has)."""
        return self._send("POST", f"/v1/jobs/{job_id}/cancel").json()

    def metrics(self, job_id: str, after: int | None = None) -> list[dict[str, Any]]:
        """The job's metric rows {seq, epoch, name, value, at} with seq > after, in order."""
        out: list[dict[str, Any]] = []
        cursor = after or 0
        while True:
            page = self._get(f"/v1/jobs/{job_id}/metrics", after=cursor, limit=10_000)
            out.extend(page["items"])
            if not page["items"] or page["next_after"] == cursor:
                return out
            cursor = page["next_after"]

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return self._get(f"/v1/jobs/{job_id}/checkpoints")

    def log(self, job_id: str, offset: int = 0) -> str:
        """The trainer's log from byte `offset` on (everything written so far)."""
        return "".join(self._log_chunks(job_id, offset, follow=False))

    def follow_log(self, job_id: str, offset: int = 0, poll: float = 1.0) -> Iterator[str]:
        """The log as it grows, until the job has finished and everything is read."""
        return self._log_chunks(job_id, offset, follow=True, poll=poll)

    def _log_chunks(self, job_id: str, offset: int, follow: bool, poll: float = 1.0) -> Iterator[str]:
        finished = False
        while True:
            response = self._send("GET", f"/v1/jobs/{job_id}/log", params={"offset": offset})
            nxt = int(response.headers.get("X-TTM-Log-Next-Offset", offset + len(response.content)))
            if nxt > offset:
                offset = nxt
                yield response.text
                continue
            if not follow or finished:
                return
            finished = self.job(job_id)["state"] in FINAL_STATES  # one more read after the end, then stop
            if not finished:
                time.sleep(poll)

    # ------------------------------------------------------------------------------------------ events
    def events(self, job_id: str, last_event_id: str | None = None, *,
               deadline: float | None = None) -> Iterator[Event]:
        """The job's state changes and metric rows as they happen (from the start, or after `last_event_id`),
        until it ends. A dropped connection is resumed with Last-Event-ID: nothing is missed or repeated.
        `deadline` (time.monotonic()) raises WaitTimeout once passed while nothing arrives."""
        last, drops = last_event_id, 0
        while True:
            read = self.stream_timeout
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(f"job {job_id} did not finish in time")
                read = max(0.05, min(read, remaining))
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last:
                headers["Last-Event-ID"] = last
            response = self._send("GET", f"/v1/jobs/{job_id}/events", stream=True, headers=headers,
                                  timeout=httpx.Timeout(self.timeout, read=read))
            ended = False
            try:
                for event in parse_sse(response.iter_lines()):
                    drops = 0
                    if event.id:
                        last = event.id
                    yield event
                    if event.type == "state" and event.data.get("state") in FINAL_STATES:
                        return
                ended = True
            except httpx.TransportError as err:  # dropped mid-stream, or silent past the read timeout
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"job {job_id} did not finish in time") from None
                if drops >= self.retry.retries:
                    raise ServerUnreachable(f"the event stream of {job_id} keeps dropping: {_describe(err)}") from None
                self.retry.pause(drops, f"event stream of {job_id} dropped ({_describe(err)}); resuming after "
                                        f"{last or 'the start'}")
                drops += 1
            finally:
                response.close()
            # the server ends a stream only after a final state, which may have been sent before `last`
            if ended:
                if self.job(job_id)["state"] in FINAL_STATES:
                    return
                time.sleep(self.retry.base)  # ended early (a server restarting): resume after a breath

    def wait(self, job_id: str, timeout: float | None = None,
             on_event: Callable[[Event], None] | None = None) -> dict[str, Any]:
        """Follow the job's events until it is succeeded, failed or cancelled; returns the final job. Raises
        WaitTimeout (with the job as last seen) after `timeout` seconds; the job itself goes on."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        try:
            for event in self.events(job_id, deadline=deadline):
                if on_event is not None:
                    on_event(event)
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"job {job_id} did not finish in time")
        except WaitTimeout as err:
            try:
                err.job = self.job(job_id)
            except ClientError:
                pass
            raise
        return self.job(job_id)

    # ------------------------------------------------------------------------------------------ downloads
    def download(self, job_id: str, which: str = "best", format: str | None = None,
                 dest: str | Path | None = None) -> Path:
        """Save a checkpoint and check its sha256 against the server's ETag. `dest` is a file, or a folder for
        the server's file name (default: the current folder); `format` defaults to what dest's suffix says."""
        fmt = format or format_for(dest if dest is not None and not Path(dest).is_dir() else None)
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        for attempt in range(self.retry.retries + 1):
            response = self._send("GET", f"/v1/jobs/{job_id}/checkpoints/{which}", stream=True,
                                  params={"format": fmt}, timeout=httpx.Timeout(self.timeout, read=120.0))
            target = _target(dest, response, job_id, which, fmt)
            expected = response.headers.get("X-TTM-Sha256") or response.headers.get("ETag", "").strip('W/"')
            part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
            digest = hashlib.sha256()
            try:
                with part.open("wb") as f:
                    for chunk in response.iter_bytes(CHUNK):
                        digest.update(chunk)
                        f.write(chunk)
            except httpx.TransportError as err:
                part.unlink(missing_ok=True)
                if attempt >= self.retry.retries:
                    raise ServerUnreachable(f"download of {job_id} {which} keeps failing: {_describe(err)}") from None
                self.retry.pause(attempt, f"download of {job_id} {which} broke off ({_describe(err)})")
                continue
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            finally:
                response.close()
            if expected and digest.hexdigest() != expected:
                part.unlink(missing_ok=True)
                raise ChecksumMismatch(f"{job_id} {which}.{fmt}: got sha256 {digest.hexdigest()}, the server "
                                       f"says {expected}")
            os.replace(part, target)
            return target
        raise AssertionError("unreachable")


def _target(dest: str | Path | None, response: httpx.Response, job_id: str, which: str, fmt: str) -> Path:
    if dest is not None and not Path(dest).is_dir():
        target = Path(dest).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        return target
    match = re.search(r'filename="([^"/\\]+)"', response.headers.get("Content-Disposition", ""))
    name = match.group(1) if match else f"{job_id}-{which}{SUFFIXES[fmt]}"
    return Path(dest or ".").expanduser() / name


def _describe(err: Exception) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
