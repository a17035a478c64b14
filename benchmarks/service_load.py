"""The job server under load, on PostgreSQL and Redis on this machine, measured from the client's side.

(1) API: `ttm serve --workers 0` (the API and the reconciler; nothing trains) on a fresh PostgreSQL database and a
    flushed Redis database. One non-admin user. A closed-loop load generator (one process, asyncio, one HTTP/1.1
    keep-alive connection per concurrent client) keeps N requests in flight for a fixed time, at N = 1, 8 and 32,
    twice: with httpx.AsyncClient (what a Python user would write), then with a bare asyncio-streams client (raw)
    that spends about a tenth of httpx's CPU per request, so that more of the two cores is left to the server. For:
      POST /v1/jobs              a small valid spec (digits, resnet8, CE; no teacher), with an Idempotency-Key as the
                                 SDK sends; every request creates a queued job (and a Redis message)
      POST /v1/jobs + teacher    the same with a KD loss and a teacher uploaded as an artifact: every submit resolves
                                 the artifact and compares its recorded tensor shapes with resnet8's (from the
                                 inspection subprocess, kept per process after the first submit, timed apart)
      GET /v1/jobs/{id}          random jobs among those created
    Latency is per request, from sending to the whole answer read, on the client (it includes the time a ready
    answer waits for the client's event loop: with 32 clients in one process that is part of what is measured).
    Throughput is the requests finished in the measuring window over its length (a second's warm-up first).
    The generator runs on the same two cores as the server and PostgreSQL: its CPU time, the server's and the
    whole machine's busy share are recorded per level, with a speed probe
    (the CPU time of a fixed pure-Python loop just before the level: this VM's speed varies by up to 2x).

(2) Latency with a worker: `ttm serve --workers 1` on another fresh database. After a warm-up job (the worker idle
    again), TRIALS tiny jobs (digits, resnet8, CE, 3 epochs), one at a time:
      submit → running   from sending POST /v1/jobs to the first GET /v1/jobs/{id} (polled every 20 ms) that says
                         `running`; also the server's own clocks (job created_at → the `running` state event's at)
      epoch end → SSE    an SSE client (the SDK's `events`) follows the job from the submit on; for each epoch, the
                         time its first metric row arrives at the client minus the epoch's end, which is the
                         timestamp of the trainer's "epoch N/M" line in train.log (written once the epoch's
                         evaluation and checkpoints are done, just before the metric rows go to the database; read
                         through GET /v1/jobs/{id}/log). The client and the trainer share this machine's clock.
                         Also: arrival minus the metric row's `at` (the worker's clock when it built the rows).

    python -m benchmarks.service_load                  # both parts, about 5 minutes
    python -m benchmarks.service_load --duration 5 --trials 3

Writes benchmarks/results/service_load-cpu.json.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_result
from ttm.demo import free_port, start_server, stop_server, wait_ready

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379"
LEVELS = (1, 8, 32)
# issue 12's floors: what users feel is far below these (a job trains for minutes to hours)
TARGETS = {"post_rps_at_32": 150.0, "post_p99_ms_at_32": 100.0, "get_rps_at_32": 300.0, "submit_to_running_s": 1.0,
           "epoch_to_sse_s": 1.0}


def small_spec(name: str, epochs: int = 1, teacher: str | None = None) -> dict:
    spec: dict[str, Any] = {"name": name, "student": {"arch": "resnet8"}, "loss": {"kind": "ce"},
                            "dataset": {"name": "digits"}, "train": {"epochs": epochs, "batch_size": 128, "lr": 0.1,
                                                                     "schedule": {"kind": "cosine"}, "seed": 0},
                            "resources": {"gpus": 0}}
    if teacher:
        spec["teacher"] = {"arch": "resnet8", "weights": teacher}
        spec["loss"] = {"kind": "kd", "temperature": 4.0, "kd_weight": 0.9, "ce_weight": 0.1}
    return spec


# ---------------------------------------------------------------------------------------------- the services
@contextmanager
def postgres_redis(redis_db: int = 7) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database (dropped after) and a flushed Redis database; yields the server's TTM_* env."""
    import psycopg
    import redis

    name = f"ttm_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    broker = redis.Redis.from_url(f"{REDIS}/{redis_db}")
    broker.flushdb()
    try:
        # one user submits the whole load: lift the queued-jobs limit per user (500) that would answer 429
        yield {"TTM_DATABASE_URL": f"{PG_URL}/{name}", "TTM_BROKER_URL": f"{REDIS}/{redis_db}",
               "TTM_LIMITS_MAX_QUEUED_PER_USER": "1000000000"}
    finally:
        broker.flushdb()
        broker.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def server(workers: int, env: dict[str, str], port: int, serve_args: tuple[str, ...] = (),
           ) -> Iterator[tuple[subprocess.Popen, str, str]]:
    home = Path(tempfile.mkdtemp(prefix="ttm-load-"))
    proc, token = start_server(home, free_port(port), workers, env=env, admin=False, serve_args=serve_args)
    url = f"http://127.0.0.1:{_port_of(proc)}"
    proc.home = home  # type: ignore[attr-defined]  # where its serve.log is
    try:
        yield proc, url, token
    finally:
        stop_server(proc)
        shutil.rmtree(home, ignore_errors=True)


