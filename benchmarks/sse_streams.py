"""/healthz latency while many Server-Sent Event streams are open (the "Safe to share" review: 200 streams made
/healthz take 25-31 s and most streams 500).

A real server (uvicorn, its own process) on a fresh PostgreSQL database; N clients open GET /v1/jobs/{id}/events on
one running job and keep reading, while a writer adds a metric row every second (so the streams are woken and send);
then /healthz is asked `--probes` times, one after another, and its latency percentiles are written. The same
probes before any stream is open give the baseline.

    python -m benchmarks.sse_streams --streams 500
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.common import write_result

REPO = Path(__file__).resolve().parents[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _probe(http: httpx.AsyncClient, n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        r = await http.get("/healthz")
        times.append((time.perf_counter() - start) * 1000)
        assert r.status_code == 200
        await asyncio.sleep(0.02)
    return {"p50_ms": round(statistics.median(times), 2), "p99_ms": round(_percentile(times, 0.99), 2),
            "max_ms": round(max(times), 2)}


async def _run(url: str, token: str, job_id: str, streams: int, probes: int) -> dict:
    limits = httpx.Limits(max_connections=streams + 20, max_keepalive_connections=streams + 20)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        baseline = await _probe(http, probes)
        opened, statuses, received = asyncio.Event(), [], [0]

        async def one() -> None:
            async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
                statuses.append(r.status_code)
                if len(statuses) == streams:
                    opened.set()
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        received[0] += 1

        started = time.perf_counter()
        tasks = [asyncio.create_task(one()) for _ in range(streams)]
        await asyncio.wait_for(opened.wait(), 120)
        open_s = time.perf_counter() - started
        await asyncio.sleep(2)
        loaded = await _probe(http, probes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    ok = statuses.count(200)
    return {"streams": streams, "streams_ok": ok, "streams_failed": len(statuses) - ok,
            "seconds_to_open_all": round(open_s, 2), "events_received": received[0], "probes": probes,
            "healthz_no_streams": baseline, "healthz_with_streams": loaded}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out")
    args = parser.parse_args()

    import psycopg

    from service.db import session_scope
    from service.migrate import upgrade_to_head
    from service.models import Job, Metric, utcnow
    from service.queries.users import create_user
    from service.settings import Settings
    from service.states import transition

    name = f"ttm_bench_sse_{os.getpid()}"
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    home = Path(tempfile.mkdtemp(prefix="ttm-sse-"))
    url = f"postgresql+psycopg://{args.pg.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    env = {**os.environ, "TTM_HOME": str(home), "TTM_DATABASE_URL": url, "TTM_AUTH": "token"}
    settings = Settings(home=home, database_url=url, auth="token")
    server = None
    try:
        upgrade_to_head(settings)
        with session_scope(settings) as session:
            user, token = create_user(session, "bench")
            from service.queries.jobs import insert_job

            job = insert_job(session, user.id, name="bench", spec={}, queue="cpu", idempotency_key=None,
                             request_hash=None)
            job_id = job.id
        with session_scope(settings) as session:
            transition(session, session.get(Job, job_id), "running", reason="bench")
        port = 8765
        server = subprocess.Popen([sys.executable, "-c", f"from service.app import run_server; "
                                   f"run_server(host='127.0.0.1', port={port}, log_level='warning')"],
                                  cwd=REPO, env=env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        time.sleep(3)  # the warm-up thread (imports, gc.freeze) settles

        stop = threading.Event()

        def writer() -> None:  # a training job's metric rows, one a second
            epoch = 0
            while not stop.wait(1.0):
                epoch += 1
                with session_scope(settings) as session:
                    session.add(Metric(job_id=job_id, epoch=epoch, name="train_loss", value=1 / epoch, at=utcnow()))

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        figures = asyncio.run(_run(base, token, job_id, args.streams, args.probes))
        stop.set()
        thread.join()
        write_result("sse_streams", figures, args.out)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        from service.db import dispose_engines

        dispose_engines()
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
