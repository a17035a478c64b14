"""The job server's Python client, on httpx.

    from ttm.client import Client

    with Client("http://gpu-box:8000", token) as c:      # or TTM_SERVER / TTM_TOKEN
        job = c.submit("wttm.yaml")                       # a local teacher file is uploaded for you
        job = c.wait(job["id"], timeout=3600, on_event=print)
        c.download(job["id"], "best", "safetensors", "student.safetensors")

Requests that are safe to repeat are retried, with exponential backoff and jitter, after a connection error, a 5xx
or a 429 answer: reads, uploads (addressed by sha256), cancels, and job submissions, which always carry an
Idempotency-Key (one is made per `submit` call when none is given). Any other 4xx answer is never retried: it raises
`ApiError` at once. `RetryPolicy` is that one policy (tenacity); event streams are parsed by httpx-sse.

This module speaks HTTP only; like the rest of ttm/ it never imports service/ or worker/.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import tenacity
from httpx_sse import EventSource, ServerSentEvent

from ttm.registry import CHECKPOINT_SUFFIXES, checkpoint_name

log = logging.getLogger("ttm.client")

DEFAULT_SERVER = "http://127.0.0.1:8000"  # where `ttm serve` listens by default
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
FORMATS = tuple(CHECKPOINT_SUFFIXES)
CHUNK = 1024 * 1024
EXPORT_WAIT_S = 600.0  # how long a download waits, by default, for an export the server makes on request
PENDING_RETRY_S, MAX_PENDING_RETRY_S = 2.0, 30.0  # between its polls: without a Retry-After, and at most
T = TypeVar("T")


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
    def from_response(cls, response: httpx.Response) -> ApiError:
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


def event_from_sse(sse: ServerSentEvent) -> Event | None:
    """httpx-sse's event → ours: `data` is the JSON object the server sent; None for a message without data."""
    if not sse.data:
        return None
    try:
        payload = json.loads(sse.data)
    except ValueError:
        payload = {"text": sse.data}
    return Event(sse.event, payload if isinstance(payload, dict) else {"value": payload}, sse.id or None)


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
    """The checkpoint format a destination's name asks for: .safetensors, .onnx, .pt2, .torchscript(.pt)/.ts,
    else pt."""
    name = Path(dest).name.lower() if dest else ""
    for fmt in ("safetensors", "onnx", "pt2"):
        if name.endswith(CHECKPOINT_SUFFIXES[fmt]):
            return fmt
    if name.endswith((".torchscript.pt", ".torchscript", ".ts")):
        return "torchscript"
    return "pt"


def is_retryable(err: BaseException) -> bool:
    """A connection error, or an answer that a later try may not get (5xx, 429 Too Many Requests). Never another
    4xx: asking again cannot make a bad request good."""
    if isinstance(err, httpx.TransportError):
        return not isinstance(err, httpx.UnsupportedProtocol)  # a URL without http(s) will not get better
    return isinstance(err, ApiError) and (err.status >= 500 or err.status == 429)


