"""The main job of the README (`./dev demo`): a real distillation through the job server, on the embedded defaults.

It starts `ttm serve` (SQLite, kombu's filesystem broker, artifacts under TTM_HOME; one worker), creates a user,
and then, through the HTTP API like any client:
1. uploads the zoo's Fashion-MNIST resnet20 teacher (ttm/zoo, 92 % on the whole test set) with POST /v1/artifacts,
   exactly as a user brings weights trained elsewhere;
2. trains four resnet8 students with CE (no teacher), KD, TTM and WTTM from it;
3. shows the chain in a short form: a teacher trained by the service itself, then a WTTM student from that job;
4. downloads the best WTTM student, and prints a table of accuracy, mean entropy H(q) and time per job, with the
   dashboard's URL.

Default size (DEMO_SIZE): the first 6,000 training images of Fashion-MNIST, the whole test split, 4 epochs per
student, batch 128, cosine schedule from lr 0.1; the loss settings are the paper's (KD T = 4, λ = 0.9; TTM γ = 0.3,
β = 7; WTTM γ = 0.3, β = 1.5: its resnet56 → resnet20 values, Table 8). `python -m benchmarks.reproduce --size
demo` runs the same students over 3 seeds (docs/BENCHMARKS.md): every distilled student beats CE by 1.8–2.1
points, WTTM ≥ TTM, TTM/WTTM keep a far higher entropy than KD; TTM and KD are equal within noise at this size.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEMO_TEACHER = "fashion_mnist/resnet20"
DEMO_SIZE = {"train_size": 6_000, "test_size": 10_000, "student_epochs": 4, "batch_size": 128, "lr": 0.1}
STUDENT_LOSSES: dict[str, dict[str, Any]] = {
    "ce": {"kind": "ce"},
    "kd": {"kind": "kd", "temperature": 4.0, "kd_weight": 0.9, "ce_weight": 0.1},
    "ttm": {"kind": "ttm", "gamma": 0.3, "beta": 7.0},
    "wttm": {"kind": "wttm", "gamma": 0.3, "beta": 1.5},
}


def upload_zoo_teacher(client, name: str) -> tuple[dict, Any]:
    """Upload a zoo teacher's file as a user uploads their own; returns the teacher spec naming the artifact."""
    from ttm import zoo

    entry = zoo.get(name)
    artifact = client.upload(entry.path)
    return {"arch": entry.arch, "weights": artifact["id"]}, entry


def job_spec(name: str, arch: str, loss: dict, args, teacher: dict | None = None) -> dict:
    spec = {"name": name, "student": {"arch": arch}, "loss": loss,
            "dataset": {"name": "fashion_mnist", "subset": {"train": args.train_size, "test": args.test_size}},
            "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": DEMO_SIZE["lr"],
                      "schedule": {"kind": "cosine"}, "seed": args.seed},
            "resources": {"gpus": 0}}
    if teacher:
        spec["teacher"] = teacher
    return spec


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError("no free port")


def ttm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ttm.cli", *args]