def wait_warm(proc: subprocess.Popen, processes: int, timeout: float = 180) -> float:
    """Until every API process has started (uvicorn's line, once per process); returns the seconds waited."""
    WARM_UP_DONE = "Application startup complete"

    start = time.monotonic()
    log = Path(proc.home) / "serve.log"  # type: ignore[attr-defined]
    while log.read_text(errors="replace").count(WARM_UP_DONE) < processes:
        if time.monotonic() - start > timeout:
            raise SystemExit(f"the API processes did not start in {timeout:.0f} s; see {log}")
        time.sleep(0.5)
    return round(time.monotonic() - start, 1)


def _port_of(proc: subprocess.Popen) -> str:
    args = proc.args
    return args[args.index("--port") + 1]


# ---------------------------------------------------------------------------------------------- CPU accounting
TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (from /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICK
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        tree.update(kids)
        frontier.extend(kids)
    return sum(times.get(p, 0.0) for p in tree)


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------------------------------------- load
def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class RawConnection:
    """A bare HTTP/1.1 keep-alive connection over asyncio streams: a tenth of httpx's CPU per request, so that
    less of the two cores goes to the generator. It speaks just enough HTTP for this server (Content-Length or
    chunked bodies)."""

    def __init__(self, url: str, headers: dict[str, str]):
        host_port = url.split("://", 1)[1].rstrip("/")
        self.host, self.port = host_port.rsplit(":", 1)
        self.fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host_port, **headers}.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None) -> int:
        import json as jsonlib

        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, int(self.port))
        body = jsonlib.dumps(json, separators=(",", ":")).encode() if json is not None else b""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if json is not None:
            extra += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(f"{method} {path} HTTP/1.1\r\n{self.fixed}{extra}\r\n".encode() + body)
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in fields:
            await self.reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        if fields.get("connection") == "close":
            self.writer.close()
            self.reader = self.writer = None
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def closed_loop(url: str, token: str, concurrency: int, duration: float, warmup: float, make_request,
                      generator: str = "httpx") -> dict[str, Any]:
    """`concurrency` clients, each sending its next request as soon as the last is answered, for warmup + duration
    seconds; requests begun in the warm-up are not counted. `generator`: httpx (AsyncClient, a pool of
    `concurrency` keep-alive connections) or raw (one RawConnection per client)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    answered = 0  # every request, warm-up included: what the CPU times are divided by
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60.0) as client:
        raws = [RawConnection(url, headers) for _ in range(concurrency)] if generator == "raw" else []
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + duration

        async def one_client(i: int) -> None:
            nonlocal answered
            rng = random.Random(i)
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                method, path, kwargs = make_request(rng)
                try:
                    if raws:
                        status = str(await raws[i].request(method, path, **kwargs))
                    else:
                        status = str((await client.request(method, path, **kwargs)).status_code)
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError) as err:
                    status = type(err).__name__
                    if raws:
                        await raws[i].close()
                        raws[i] = RawConnection(url, headers)
                done = time.perf_counter()
                answered += 1
                if sent >= measure_from and done <= stop_at:
                    latencies.append(done - sent)
                    statuses[status] = statuses.get(status, 0) + 1

        try:
            await asyncio.gather(*(one_client(i) for i in range(concurrency)))
        finally:
            for raw in raws:
                await raw.close()
    latencies.sort()
    ok = sum(n for s, n in statuses.items() if s.startswith("2"))
    return {"concurrency": concurrency, "generator": generator, "requests": len(latencies), "ok": ok,
            "requests_with_warmup": answered,
            "statuses": statuses, "throughput_rps": round(len(latencies) / duration, 1),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p90_ms": round(percentile(latencies, 0.90) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "max_ms": round(latencies[-1] * 1000, 2) if latencies else None}


def queued_jobs(database_url: str) -> int:
    """Queued jobs in the benchmark's database: what every queue position (POST, GET) counts through."""
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return conn.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()[0]


