"""GET /v1/jobs/{id}/events against a real uvicorn: order, resume with Last-Event-ID without gaps or repeats,
keep-alive pings, and the end of the stream after a final state."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from sqlalchemy import select

from service.db import session_scope
from service.models import JobEvent, Metric

from svc_helpers import bearer, make_settings, run_job, serve, spec_ce


def read_events(response: httpx.Response, limit: int | None = None, comments: list[str] | None = None):
    """Parse text/event-stream into dicts {id, event, data}; stop after `limit` events or at the stream's end."""
    out, fields = [], {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                out.append({"id": fields.get("id"), "event": fields.get("event"), "data": json.loads(fields["data"])})
                if limit is not None and len(out) >= limit:
                    return out
            fields = {}
        elif line.startswith(":"):
            if comments is not None:
                comments.append(line)
        else:
            key, _, value = line.partition(":")
            fields[key] = value[1:] if value.startswith(" ") else value
    return out


def stored_rows(settings, job_id: str) -> set[tuple[str, int]]:
    with session_scope(settings) as session:
        events = session.scalars(select(JobEvent.id).where(JobEvent.job_id == job_id)).all()
        metrics = session.scalars(select(Metric.id).where(Metric.job_id == job_id)).all()
    return {("state", i) for i in events} | {("metric", i) for i in metrics}


def seqs(events) -> list[tuple[str, int]]:
    return [(e["event"], e["data"]["seq"]) for e in events]


def test_replay_of_a_finished_job_ends(live_server, settings, users):
    with httpx.Client(base_url=live_server, timeout=20) as http:
        job = http.post("/v1/jobs", json=spec_ce(), headers=bearer(users.alice)).json()
        run_job(settings, job["id"], to="succeeded", epochs=3)
        with http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=bearer(users.alice)) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = read_events(r)  # returns only because the server ends the stream
    assert set(seqs(events)) == stored_rows(settings, job["id"]) and len(events) == 3 + 6
    assert [e["data"]["state"] for e in events if e["event"] == "state"] == ["queued", "running", "succeeded"]
    assert events[-1]["event"] == "state" and events[-1]["data"]["state"] == "succeeded"
    metrics = [e["data"] for e in events if e["event"] == "metric"]
    assert [(m["epoch"], m["name"]) for m in metrics] == [(e, n) for e in (1, 2, 3)
                                                           for n in ("train_loss", "test_top1")]
    # ids: both cursors, never going back
    cursors = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert all(a[0] <= b[0] and a[1] <= b[1] and a != b for a, b in zip(cursors, cursors[1:], strict=False))


def test_resume_with_last_event_id(live_server, settings, users):
    with httpx.Client(base_url=live_server, timeout=20) as http:
        job = http.post("/v1/jobs", json=spec_ce(), headers=bearer(users.alice)).json()
        run_job(settings, job["id"], epochs=2)
        url = f"/v1/jobs/{job['id']}/events"
        with http.stream("GET", url, headers=bearer(users.alice)) as r:
            first = read_events(r, limit=3)
        # the client is gone; the worker writes on
        run_job(settings, job["id"], epochs=4, from_epoch=3)
        run_job(settings, job["id"], to="succeeded")
        with http.stream("GET", url, headers={**bearer(users.alice), "Last-Event-ID": first[-1]["id"]}) as r:
            rest = read_events(r)
        # ?after= works like the header (for clients that cannot set headers)
        with http.stream("GET", f"{url}?after={first[-1]['id']}", headers=bearer(users.alice)) as r:
            assert seqs(read_events(r)) == seqs(rest)
        assert http.get(url, headers={**bearer(users.alice), "Last-Event-ID": "garbage"}).status_code == 400
    both = seqs(first) + seqs(rest)
    assert len(both) == len(set(both)), "an event was sent twice"
    assert set(both) == stored_rows(settings, job["id"]), "an event was skipped"
    assert rest[-1]["data"]["state"] == "succeeded"


def test_live_stream_with_pings(db_url, tmp_path, users):
    settings = make_settings(tmp_path, db_url, sse_ping_seconds=0.5)
    with serve(settings) as url, httpx.Client(base_url=url, timeout=20) as http:
        job = http.post("/v1/jobs", json=spec_ce(), headers=bearer(users.alice)).json()

        def worker():
            time.sleep(1.5)
            run_job(settings, job["id"], epochs=1)
            time.sleep(0.5)
            run_job(settings, job["id"], epochs=0, to="failed")

        thread = threading.Thread(target=worker)
        comments: list[str] = []
        started = time.monotonic()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=bearer(users.alice)) as r:
            thread.start()
            events = read_events(r, comments=comments)
        thread.join()
    assert time.monotonic() - started >= 1.5
    assert any("ping" in c for c in comments), comments
    assert [e["data"].get("state") for e in events if e["event"] == "state"] == ["queued", "running", "failed"]
    assert [e["data"]["name"] for e in events if e["event"] == "metric"] == ["train_loss", "test_top1"]