class RetryPolicy:
    """The client's one retry policy: up to `retries` more tries of a retryable failure, waiting
    backoff·2^(try-1) plus a random jitter up to `backoff`, capped at `cap` seconds."""

    def __init__(self, retries: int = 5, backoff: float = 0.25, cap: float = 8.0):
        self.retries, self.backoff, self.cap = retries, backoff, cap

    def call(self, fn: Callable[[], T], what: str | Callable[[], str],
             retry_on: Callable[[BaseException], bool] = is_retryable) -> T:
        """`fn()` until it returns, raises something not retryable, or has failed 1 + `retries` times; the last
        failure is raised as it was."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_exponential_jitter(multiplier=self.backoff, max=self.cap, jitter=self.backoff),
            retry=tenacity.retry_if_exception(retry_on), reraise=True, before_sleep=self._log(what))
        return retrying(fn)

    def _log(self, what: str | Callable[[], str]) -> Callable[[tenacity.RetryCallState], None]:
        """`what` names what failed; a function of no arguments when that changes between tries."""
        def before_sleep(state: tenacity.RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome else None
            why = f"server error {err.status}" if isinstance(err, ApiError) else _describe(err) if err else "?"
            delay = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s: %s; retry %d/%d in %.1f s", what if isinstance(what, str) else what(), why,
                        state.attempt_number, self.retries, delay)

        return before_sleep


# ---------------------------------------------------------------------------------------------- the client
class Client:
    """A session with one job server. `timeout` is per request (connect, read, write); an event stream's reads
    wait up to `stream_timeout` (the server pings every 15 s, so a silent minute means the connection is dead)."""

    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 30.0, *,
                 retries: int = 5, backoff: float = 0.25, stream_timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.server, self.token = resolve_config(server, token)
        self.timeout, self.stream_timeout = timeout, stream_timeout
        self.retry = RetryPolicy(retries=retries, backoff=backoff)
        headers = {"User-Agent": "ttm-client/0.1", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ plumbing
    def _send(self, method: str, path: str, *, stream: bool = False, params: dict[str, Any] | None = None,
              json_body: Any = None, headers: dict[str, str] | None = None,
              content: Callable[[], Iterable[bytes]] | None = None,
              timeout: httpx.Timeout | float | None = None) -> httpx.Response:
        """One request under the retry policy. Every request sent through here is safe to repeat (see the module's
        doc). `content` is a factory, so a retried upload starts from the first byte again."""
        def once() -> httpx.Response:
            request = self._http.build_request(method, path, params=params, json=json_body, headers=headers,
                                               content=content() if content else None,
                                               timeout=timeout if timeout is not None else self.timeout)
            response = self._http.send(request, stream=stream)
            if response.status_code < 400:
                return response
            if stream:
                response.read()
                response.close()
            raise ApiError.from_response(response)

        try:
            return self.retry.call(once, f"{method} {path}")
        except httpx.UnsupportedProtocol as err:
            raise ServerUnreachable(f"{self.server}: {err}") from None
        except httpx.TransportError as err:
            raise ServerUnreachable(f"cannot reach {self.server}: {_describe(err)}") from None

    def _get(self, path: str, **params: Any) -> Any:
        return self._send("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    # ------------------------------------------------------------------------------------------ artifacts
    def find_artifact(self, sha256: str) -> dict[str, Any] | None:
        """Your artifact holding these bytes, or None."""
        found = self._get("/v1/artifacts", sha256=sha256)
        return found[0] if found else None

    def artifact(self, artifact_id: str) -> dict[str, Any]:
        """One of your artifacts (any, for an admin): id, sha256, size, format, filename, tensors."""
        return self._get(f"/v1/artifacts/{artifact_id}")

    def upload(self, path: str | Path, filename: str | None = None, project: str | None = None) -> dict[str, Any]:
        """Upload teacher weights (state_dict, safetensors or TorchScript). The sha256 goes first: a file the
        server already has from you is not sent again (unless it is to be shared with `project`, one of your
        projects, whose members may then name it as a teacher). The artifact dict gets `uploaded`: whether bytes
        were sent."""
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
        if known is not None and project is None:
            return {**known, "uploaded": False}
        params = {"filename": filename or path.name, **({"project": project} if project else {})}
        response = self._post_file("/v1/artifacts", path, params)
        artifact = response.json()
        if artifact.get("sha256") != sha256:
            raise ChecksumMismatch(f"uploaded {path} (sha256 {sha256}) but the server stored {artifact.get('sha256')}")
        return {**artifact, "uploaded": response.status_code == 201}

    def upload_dataset(self, path: str | Path) -> dict[str, Any]:
        """Send an ImageFolder tree (train/<class>/..., val/<class>/...) as a .tar, .tar.gz or .zip; returns the
        data set (`id` for `dataset: {name: imagefolder, id: ...}`, classes, counts). The server unpacks it and
        checks every entry; the same archive sent again is the same data set."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        sha256 = sha256_file(path)
        dataset = self._post_file("/v1/datasets", path, {"filename": path.name}).json()
        if dataset.get("sha256") != sha256:
            raise ChecksumMismatch(f"sent {path} (sha256 {sha256}) but the server stored {dataset.get('sha256')}")
        return dataset

    def _post_file(self, route: str, path: Path, params: dict[str, Any]) -> httpx.Response:
        """A file as the raw body of a POST, streamed (a retry starts from its first byte)."""
        size = path.stat().st_size

        def body() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return self._send("POST", route, params=params, content=body,
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                          timeout=httpx.Timeout(self.timeout, write=max(self.timeout, 120.0), read=600.0))

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

    def submit(self, spec: Any, idempotency_key: str | None = None, tags: Sequence[str] = (),
               note: str | None = None) -> dict[str, Any]:
        """Submit a job; returns it (queued). The same `idempotency_key` with the same spec returns the job of
        the first submission instead of a new one; with another spec, ApiError 409. `tags` and `note` label it
        (they are not part of the spec; `tag_job`/`note_job` change them later)."""
        body = self.spec_body(spec)
        key = idempotency_key or f"ttm-client-{uuid.uuid4().hex}"
        params: dict[str, Any] = {"tag": list(tags)} if tags else {}
        if note:
            params["note"] = note
        return self._send("POST", "/v1/jobs", json_body=body, headers={"Idempotency-Key": key},
                          params=params).json()

    def clone_spec(self, job_id: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
        """The spec job `job_id` ran (as the server accepted it), with `overrides` (FIELD=VALUE) applied: submit
        it to run the job again with changes."""
        from ttm.spec import apply_overrides

        return apply_overrides(self.job(job_id)["spec"], overrides)

    def tag_job(self, job_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()) -> dict[str, Any]:
        """Add and remove tags of a job; returns the job."""
        tags = [t for t in self.job(job_id)["tags"] if t not in remove]
        tags += [t for t in add if t not in tags]
        return self._send("PATCH", f"/v1/jobs/{job_id}", json_body={"tags": tags}).json()

    def note_job(self, job_id: str, note: str) -> dict[str, Any]:
        """Set a job's note ("" removes it); returns the job."""
        return self._send("PATCH", f"/v1/jobs/{job_id}", json_body={"note": note}).json()

    def metrics_csv(self, job_id: str) -> str:
        """Every metric of the job as CSV: one row per epoch, one column per metric."""
        return self._send("GET", f"/v1/jobs/{job_id}/metrics.csv").text

    def submit_pipeline(self, specs: list[Any], idempotency_key: str | None = None) -> list[dict[str, Any]]:
        """Submit several specs as one pipeline (POST /v1/pipelines), in order: a spec may name an earlier one as
        its teacher (`teacher: {"job": NAME}`) and waits for it. All are stored, or none; returns the jobs."""
        body = {"jobs": [self.spec_body(spec) for spec in specs]}
        key = idempotency_key or f"ttm-client-{uuid.uuid4().hex}"
        return self._send("POST", "/v1/pipelines", json_body=body, headers={"Idempotency-Key": key}).json()["items"]

    # ------------------------------------------------------------------------------------------ sweeps
    def sweep_body(self, sweep: Any) -> dict[str, Any]:
        """The JSON body for POST /v1/sweeps from a dict or a sweep file (YAML/JSON, checked here as the server
        will: every value of its space against its job); a local teacher file of its job is uploaded."""
        from ttm.sweeps import check_sweep

        base = Path(".")
        if isinstance(sweep, (str, Path)):
            import yaml

            from ttm.spec import SpecError

            base = Path(sweep).parent
            try:
                sweep = yaml.safe_load(Path(sweep).read_text())
            except FileNotFoundError:
                raise SpecError([("", f"no such sweep file: {sweep}")]) from None
        check_sweep(sweep)
        body = json.loads(json.dumps(sweep))
        teacher = body["job"].get("teacher")
        if isinstance(teacher, dict):  # relative to the file, as a job file's are
            for key in ("weights", "torchscript"):
                ref = teacher.get(key)
                if isinstance(ref, str) and not ref.startswith("art_") and not Path(ref).is_absolute():
                    teacher[key] = str(base / ref)
        body["job"] = self.spec_body(body["job"])
        return body

    def submit_sweep(self, sweep: Any, idempotency_key: str | None = None) -> dict[str, Any]:
        """Start a sweep (POST /v1/sweeps); returns it, its first trials queued."""
        key = idempotency_key or f"ttm-client-{uuid.uuid4().hex}"
        return self._send("POST", "/v1/sweeps", json_body=self.sweep_body(sweep),
                          headers={"Idempotency-Key": key}).json()

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        """A sweep: its state, its trials (parameters, state, metric, job) and, once it has ended, its best."""
        return self._get(f"/v1/sweeps/{sweep_id}")

    def sweeps(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._get("/v1/sweeps", limit=limit)["items"]

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._send("POST", f"/v1/sweeps/{sweep_id}/cancel").json()

    def wait_sweep(self, sweep_id: str, timeout: float | None = None, poll: float = 2.0,
                   on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll the sweep until it has ended; returns it. Raises WaitTimeout after `timeout` seconds (the sweep goes
        on)."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            sweep = self.sweep(sweep_id)
            if on_update is not None:
                on_update(sweep)
            if sweep["state"] != "running":
                return sweep
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"sweep {sweep_id} did not finish in time (it goes on)")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def jobs(self, state: str | list[str] | None = None, limit: int = 50, tags: Sequence[str] = (),
             search: str | None = None) -> list[dict[str, Any]]:
        """Your jobs (an admin: everyone's), newest first, at most `limit`; only those with every tag of `tags`,
        and `search` in the name or note (ignoring case), when given."""
        states = ",".join(state) if isinstance(state, (list, tuple)) else state
        out: list[dict[str, Any]] = []
        cursor = None
        while len(out) < limit:
            page = self._get("/v1/jobs", state=states, cursor=cursor, limit=min(200, limit - len(out)),
                             tag=list(tags) or None, q=search)
            out.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out

    def job(self, job_id: str) -> dict[str, Any]:
        return self._get(f"/v1/jobs/{job_id}")

    def queue(self, queue: str = "gpu", limit: int = 100) -> dict[str, Any]:
        """The queue in the order its jobs will start: {queue, queued, running, workers, job_seconds, items: [{position,
        priority, owner_usage_hours, owner_share, held_back, eta_seconds, id, name, owner}]} (others' jobs without
        id, name and owner)."""
        return self._get("/v1/queue", queue=queue, limit=limit)

    def me(self) -> dict[str, Any]:
        """Your share, limits and usage in the lab queue."""
        return self._get("/v1/users/me")

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
        stream = _EventStream(self, job_id, last_event_id, deadline)
        try:
            while True:
                # each event gets the policy's tries afresh: a stream that delivers is not failing
                try:
                    event = self.retry.call(stream.next_event, lambda: f"event stream of {job_id} dropped, "
                                                                       f"resuming after {stream.last or 'the start'}",
                                            retry_on=lambda e: isinstance(e, httpx.TransportError))
                except httpx.TransportError as err:
                    raise ServerUnreachable(f"the event stream of {job_id} keeps dropping: {_describe(err)}") from None
                if event is None:  # the server ends a stream only after a final state, which may precede `last`
                    if self.job(job_id)["state"] in FINAL_STATES:
                        return
                    time.sleep(self.retry.backoff)  # ended early (a server restarting): resume after a breath
                    continue
                yield event
                if event.type == "state" and event.data.get("state") in FINAL_STATES:
                    return
        finally:
            stream.close()

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
                 dest: str | Path | None = None, *, timeout: float | None = EXPORT_WAIT_S,
                 on_pending: Callable[[dict[str, Any]], None] | None = None) -> Path:
        """Save a checkpoint and check its sha256 against the server's ETag. `dest` is a file, or a folder for
        the server's file name (default: the current folder); `format` defaults to what dest's suffix says.

        An export (onnx, pt2, torchscript) that the job did not make is made by the server on this request: the
        server answers 202 until it is ready, and this waits, asking again after each Retry-After, for up to
        `timeout` seconds (None: no limit), calling `on_pending` with each 202's body; then raises WaitTimeout (the
        export goes on: ask again later)."""
        fmt = format or format_for(dest if dest is not None and not Path(dest).is_dir() else None)
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            try:
                return self._download_once(job_id, which, fmt, dest)
            except _Pending as pending:
                if on_pending is not None:
                    on_pending(pending.body)
                delay = pending.retry_after
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise WaitTimeout(f"job {job_id}'s {which} {fmt} export was still being made after "
                                          f"{timeout:g} s; it goes on: download it again later") from None
                    delay = min(delay, left)
                time.sleep(delay)

    def _download_once(self, job_id: str, which: str, fmt: str, dest: str | Path | None) -> Path:
        def once() -> Path:
            response = self._send("GET", f"/v1/jobs/{job_id}/checkpoints/{which}", stream=True,
                                  params={"format": fmt}, timeout=httpx.Timeout(self.timeout, read=120.0))
            if response.status_code == 202:  # an export being made on request: not a file yet
                response.read()
                response.close()
                raise _Pending.from_response(response)
            target = _target(dest, response, job_id, which, fmt)
            expected = response.headers.get("X-TTM-Sha256") or response.headers.get("ETag", "").strip('W/"')
            part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
            digest = hashlib.sha256()
            try:
                with part.open("wb") as f:
                    for chunk in response.iter_bytes(CHUNK):
                        digest.update(chunk)
                        f.write(chunk)
            except BaseException:  # a broken-off body is tried again from the start
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

        try:  # _send has retried the request; this retries a body that broke off
            return self.retry.call(once, f"download of {job_id} {which}",
                                   retry_on=lambda e: isinstance(e, httpx.TransportError))
        except httpx.TransportError as err:
            raise ServerUnreachable(f"download of {job_id} {which} keeps failing: {_describe(err)}") from None

    # ------------------------------------------------------------------------------------------ tracking
    def tracking(self, job_id: str) -> dict[str, Any]:
        """Where the job's export to the server's MLflow stands (state, attempts, last_error, run_id, run_url)."""
        return self._get(f"/v1/jobs/{job_id}/tracking")

    def download_tensorboard(self, job_id: str, dest: str | Path = ".") -> Path:
        """Unpack the job's TensorBoard events into `dest`/<job id>/ (its files there are replaced) and return that
        folder: `tensorboard --logdir dest` shows one run per job unpacked there. Every entry is checked before
        anything is written: regular files under <job id>/ only."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)

        def once() -> Path:
            response = self._send("GET", f"/v1/jobs/{job_id}/tensorboard", stream=True,
                                  timeout=httpx.Timeout(self.timeout, read=120.0))
            part = dest / f".{job_id}-tensorboard.{uuid.uuid4().hex[:8]}.tar.part"
            try:
                with part.open("wb") as f:
                    for chunk in response.iter_bytes(CHUNK):
                        f.write(chunk)
                unpack_events(part, dest, job_id)
            finally:
                response.close()
                part.unlink(missing_ok=True)
            return dest / job_id

        try:  # _send has retried the request; this retries a body that broke off
            return self.retry.call(once, f"TensorBoard events of {job_id}",
                                   retry_on=lambda e: isinstance(e, httpx.TransportError))
        except httpx.TransportError as err:
            raise ServerUnreachable(f"download of {job_id}'s TensorBoard events keeps failing: "
                                    f"{_describe(err)}") from None


class UnsafeArchive(ClientError):
    """An archive from the server holds an entry this client does not unpack; nothing was written."""


def unpack_events(tar_path: Path, dest: Path, job_id: str) -> list[str]:
    """Unpack a GET /v1/jobs/{id}/tensorboard tar into `dest`: only regular files whose names lie under
    `job_id`/ (no absolute name, no .., no link or device), all checked first; then tarfile's `data` filter."""
    import tarfile

    with tarfile.open(tar_path, mode="r:") as tar:
        members = tar.getmembers()
        for member in members:
            parts = member.name.split("/")
            if not member.isreg() or parts[0] != job_id or len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
                raise UnsafeArchive(f"the server's TensorBoard archive of {job_id} holds {member.name!r}, which is "
                                    f"not a file under {job_id}/; nothing was unpacked")
        tar.extractall(dest, members=members, filter="data")
    return [m.name for m in members]


class _Pending(Exception):
    """A 202: the server is making the export asked for; ask again after `retry_after` seconds."""

    def __init__(self, body: dict[str, Any], retry_after: float):
        super().__init__(body.get("message", "the export is being made"))
        self.body, self.retry_after = body, retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> _Pending:
        try:
            body = response.json()
        except ValueError:
            body = {}
        try:  # seconds (the server's); a date, or nonsense, is the default wait. Bounded: a server's typo
            retry_after = float(response.headers.get("Retry-After", ""))  # must not stall a CI job for an hour
        except ValueError:
            retry_after = PENDING_RETRY_S
        if not math.isfinite(retry_after):
            retry_after = PENDING_RETRY_S
        return cls(body if isinstance(body, dict) else {}, min(max(retry_after, 0.1), MAX_PENDING_RETRY_S))


class _EventStream:
    """One job's event stream, reopened after the last event seen whenever the connection drops."""

    def __init__(self, client: Client, job_id: str, last_event_id: str | None, deadline: float | None):
        self.client, self.job_id, self.last, self.deadline = client, job_id, last_event_id, deadline
        self.response: httpx.Response | None = None
        self.sse: Iterator[ServerSentEvent] | None = None

    def next_event(self) -> Event | None:
        """The next event, or None when the server ended the stream. A drop (or silence past the read timeout)
        raises httpx.TransportError with the connection closed, so the next call resumes after `last`."""
        try:
            while True:
                if self.sse is None:
                    self._open()
                assert self.sse is not None
                sse = next(self.sse, None)
                if sse is None:
                    self.close()
                    return None
                event = event_from_sse(sse)
                if event is not None:
                    if event.id:
                        self.last = event.id
                    return event
        except httpx.TransportError:
            self.close()
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise WaitTimeout(f"job {self.job_id} did not finish in time") from None
            raise

    def _open(self) -> None:
        read = self.client.stream_timeout
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"job {self.job_id} did not finish in time")
            read = max(0.05, min(read, remaining))
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last:
            headers["Last-Event-ID"] = self.last
        self.response = self.client._send("GET", f"/v1/jobs/{self.job_id}/events", stream=True, headers=headers,
                                          timeout=httpx.Timeout(self.client.timeout, read=read))
        self.sse = EventSource(self.response).iter_sse()

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
        self.response = self.sse = None


def _target(dest: str | Path | None, response: httpx.Response, job_id: str, which: str, fmt: str) -> Path:
    if dest is not None and not Path(dest).is_dir():
        target = Path(dest).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        return target
    match = re.search(r'filename="([^"/\\]+)"', response.headers.get("Content-Disposition", ""))
    name = match.group(1) if match else f"{job_id}-{checkpoint_name(which, fmt)}"
    return Path(dest or ".").expanduser() / name


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