def speed_probe_ms() -> float:
    """CPU milliseconds of a fixed pure-Python workload, taken before each level while the machine is otherwise
    quiet: this shared VM's speed varies by up to 2x within an hour, so each level's figures come with it (smaller
    is faster). The best of five, so that one preemption does not count."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        total = 0
        for i in range(200_000):
            total += i * i % 7
        best = min(best, time.process_time() - start)
    return round(best * 1000, 1)


def measure_level(proc: subprocess.Popen, url: str, token: str, concurrency: int, duration: float, warmup: float,
                  make_request, generator: str, database_url: str) -> dict[str, Any]:
    depth = queued_jobs(database_url)
    probe = speed_probe_ms()
    server0, self0, (busy0, total0) = tree_cpu_seconds(proc.pid), self_cpu_seconds(), machine_busy()
    wall0 = time.perf_counter()
    figures = asyncio.run(closed_loop(url, token, concurrency, duration, warmup, make_request, generator))
    wall = time.perf_counter() - wall0
    busy1, total1 = machine_busy()
    n = max(1, figures["requests_with_warmup"])  # the CPU times cover the warm-up too
    figures.update({
        "server_cpu_ms_per_request": round((tree_cpu_seconds(proc.pid) - server0) * 1000 / n, 3),
        "generator_cpu_ms_per_request": round((self_cpu_seconds() - self0) * 1000 / n, 3),
        "machine_busy_share": round((busy1 - busy0) / max(1, total1 - total0), 3),
        "wall_s": round(wall, 1), "queued_jobs_at_start": depth,
        "loadavg_1min_after": round(os.getloadavg()[0], 2), "speed_probe_ms": probe})
    print(f"    {generator:5s} N={concurrency:2d}: {figures['throughput_rps']:7.1f} req/s  "
          f"p50 {figures['p50_ms']:7.2f} ms  "
          f"p99 {figures['p99_ms']:7.2f} ms  statuses {figures['statuses']}  server "
          f"{figures['server_cpu_ms_per_request']} ms CPU/req, generator {figures['generator_cpu_ms_per_request']} "
          f"ms CPU/req, machine busy {figures['machine_busy_share']:.0%}, load {figures['loadavg_1min_after']}, "
          f"{depth} queued, speed probe {probe} ms",
          flush=True)
    return figures


def make_teacher_file(folder: Path) -> Path:
    """A resnet8 for digits (1 channel, 10 classes), freshly initialised, as safetensors: a valid teacher."""
    import torch
    from safetensors.torch import save_file

    from ttm.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1)
    path = folder / "teacher-resnet8-digits.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def api_part(args) -> dict[str, Any]:
    from ttm.client import Client

    out: dict[str, Any] = {}
    serve_args = (f"--api-processes={args.api_processes}", "--access-log" if args.access_log else "--no-access-log")
    out["serve_args"] = ["--workers=0", *serve_args]
    with postgres_redis(args.redis_db) as env, server(0, env, args.port, serve_args) as (proc, url, token):
        with Client(url, token) as client:
            wait_ready(client, proc)
            out["warm_up_wait_s"] = wait_warm(proc, args.api_processes)
            with tempfile.TemporaryDirectory(prefix="ttm-load-") as folder:
                artifact = client.upload(make_teacher_file(Path(folder)))
            t0 = time.perf_counter()
            first = client.submit(small_spec("load-first-teacher", teacher=artifact["id"]))
            out["first_submit_with_new_teacher_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            t0 = time.perf_counter()
            client.submit(small_spec("load-second-teacher", teacher=artifact["id"]))
            out["second_submit_same_teacher_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            ids = [first["id"]] + [client.submit(small_spec(f"load-pool-{i}"))["id"] for i in range(200)]
        print(f"API on {url} (PostgreSQL + Redis, ttm serve {' '.join(out['serve_args'])}); first submit with a "
              f"new teacher {out['first_submit_with_new_teacher_ms']} ms, the next "
              f"{out['second_submit_same_teacher_ms']} ms", flush=True)

        plain = small_spec("load-post")
        with_teacher = small_spec("load-post-teacher", teacher=artifact["id"])

        def post(body: dict):
            def make(_rng):
                return "POST", "/v1/jobs", {"json": body, "headers": {"Idempotency-Key": uuid.uuid4().hex}}
            return make

        def get(rng: random.Random):
            return "GET", f"/v1/jobs/{rng.choice(ids)}", {}

        db = env["TTM_DATABASE_URL"]
        for name, make in (("post_jobs", post(plain)), ("post_jobs_teacher", post(with_teacher)),
                           ("get_job", get)):
            print(f"  {name}", flush=True)
            out[name] = [measure_level(proc, url, token, n, args.duration, args.warmup, make, generator, db)
                         for generator in args.generators for n in args.levels]
        # every POST above counted the queued jobs ahead of it, and the queue grew: the first level again, deep
        print("  post_jobs_deep_queue (the plain POST again, with every job above still queued)", flush=True)
        out["post_jobs_deep_queue"] = [measure_level(proc, url, token, n, args.duration, args.warmup, post(plain),
                                                     args.generators[-1], db) for n in (1, max(args.levels))]
        with Client(url, token) as client:
            out["jobs_in_database_at_end"] = len(client.jobs(limit=100_000))
    return out


# ---------------------------------------------------------------------------------------------- with a worker
def _log_epoch_ends(text: str) -> dict[int, float]:
    """{epoch: unix time} from train.log's "epoch N/M" lines (asctime: local time, milliseconds)."""
    ends = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 4 and parts[3] == "epoch" and "/" in parts[4]:
            stamp = datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S,%f").astimezone()
            ends[int(parts[4].split("/")[0])] = stamp.timestamp()
    return ends


