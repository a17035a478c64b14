"""Reproduction of the paper's ordering on Fashion-MNIST, through the job server's HTTP API like a user.

One `ttm serve --workers 1` (embedded defaults: SQLite and kombu's filesystem broker; --postgres-redis for the real
services on this machine), one user, and through the SDK (`ttm.client.Client`): a resnet56 teacher trained with CE,
then resnet8 students with CE, KD (T = 4, λ = 0.9), TTM (γ = 0.3, β = 7) and WTTM (γ = 0.3, β = 1.5), three seeds
each, every student taught by the same teacher job ({"job": teacher_id}). For each loss: mean ± std over the seeds
of the test top-1 at the student's best epoch (the checkpoint a user downloads as `best`) and of the mean entropy
H(q) of its predictions on the test set at that epoch; the teacher's accuracy; the time per job; and whether each
of the paper's predictions holds: KD > CE, TTM > KD, WTTM ≥ TTM, H(q) of TTM and of WTTM > H(q) of KD.

    python -m benchmarks.reproduce --size cpu      # this 2-core CPU: see SIZES (about 40 minutes)
    python -m benchmarks.reproduce --size gpu      # full Fashion-MNIST, 30 epochs, batch 256, train.device cuda

Writes benchmarks/results/reproduce-<size>.json and prints a Markdown table for docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

from benchmarks.common import RESULTS, write_result
from benchmarks.service_load import postgres_redis
from ttm.demo import STUDENT_LOSSES, final_metrics, free_port, job_spec, seconds, start_server, stop_server, wait_ready

METHODS = ("ce", "kd", "ttm", "wttm")
# Sizes. cpu: measured on this machine under its usual load (about 3 on 2 cores): resnet56 trains at about 80
# images/s, a resnet8 student with the resnet56 teacher's forward at about 130 images/s, a CE resnet8 at about 580;
# 13 jobs must fit in about 40 minutes. A first try with batch 128, lr 0.1, teacher 8 epochs (248 steps) gave a
# resnet56 teacher of 51.0 % test top-1, far below what a resnet8 reaches alone in 5 epochs (76.1 %): a teacher
# that no student should imitate. So the teacher gets more steps (batch 64, the paper's CIFAR batch and lr 0.05, 15
# epochs: 930 steps) and the students 4 epochs of the same recipe.
# gpu: the size (all of Fashion-MNIST, 30 epochs, batch 256) with lr 0.1 and the cosine schedule; not run
# yet (no GPU machine was lent to the task that wrote this).
SIZES = {
    "cpu": {"train_size": 4000, "test_size": 1000, "teacher_epochs": 15, "student_epochs": 4, "batch_size": 64,
            "lr": 0.05, "device": "cpu", "gpus": 0},
    "gpu": {"train_size": None, "test_size": None, "teacher_epochs": 30, "student_epochs": 30, "batch_size": 256,
            "lr": 0.1, "device": "cuda", "gpus": 1},
}


def spec_for(name: str, arch: str, loss: dict, size: dict, epochs: int, seed: int, teacher: dict | None = None
             ) -> dict:
    """ttm.demo's job spec (cosine schedule, SGD), resized: the subset (none: the full dataset), epochs, batch,
    lr, device and GPUs of `size`."""
    args = SimpleNamespace(train_size=size["train_size"], test_size=size["test_size"], epochs=epochs,
                           batch_size=size["batch_size"], seed=seed)
    spec = job_spec(name, arch, loss, args, teacher=teacher)
    if size["train_size"] is None:
        del spec["dataset"]["subset"]
    spec["train"]["lr"] = size["lr"]
    spec["train"]["device"] = size["device"]
    spec["resources"] = {"gpus": size["gpus"]}
    return spec


class LoadSampler:
    """The 1-minute load average every `every` seconds while the benchmark runs (this machine is shared)."""

    def __init__(self, every: float = 30.0):
        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        return {"loadavg_1min_mean": round(statistics.fmean(self.samples), 2),
                "loadavg_1min_min": round(min(self.samples), 2), "loadavg_1min_max": round(max(self.samples), 2),
                "samples": len(self.samples), "every_s": self.every}


def mean_std(values: list[float]) -> dict:
    values = [v for v in values if v == v]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(statistics.fmean(values), 3),
            "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0, "n": len(values)}


def predictions(per_method: dict[str, dict], runs: list[dict]) -> dict:
    """The paper's predictions on the means, and per seed (the same seed's students, paired)."""
    def top1(m: str) -> float:
        return per_method[m]["top1"]["mean"]

    def ent(m: str) -> float:
        return per_method[m]["entropy"]["mean"]

    by_seed: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["method"]] = r

    def paired(a: str, b: str, key: str, strict: bool = True) -> str:
        wins = [(s[a][key] > s[b][key]) if strict else (s[a][key] >= s[b][key])
                for s in by_seed.values() if a in s and b in s]
        return f"{sum(wins)}/{len(wins)} seeds"

    checks = [("KD > CE (top-1)", top1("kd") > top1("ce"), paired("kd", "ce", "top1")),
              ("TTM > KD (top-1)", top1("ttm") > top1("kd"), paired("ttm", "kd", "top1")),
              ("WTTM >= TTM (top-1)", top1("wttm") >= top1("ttm"), paired("wttm", "ttm", "top1", strict=False)),
              ("H(q) TTM > KD", ent("ttm") > ent("kd"), paired("ttm", "kd", "entropy")),
              ("H(q) WTTM > KD", ent("wttm") > ent("kd"), paired("wttm", "kd", "entropy"))]
    return {name: {"holds_on_means": bool(ok), "per_seed": seeds} for name, ok, seeds in checks}


def markdown(record: dict) -> str:
    size, s = record["size"], record["recipe"]
    data = ("full Fashion-MNIST (60,000 train / 10,000 test)" if s["train_size"] is None else
            f"Fashion-MNIST, the first {s['train_size']:,} train / {s['test_size']:,} test images")
    lines = [f"{data}; teacher resnet56 (CE) {s['teacher_epochs']} epochs, students resnet8 {s['student_epochs']} "
             f"epochs; batch {s['batch_size']}, SGD lr {s['lr']} cosine, device {s['device']}; seeds "
             f"{', '.join(map(str, record['seeds']))}. Teacher test top-1 {record['teacher']['top1']:.2f} %, "
             f"H(q) {record['teacher']['entropy']:.3f} nats ({record['teacher']['seconds']:.0f} s).", "",
             "| student | loss | test top-1 % (best epoch) | mean H(q) (nats) | time per job (s) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for m in METHODS:
        r = record["students"][m]
        lines.append(f"| resnet8 | {m.upper()} | {r['top1']['mean']:.2f} ± {r['top1']['std']:.2f} | "
                     f"{r['entropy']['mean']:.3f} ± {r['entropy']['std']:.3f} | {r['seconds']['mean']:.0f} |")
    lines += ["", "| prediction | on the means | per seed |", "| --- | --- | --- |"]
    for name, p in record["predictions"].items():
        lines.append(f"| {name} | {'holds' if p['holds_on_means'] else 'does not hold'} | {p['per_seed']} |")
    lines += ["", f"Command `{record['command']}`, {record['date']}, {record['machine']['cpu']} "
                  f"({record['machine']['cpus']} cores); load average (1 min) {record['load']['loadavg_1min_mean']} "
                  f"mean, {record['load']['loadavg_1min_min']}–{record['load']['loadavg_1min_max']}; "
                  f"{record['total_seconds'] / 60:.0f} min in all ({size} size)."]
    return "\n".join(lines)


def run(args) -> int:
    from ttm.client import Client

    size = dict(SIZES[args.size])
    for key in ("train_size", "test_size", "teacher_epochs", "student_epochs", "batch_size", "lr"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    started = time.monotonic()
    runs: list[dict] = []
    with ExitStack() as stack:
        env = stack.enter_context(postgres_redis(redis_db=args.redis_db)) if args.postgres_redis else {}
        home = Path(args.home or tempfile.mkdtemp(prefix="ttm-reproduce-")).resolve()
        port = free_port(args.port)
        # a user like any other; an admin only to reach --teacher-job, which an earlier run's user owns
        server, token = start_server(home, port, workers=1, env=env, admin=bool(args.teacher_job))
        stack.callback(stop_server, server)
        url = f"http://127.0.0.1:{port}"
        with LoadSampler() as load, Client(url, token) as client:
            wait_ready(client, server)
            print(f"ttm serve at {url}, TTM_HOME={home}; size {args.size}: {size}", flush=True)
            if args.teacher_job:  # a teacher trained by an earlier run on this server's database
                teacher = client.job(args.teacher_job)
            else:
                teacher = client.submit(spec_for("repro-teacher-resnet56-ce", "resnet56", {"kind": "ce"}, size,
                                                 size["teacher_epochs"], seed=0))
                teacher = client.wait(teacher["id"])
            if teacher["state"] != "succeeded":
                raise SystemExit(f"teacher job {teacher['id']} {teacher['state']}: {teacher.get('reason')}")
            tm = final_metrics(client, teacher["id"])
            print(f"teacher {teacher['id']}: top-1 {tm['test/top1']:.2f}, H(q) {tm['test/entropy']:.3f}, "
                  f"{seconds(teacher):.0f} s", flush=True)
            finished = finished_jobs(client) if args.reuse_finished else {}
            submitted = []
            for seed in args.seeds:  # seeds outside: a cut-short run still has every loss for the first seeds
                for method in args.methods:
                    spec = spec_for(f"repro-resnet8-{method}-s{seed}", "resnet8", STUDENT_LOSSES[method], size,
                                    size["student_epochs"], seed=seed,
                                    teacher=None if method == "ce" else {"job": teacher["id"]})
                    done = finished.get(spec_key(spec))
                    submitted.append((method, seed, done or client.submit(spec)["id"], done is not None))
            for method, seed, job_id, reused in submitted:
                job = client.wait(job_id)
                m = final_metrics(client, job_id) if job["state"] == "succeeded" else {}
                rows = client.metrics(job_id)
                last_epoch = max((r["epoch"] for r in rows), default=0)
                best_epoch = min((r["epoch"] for r in rows if r["name"] == "test/top1" and r["epoch"] > 0
                                  and r["value"] == m.get("test/top1")), default=None)  # the trainer's `best`
                run_row = {"method": method, "seed": seed, "job": job_id, "state": job["state"],
                           "top1": m.get("test/top1", float("nan")), "entropy": m.get("test/entropy", float("nan")),
                           "kl": m.get("test/kl"), "best_epoch": best_epoch, "epochs": last_epoch,
                           "seconds": seconds(job), "reason": job.get("reason"), "reused": reused}
                runs.append(run_row)
                print(f"  {method.upper():5s} seed {seed}: {job['state']}, top-1 {run_row['top1']:.2f}, "
                      f"H(q) {run_row['entropy']:.3f}, {run_row['seconds']:.0f} s  (load {os.getloadavg()[0]:.2f})",
                      flush=True)
        students = {}
        for method in args.methods:
            rows = [r for r in runs if r["method"] == method and r["state"] == "succeeded"]
            students[method] = {"top1": mean_std([r["top1"] for r in rows]),
                                "entropy": mean_std([r["entropy"] for r in rows]),
                                "seconds": mean_std([r["seconds"] for r in rows]), "loss": STUDENT_LOSSES[method]}
        figures = {
            "size": args.size, "recipe": size, "seeds": args.seeds,
            "services": "PostgreSQL + Redis" if args.postgres_redis else "embedded (SQLite, filesystem broker)",
            "metric_definitions": {
                "top1": "test top-1 (%) at the student's best epoch (highest test top-1; the `best` checkpoint)",
                "entropy": "test/entropy at that epoch: mean over test images of H(q) = -sum_j q_j log q_j, nats",
                "seconds": "finished_at - started_at of the job (includes the trainer's start-up and evaluation)",
                "kl": "test/kl at that epoch: mean KL(softmax(gamma v) || q), gamma the loss's (1/T for KD)",
                "mean_std": "mean and sample standard deviation (n - 1) over the seeds"},
            "teacher_reused": bool(args.teacher_job),
            "teacher": {"job": teacher["id"], "top1": tm["test/top1"], "entropy": tm["test/entropy"],
                        "seconds": seconds(teacher)},
            "students": students, "runs": runs,
            "predictions": predictions(students, runs) if set(METHODS) <= set(students) else None,
            "load": load.summary(), "total_seconds": round(time.monotonic() - started, 1),
        }
        out = Path(args.out) if args.out else RESULTS / f"reproduce-{args.size}.json"
        write_result("reproduce", figures, out=str(out))
        record = json.loads(out.read_text())
        if record["predictions"] is not None:
            print("\n" + markdown(record))
        return 0 if all(r["state"] == "succeeded" for r in runs) else 1


def spec_key(spec: dict) -> str:
    """A spec as the server stores it (validated, every default filled in), as one comparable string."""
    from ttm.spec import parse_spec

    return json.dumps(parse_spec(spec).model_dump(mode="json"), sort_keys=True)


def finished_jobs(client) -> dict[str, str]:
    """Succeeded jobs on the server by their spec (`--reuse-finished`): an interrupted run picks up where it
    stopped instead of training the same student again. The newest job wins."""
    out: dict[str, str] = {}
    for job in reversed(client.jobs(state="succeeded", limit=10_000)):  # oldest first: newer ones overwrite
        try:
            out[spec_key(job["spec"])] = job["id"]
        except Exception:  # a spec this version no longer reads: not ours
            continue
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--postgres-redis", action="store_true",
                    help="PostgreSQL at 127.0.0.1:5432 (a fresh database, dropped after) and Redis at 127.0.0.1:6379")
    ap.add_argument("--redis-db", type=int, default=7, help="Redis database number (flushed before and after)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="student losses to run")
    ap.add_argument("--reuse-finished", action="store_true",
                    help="count a succeeded job with the very same spec (same --home or database) instead of "
                         "submitting it again, e.g. after an interrupted run")
    ap.add_argument("--teacher-job", help="reuse this succeeded teacher job (same --home or database) instead of "
                                          "training one")
    ap.add_argument("--home", help="TTM_HOME of the server (default: a new temporary folder)")
    ap.add_argument("--port", type=int, default=8010)
    ap.add_argument("--out", help="result file (default benchmarks/results/reproduce-<size>.json)")
    for key in ("train_size", "test_size", "teacher_epochs", "student_epochs", "batch_size"):
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"override the size's {key}")
    ap.add_argument("--lr", type=float, help="override the size's lr")
    # started in the background, a shell leaves SIGINT ignored: make SIGTERM and SIGINT stop the server too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(run(ap.parse_args(argv)))


if __name__ == "__main__":
    main()