@pytest.mark.parametrize("caller, status", [("bob", 404), (None, 401), ("bad", 401)])
def test_stream_refusals(client, users, caller, status):
    job = client.post("/v1/jobs", json=spec_ce(), headers=bearer(users.alice)).json()
    token = {"bob": users.bob, "bad": "ttm_bad", None: None}[caller]
    assert client.get(f"/v1/jobs/{job['id']}/events", headers=bearer(token)).status_code == status


@pytest.mark.parametrize("value", [str(2**63) + "-0", "0-" + "9" * 30, "1-2\x00", "\x00", "1_0-2", "١-2", "-1-0"])
def test_bad_last_event_id_is_400(client, users, value):
    job = client.post("/v1/jobs", json=spec_ce(), headers=bearer(users.alice)).json()
    r = client.get(f"/v1/jobs/{job['id']}/events", params={"after": value}, headers=bearer(users.alice))
    assert r.status_code == 400 and r.json()["error"]["field"] == "Last-Event-ID", r.text
    if value.isascii() and "\x00" not in value:  # a header carries neither a NUL nor non-ASCII here
        r = client.get(f"/v1/jobs/{job['id']}/events", headers={**bearer(users.alice), "Last-Event-ID": value})
        assert r.status_code == 400, r.text


def test_nul_in_job_id_is_400(client, users):
    r = client.get("/v1/jobs/job_%00/events", headers=bearer(users.alice))  # refused before any route
    assert r.status_code == 400 and "NUL" in r.json()["error"]["message"]


def test_last_event_id_documented_as_a_pattern(client):
    params = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/events"]["get"]["parameters"]
    for p in params:
        if p["name"] in ("Last-Event-ID", "after"):
            assert "pattern" in str(p["schema"]), p


@pytest.mark.parametrize("backend", ["postgresql"])
def test_200_streams_at_once_leave_the_server_answering(live_server, settings, users):
    """Each open stream used to hold a pooled connection: 200 of them gave 500s (QueuePool limit) and /healthz
    took 25-31 s. Now the streams wait holding none."""
    import asyncio
    import concurrent.futures

    with httpx.Client(base_url=live_server, timeout=20) as http:
        job = http.post("/v1/jobs", json=spec_ce(), headers=bearer(users.alice)).json()
    url = f"/v1/jobs/{job['id']}/events"

    async def scenario() -> None:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=live_server, timeout=60, limits=limits) as http:
            opened = asyncio.Event()
            first_events: list[dict] = []
            count = 0

            async def one_stream() -> None:
                nonlocal count
                async with http.stream("GET", url, headers=bearer(users.alice)) as r:
                    assert r.status_code == 200, await r.aread()
                    lines = r.aiter_lines()
                    async for line in lines:  # the queued event: the stream is open and read
                        if line.startswith("data:"):
                            first_events.append(json.loads(line[5:]))
                            break
                    count += 1
                    if count == 200:
                        opened.set()
                    async for line in lines:  # until the job ends
                        if '"state":"failed"' in line:
                            return

            tasks = [asyncio.create_task(one_stream()) for _ in range(200)]
            await asyncio.wait_for(opened.wait(), 60)
            health = await http.get("/healthz", timeout=10)  # its latency is benchmarks/sse_streams.py's
            assert health.status_code == 200
            again = await http.get(f"/v1/jobs/{job['id']}", headers=bearer(users.alice))  # reads still get a connection
            assert again.status_code == 200
            await asyncio.to_thread(run_job, settings, job["id"], to="failed")
            await asyncio.wait_for(asyncio.gather(*tasks), 60)  # every stream saw the end
            assert len(first_events) == 200 and {e["state"] for e in first_events} == {"queued"}

    # a thread of its own: a session's Playwright (the browser tests) keeps an event loop in the main thread
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, scenario()).result()


def test_a_running_jobs_place_in_its_epoch_is_streamed_and_shown(live_server, settings, users):
    """progress events (not stored rows: their id stays the last row's) while the job runs; none after its end."""
    from service.models import Job

    with httpx.Client(base_url=live_server, timeout=20) as http:
        job = http.post("/v1/jobs", json=spec_ce(), headers=bearer(users.alice)).json()
        run_job(settings, job["id"], epochs=1)
        with session_scope(settings) as session:
            session.get(Job, job["id"]).progress = {"epoch": 2, "step": 40, "steps": 235}
        shown = http.get(f"/v1/jobs/{job['id']}", headers=bearer(users.alice)).json()
        assert shown["progress"] == {"epoch": 2, "step": 40, "steps": 235}
        with http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=bearer(users.alice)) as r:
            events = read_events(r, limit=5)  # queued, running, two metrics, then where epoch 2 is
        assert events[-1]["event"] == "progress" and events[-1]["data"] == {"epoch": 2, "step": 40, "steps": 235}
        assert events[-1]["id"] == events[-2]["id"]
        run_job(settings, job["id"], to="succeeded")
        assert http.get(f"/v1/jobs/{job['id']}", headers=bearer(users.alice)).json()["progress"] is None
        with http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=bearer(users.alice)) as r:
            assert "progress" not in [e["event"] for e in read_events(r)]