def _iso(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def one_trial(url: str, token: str, name: str, epochs: int) -> dict[str, Any]:
    from ttm.client import Client

    arrivals: list[tuple[float, Any]] = []
    with Client(url, token) as client, Client(url, token) as poller:
        sent = time.time()
        job = client.submit(small_spec(name, epochs=epochs))
        answered = time.time()

        def follow() -> None:
            with Client(url, token) as sse:
                for event in sse.events(job["id"]):
                    arrivals.append((time.time(), event))

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        seen_running = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = poller.job(job["id"])["state"]
            if state != "queued":
                seen_running = time.time() if state == "running" else None
                break
            time.sleep(0.02)
        thread.join(timeout=300)
        final = client.job(job["id"])
        ends = _log_epoch_ends(client.log(job["id"]))
    running = next((e for t, e in arrivals if e.type == "state" and e.data.get("state") == "running"), None)
    running_arrival = next((t for t, e in arrivals if e.type == "state" and e.data.get("state") == "running"), None)
    epochs_out = []
    for epoch in sorted(ends):
        rows = [(t, e) for t, e in arrivals if e.type == "metric" and e.data.get("epoch") == epoch]
        if not rows:
            continue
        first_t, first_e = rows[0]
        epochs_out.append({"epoch": epoch, "log_to_sse_s": round(first_t - ends[epoch], 3),
                           "row_at_to_sse_s": round(first_t - _iso(first_e.data["at"]), 3),
                           "log_to_row_at_s": round(_iso(first_e.data["at"]) - ends[epoch], 3),
                           "rows": len(rows)})
    return {"job": job["id"], "state": final["state"],
            "submit_http_ms": round((answered - sent) * 1000, 1),
            "submit_to_running_polled_s": round(seen_running - sent, 3) if seen_running else None,
            "submit_to_running_sse_s": round(running_arrival - sent, 3) if running_arrival else None,
            "created_to_running_server_s": (round(_iso(running.data["at"]) - _iso(final["created_at"]), 3)
                                            if running else None),
            "epochs": epochs_out}


def worker_part(args) -> dict[str, Any]:
    from ttm.client import Client

    trials = []
    with postgres_redis(args.redis_db) as env, server(1, env, args.port + 1) as (proc, url, token):
        with Client(url, token) as client:
            wait_ready(client, proc)
            warm = client.wait(client.submit(small_spec("warm-up", epochs=1))["id"], timeout=300)
            print(f"worker on {url}: warm-up job {warm['state']}", flush=True)
        for i in range(args.trials):
            time.sleep(2)  # the worker is idle: its last job is recorded and it waits on Redis
            trial = one_trial(url, token, f"latency-{i}", args.epochs)
            trial["loadavg_1min"] = round(os.getloadavg()[0], 2)
            trials.append(trial)
            print(f"  trial {i}: submit→running {trial['submit_to_running_polled_s']} s (polled), "
                  f"{trial['submit_to_running_sse_s']} s (SSE), server {trial['created_to_running_server_s']} s; "
                  f"epoch end→SSE {[e['log_to_sse_s'] for e in trial['epochs']]} s; load {trial['loadavg_1min']}",
                  flush=True)

    def stats(values: list[float]) -> dict[str, Any]:
        values = sorted(v for v in values if v is not None)
        return {"n": len(values), "median": round(statistics.median(values), 3) if values else None,
                "max": max(values, default=None), "min": min(values, default=None)}

    per_epoch = [e for t in trials for e in t["epochs"]]
    return {"trials": trials, "job_spec": small_spec("latency-i", epochs=args.epochs),
            "submit_to_running_polled_s": stats([t["submit_to_running_polled_s"] for t in trials]),
            "submit_to_running_sse_s": stats([t["submit_to_running_sse_s"] for t in trials]),
            "created_to_running_server_s": stats([t["created_to_running_server_s"] for t in trials]),
            "epoch_end_to_sse_s": stats([e["log_to_sse_s"] for e in per_epoch]),
            "metric_row_at_to_sse_s": stats([e["row_at_to_sse_s"] for e in per_epoch]),
            "epoch_end_to_metric_row_at_s": stats([e["log_to_row_at_s"] for e in per_epoch])}


def verdicts(api: dict | None, lat: dict | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if api:
        for gen in sorted({r["generator"] for r in api["get_job"]}):
            post32 = next((r for r in api["post_jobs"] if r["concurrency"] == 32 and r["generator"] == gen), None)
            get32 = next((r for r in api["get_job"] if r["concurrency"] == 32 and r["generator"] == gen), None)
            if post32:
                out[f"post_rps_at_32 ({gen})"] = {"value": post32["throughput_rps"], "target": ">= 150",
                                                  "met": post32["throughput_rps"] >= TARGETS["post_rps_at_32"]}
                out[f"post_p99_ms_at_32 ({gen})"] = {"value": post32["p99_ms"], "target": "<= 100",
                                                     "met": post32["p99_ms"] <= TARGETS["post_p99_ms_at_32"]}
            if get32:
                out[f"get_rps_at_32 ({gen})"] = {"value": get32["throughput_rps"], "target": ">= 300",
                                                 "met": get32["throughput_rps"] >= TARGETS["get_rps_at_32"]}
    if lat:
        worst = lat["submit_to_running_polled_s"]["max"]
        out["submit_to_running_s"] = {"value_max": worst, "median": lat["submit_to_running_polled_s"]["median"],
                                      "target": "<= 1", "met": worst is not None and worst <= 1.0}
        worst = lat["epoch_end_to_sse_s"]["max"]
        out["epoch_end_to_sse_s"] = {"value_max": worst, "median": lat["epoch_end_to_sse_s"]["median"],
                                     "target": "<= 1", "met": worst is not None and worst <= 1.0}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.service_load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrent clients")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    ap.add_argument("--generators", nargs="+", choices=("httpx", "raw"), default=["httpx", "raw"],
                    help="load generators to run, one after the other")
    ap.add_argument("--trials", type=int, default=5, help="jobs timed with an idle worker")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each timed job")
    ap.add_argument("--parts", nargs="+", choices=("api", "worker"), default=["api", "worker"])
    ap.add_argument("--redis-db", type=int, default=7, help="Redis database number (flushed before and after)")
    ap.add_argument("--port", type=int, default=8020)
    ap.add_argument("--api-processes", type=int, default=2,
                    help="ttm serve --api-processes for the API part (one per core of this machine)")
    ap.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=False,
                    help="ttm serve --access-log (a line per request; off in the measured lab setup)")
    ap.add_argument("--out", help="result file (default benchmarks/results/service_load-cpu.json)")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    api = api_part(args) if "api" in args.parts else None
    lat = worker_part(args) if "worker" in args.parts else None
    figures = {"services": "PostgreSQL 127.0.0.1:5432 (fresh database per part) + Redis 127.0.0.1:6379",
               "generator": "one process, asyncio, closed loop, one HTTP/1.1 keep-alive connection per client; "
                            "httpx.AsyncClient, then a bare asyncio-streams client (raw); on the same 2 cores as "
                            "the server and PostgreSQL",
               "duration_s": args.duration, "warmup_s": args.warmup,
               "loadavg_before": [round(v, 2) for v in load_before],
               "loadavg_after": [round(v, 2) for v in os.getloadavg()],
               "api": api, "worker_latency": lat, "targets": verdicts(api, lat)}
    write_result("service_load", figures, out=args.out or str(RESULTS / "service_load-cpu.json"))


if __name__ == "__main__":
    main()