def start_server(home: Path, port: int, workers: int, env: dict[str, str] | None = None,
                 admin: bool = True, serve_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`ttm serve` on the embedded defaults, plus `env` (e.g. TTM_DATABASE_URL and TTM_BROKER_URL for PostgreSQL
    and Redis); returns the server and the token of a new user (an admin unless `admin` is false)."""
    base = {**os.environ, "TTM_HOME": str(home)}
    for var in ("TTM_DATABASE_URL", "TTM_BROKER_URL", "TTM_ARTIFACT_DIR"):  # the embedded defaults, unless `env`
        base.pop(var, None)
    env = {**base, **(env or {})}
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(ttm_command("admin", "migrate"), env=env, check=True, capture_output=True)
    user = ["admin", "user", "create", f"demo-{time.time_ns()}"] + (["--admin"] if admin else [])
    token = subprocess.run(ttm_command(*user), env=env, check=True, capture_output=True, text=True).stdout.strip()
    log = open(home / "serve.log", "ab")
    server = subprocess.Popen(ttm_command("serve", "--host", "127.0.0.1", "--port", str(port), "--workers",
                                          str(workers), *serve_args), env=env, stdout=log, stderr=log,
                              start_new_session=True)
    return server, token


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM: the workers hand their jobs back and the API drains; killed after a minute."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def wait_ready(client, server: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"ttm serve exited with code {server.returncode}; see its log")
        try:
            if client._http.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("ttm serve did not become ready in time")


def final_metrics(client, job_id: str) -> dict[str, float]:
    """The metrics of the epoch with the best test top-1 (the checkpoint that `best` downloads)."""
    by_epoch: dict[int, dict[str, float]] = {}
    for row in client.metrics(job_id):
        by_epoch.setdefault(row["epoch"], {})[row["name"]] = row["value"]
    epochs = [e for e in by_epoch if e > 0 and "test/top1" in by_epoch[e]]
    # the trainer keeps the first epoch that reached the best accuracy: the earliest of ties
    return by_epoch[max(epochs, key=lambda e: (by_epoch[e]["test/top1"], -e))] if epochs else {}


def seconds(job: dict) -> float:
    from datetime import datetime

    start, end = job.get("started_at"), job.get("finished_at")
    if not start or not end:
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run_demo(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ttm.client import Client

    console = Console(stderr=True)
    home = Path(args.home).resolve()
    port = free_port(args.port)
    server, token = start_server(home, port, args.workers)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        with Client(url, token) as client:
            wait_ready(client, server)
            console.print(f"[bold]ttm serve[/] is up at {url} (TTM_HOME={home}); dashboard: {url}/ui  "
                          f"token: {token}")
            teacher, entry = upload_zoo_teacher(client, args.teacher)
            console.print(f"teacher: the zoo's {entry.name} ({entry.arch}, {entry.manifest['top1']:.2f} % on the "
                          f"whole test set), uploaded as artifact {teacher['weights']}")
            students = {}
            for method, loss in STUDENT_LOSSES.items():
                job = client.submit(job_spec(f"demo-student-resnet8-{method}", "resnet8", loss, args,
                                             teacher=None if method == "ce" else teacher))
                students[method] = job
                console.print(f"student job {job['id']}: resnet8 with {method.upper()}")
            chain_args = argparse.Namespace(**{**vars(args), "epochs": args.chain_epochs})
            chain_teacher = client.submit(job_spec("demo-chain-teacher-resnet20-ce", "resnet20", {"kind": "ce"},
                                                   chain_args))
            console.print(f"chain: teacher job {chain_teacher['id']} (resnet20 with CE, {args.chain_epochs} epoch(s)), "
                          "then a WTTM student from it")
            rows = []
            for method, job in students.items():
                done = client.wait(job["id"])
                best = done.get("best_top1")
                console.print(f"  {method.upper():5s} {done['state']}  best top-1 "
                              f"{'-' if best is None else f'{best:.2f}'}")
                rows.append((method.upper(), "resnet8", done))
            chain_teacher = client.wait(chain_teacher["id"])
            if chain_teacher["state"] == "succeeded":
                chain_student = client.wait(client.submit(job_spec(
                    "demo-chain-student-resnet8-wttm", "resnet8", STUDENT_LOSSES["wttm"], chain_args,
                    teacher={"job": chain_teacher["id"]}))["id"])
                chain = [("chain: teacher (CE)", "resnet20", chain_teacher), ("chain: WTTM", "resnet8", chain_student)]
            else:
                chain = [("chain: teacher (CE)", "resnet20", chain_teacher)]
            out = Path(args.output).resolve()
            client.download(students["wttm"]["id"], which="best", format="safetensors", dest=out)

            table = Table(title=f"Fashion-MNIST, {args.train_size:,} train / {args.test_size:,} test images, "
                                f"{args.epochs} epochs per student (CPU); teacher: zoo {entry.name}")
            for col in ("loss", "model", "state", "test top-1 %", "mean H(q) (nats)", "time per job (s)"):
                table.add_column(col, justify="left" if col in ("loss", "model", "state") else "right")
            kd_epoch0 = {r["name"]: r["value"] for r in client.metrics(students["kd"]["id"]) if r["epoch"] == 0}
            table.add_row("teacher (zoo)", entry.arch, "uploaded",
                          f"{kd_epoch0.get('teacher/top1', float('nan')):.2f}",
                          f"{kd_epoch0.get('teacher/entropy', float('nan')):.3f}", "-")
            failed = False
            for label, arch, job in rows + chain:
                m = final_metrics(client, job["id"])
                failed |= job["state"] != "succeeded"
                table.add_row(label, arch, job["state"], f"{m.get('test/top1', float('nan')):.2f}",
                              f"{m.get('test/entropy', float('nan')):.3f}", f"{seconds(job):.0f}")
            Console(width=max(Console().width, 110)).print(table)
            print(f"best WTTM student: {out}")
            print(f"dashboard: {url}/ui  (log in with the token above)   "
                  f"compare: {url}/ui/compare?jobs={','.join(j['id'] for _, _, j in rows)}")
            print(f"total time: {time.monotonic() - started:.0f} s")
            if args.serve:
                console.print("serving until Ctrl-C ...")
                server.wait()
            return 1 if failed else 0
    except KeyboardInterrupt:
        return 130
    finally:
        stop_server(server)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="ttm-demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default="runs/demo-home", help="TTM_HOME of the demo server")
    ap.add_argument("--port", type=int, default=8000, help="preferred port (another free one if taken)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--teacher", default=DEMO_TEACHER, help="the zoo teacher to upload (`ttm zoo` lists them)")
    ap.add_argument("--train-size", type=int, default=DEMO_SIZE["train_size"])
    ap.add_argument("--test-size", type=int, default=DEMO_SIZE["test_size"])
    ap.add_argument("--epochs", type=int, default=DEMO_SIZE["student_epochs"], help="epochs per student")
    ap.add_argument("--chain-epochs", type=int, default=1, help="epochs of the chain's teacher and its student")
    ap.add_argument("--batch-size", type=int, default=DEMO_SIZE["batch_size"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="runs/demo-student-wttm.safetensors")
    ap.add_argument("--serve", action=argparse.BooleanOptionalAction, default=sys.stdin.isatty(),
                    help="keep the server up after the table, for the dashboard (default: when interactive)")
    sys.exit(run_demo(ap.parse_args(argv)))


if __name__ == "__main__":
    main()
