"""Reproduction of the paper's ordering on Fashion-MNIST, through the job server's HTTP API like a user.

One `ttm serve --workers 1` (embedded defaults: SQLite and kombu's filesystem broker; --postgres-redis for the real
services on this machine), one user, and through the SDK (`ttm.client.Client`): the size's teacher (a zoo teacher
uploaded with POST /v1/artifacts as a user brings their own, or one trained by the service), then resnet8 students
with the size's losses, three seeds each, every student taught by that same teacher. For each loss: mean ± std and
the standard error over the seeds of the test top-1 at the student's best epoch (the checkpoint a user downloads
as `best`) and of the mean entropy H(q) of its predictions on the test set at that epoch; the teacher's accuracy;
the time per job; and, for each of the paper's claims, the mean of the paired per-seed difference and its standard
error: a claim "holds" when the mean gap is larger than its standard error.

    python -m benchmarks.reproduce --size demo     # the demo's configuration (ttm.demo), 3 seeds: ~15 min here
    python -m benchmarks.reproduce --size cpu      # seven losses at a larger size, 3 seeds: see SIZES
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
from ttm.demo import (
    DEMO_SIZE,
    DEMO_TEACHER,
    STUDENT_LOSSES,
    final_metrics,
    free_port,
    job_spec,
    seconds,
    start_server,
    stop_server,
    upload_zoo_teacher,
    wait_ready,
)

# Every loss a size may run: the demo's four, and those of the paper's other tables.
LOSSES = {**STUDENT_LOSSES,
          # DKD's warm-up ramps its loss in over the first epochs (20 of 240 in its paper): 1 of a short run here
          "dkd": {"kind": "dkd", "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 1},
          "dist": {"kind": "dist", "inter_weight": 2.0, "intra_weight": 2.0, "temperature": 4.0},
          # Table 6: WTTM without the CE term, so without labels
          "wttm_noce": {**STUDENT_LOSSES["wttm"], "ce_weight": 0.0}}
LABELS = {"ce": "CE", "kd": "KD", "ttm": "TTM", "wttm": "WTTM", "dkd": "DKD", "dist": "DIST",
          "wttm_noce": "WTTM w/o CE"}
METHODS = tuple(LOSSES)
# Sizes. demo: exactly `./dev demo`'s students (ttm.demo.DEMO_SIZE, the zoo's resnet20 teacher), so that its table
# can be checked over seeds (~15 min here). cpu: the seven losses of the paper's tables, taught by the zoo's
# resnet56, sized to take about 35 minutes on this 2-core CPU (its teacher's forward passes are most of a job).
# gpu: all of Fashion-MNIST, 30 epochs, batch 256, lr 0.1 cosine, with a teacher trained by the service; not run yet
# (no GPU machine was lent to the tasks that wrote this).
SIZES = {
    "demo": {**DEMO_SIZE, "teacher_zoo": DEMO_TEACHER, "methods": ["ce", "kd", "ttm", "wttm"],
             "device": "cpu", "gpus": 0},
    "cpu": {"train_size": 8_000, "test_size": 5_000, "student_epochs": 4, "batch_size": 128, "lr": 0.1,
            "teacher_zoo": "fashion_mnist/resnet56", "methods": list(METHODS), "device": "cpu", "gpus": 0},
    "gpu": {"train_size": None, "test_size": None, "teacher_epochs": 30, "student_epochs": 30, "batch_size": 256,
            "lr": 0.1, "teacher_arch": "resnet56", "methods": list(METHODS), "device": "cuda", "gpus": 1},
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
        return {"mean": None, "std": None, "se": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 3), "std": round(std, 3),
            "se": round(std / len(values) ** 0.5, 3), "n": len(values)}


# The paper's claims as (name, a, b, metric, kind): "gt" a > b, "ge" a ≥ b, "close" |a − b| within 1 point.
CLAIMS = [("KD > CE (top-1)", "kd", "ce", "top1", "gt"),
          ("DKD > KD (top-1)", "dkd", "kd", "top1", "gt"),
          ("DIST > KD (top-1)", "dist", "kd", "top1", "gt"),
          ("TTM > KD (top-1)", "ttm", "kd", "top1", "gt"),
          ("WTTM >= TTM (top-1)", "wttm", "ttm", "top1", "ge"),
          ("WTTM > CE (top-1)", "wttm", "ce", "top1", "gt"),
          ("TTM > CE (top-1)", "ttm", "ce", "top1", "gt"),
          ("WTTM w/o CE >= KD - 1 point (top-1; Table 6: close to KD, or above)", "wttm_noce", "kd", "top1", "near"),
          ("H(q) TTM > KD", "ttm", "kd", "entropy", "gt"),
          ("H(q) WTTM > KD", "wttm", "kd", "entropy", "gt")]


def predictions(runs: list[dict]) -> dict:
    """Each claim whose two losses ran: the paired per-seed difference a − b (the same seed's students), its mean,
    standard error and per-seed wins. "gt" and "ge" hold when the mean gap is larger than its standard error (for
    "ge": not below minus it); "near" when the gap minus its standard error is at most 1 point below zero."""
    by_seed: dict[int, dict[str, dict]] = {}
    for r in runs:
        if r["state"] == "succeeded":
            by_seed.setdefault(r["seed"], {})[r["method"]] = r
    out = {}
    for name, a, b, key, kind in CLAIMS:
        diffs = [s[a][key] - s[b][key] for s in by_seed.values() if a in s and b in s]
        if not diffs:
            continue
        d = mean_std(diffs)
        gap, se = d["mean"], d["se"]
        holds = {"gt": gap > se, "ge": gap >= -se, "near": gap - se >= -1.0}[kind] and (kind != "gt" or gap > 0)
        wins = sum(x > 0 for x in diffs) if kind != "near" else sum(x >= -1.0 for x in diffs)
        out[name] = {"holds": bool(holds), "gap": gap, "se": se,
                     "gap_in_se": round(gap / se, 1) if se else None, "per_seed": f"{wins}/{len(diffs)} seeds",
                     "diffs": [round(x, 3) for x in diffs]}
    return out


def markdown(record: dict) -> str:
    size, s = record["size"], record["recipe"]
    data = ("full Fashion-MNIST (60,000 train / 10,000 test)" if s["train_size"] is None else
            f"Fashion-MNIST, the first {s['train_size']:,} train / {s['test_size']:,} test images")
    t = record["teacher"]
    source = f"zoo {t['zoo']}" if t.get("zoo") else f"trained by the service, {s['teacher_epochs']} epochs"
    lines = [f"{data}; teacher {t['arch']} ({source}), students resnet8 {s['student_epochs']} epochs; batch "
             f"{s['batch_size']}, SGD lr {s['lr']} cosine, device {s['device']}; seeds "
             f"{', '.join(map(str, record['seeds']))}. Teacher test top-1 {t['top1']:.2f} %, H(q) "
             f"{t['entropy']:.3f} nats.", "",
             "| student | loss | test top-1 % (best epoch), mean ± SE | mean H(q) (nats) | time per job (s) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for m, r in record["students"].items():
        if r["top1"]["n"]:
            lines.append(f"| resnet8 | {LABELS[m]} | {r['top1']['mean']:.2f} ± {r['top1']['se']:.2f} | "
                         f"{r['entropy']['mean']:.3f} ± {r['entropy']['se']:.3f} | {r['seconds']['mean']:.0f} |")
    lines += ["", "| claim | paired gap (mean ± SE) | gap / SE | per seed | verdict |",
              "| --- | ---: | ---: | --- | --- |"]
    for name, p in record["predictions"].items():
        ratio = "–" if p["gap_in_se"] is None else f"{p['gap_in_se']:.1f}"
        lines.append(f"| {name} | {p['gap']:+.2f} ± {p['se']:.2f} | {ratio} | {p['per_seed']} | "
                     f"{'holds' if p['holds'] else 'does not hold'} |")
    lines += ["", f"Command `{record['command']}`, {record['date']}, {record['machine']['cpu']} "
                  f"({record['machine']['cpus']} cores); load average (1 min) {record['load']['loadavg_1min_mean']} "
                  f"mean, {record['load']['loadavg_1min_min']}–{record['load']['loadavg_1min_max']}; "
                  f"{record['total_seconds'] / 60:.0f} min in all ({size} size)."]
    return "\n".join(lines)


def teacher_for(client, size: dict, args) -> tuple[dict, dict, str | None]:
    """(the students' teacher spec, a record of it, the job that trained it or None)."""
    if size.get("teacher_zoo"):
        spec, entry = upload_zoo_teacher(client, size["teacher_zoo"])
        record = {"zoo": entry.name, "arch": entry.arch, "artifact": spec["weights"],
                  "zoo_top1_full_test": entry.manifest["top1"]}
        return spec, record, None
    if args.teacher_job:  # a teacher trained by an earlier run on this server's database
        teacher = client.job(args.teacher_job)
    else:
        arch = size.get("teacher_arch", "resnet56")
        teacher = client.wait(client.submit(spec_for(f"repro-teacher-{arch}-ce", arch, {"kind": "ce"}, size,
                                                     size["teacher_epochs"], seed=0))["id"])
    if teacher["state"] != "succeeded":
        raise SystemExit(f"teacher job {teacher['id']} {teacher['state']}: {teacher.get('reason')}")
    return {"job": teacher["id"]}, {"job": teacher["id"], "arch": teacher["spec"]["student"]["arch"],
                                    "seconds": seconds(teacher)}, teacher["id"]


def run(args) -> int:
    from ttm.client import Client

    size = dict(SIZES[args.size])
    for key in ("train_size", "test_size", "teacher_epochs", "student_epochs", "batch_size", "lr", "teacher_zoo"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    methods = args.methods or size["methods"]
    losses = {m: dict(loss) for m, loss in LOSSES.items()}
    for setting in args.set or []:  # METHOD.FIELD=VALUE, e.g. ttm.beta=3
        target, _, value = setting.partition("=")
        method, _, name = target.partition(".")
        if method not in losses or not name or not value:
            raise SystemExit(f"--set {setting!r}: write METHOD.FIELD=VALUE with METHOD one of {', '.join(losses)}")
        losses[method][name] = float(value)
    started = time.monotonic()
    runs: list[dict] = []
    with ExitStack() as stack:
        env = stack.enter_context(postgres_redis(redis_db=args.redis_db)) if args.postgres_redis else {}
        home = Path(args.home or tempfile.mkdtemp(prefix="ttm-reproduce-")).resolve()
        port = free_port(args.port)
        # a user like any other; an admin only to reach an earlier run's jobs (--teacher-job, --reuse-finished)
        server, token = start_server(home, port, workers=1, env=env,
                                     admin=bool(args.teacher_job or args.reuse_finished))
        stack.callback(stop_server, server)
        url = f"http://127.0.0.1:{port}"
        with LoadSampler() as load, Client(url, token) as client:
            wait_ready(client, server)
            print(f"ttm serve at {url}, TTM_HOME={home}; size {args.size}: {size}", flush=True)
            teacher_spec, teacher, teacher_job = teacher_for(client, size, args)
            finished = finished_jobs(client) if args.reuse_finished else {}
            submitted = []
            for seed in args.seeds:  # seeds outside: a cut-short run still has every loss for the first seeds
                for method in methods:
                    spec = spec_for(f"repro-resnet8-{method}-s{seed}", "resnet8", losses[method], size,
                                    size["student_epochs"], seed=seed,
                                    teacher=None if method == "ce" else teacher_spec)
                    done = finished.get(spec_key(spec, client))
                    submitted.append((method, seed, done or client.submit(spec)["id"], done is not None))
            for method, seed, job_id, reused in submitted:
                job = client.wait(job_id)
                m = final_metrics(client, job_id) if job["state"] == "succeeded" else {}
                rows = client.metrics(job_id)
                if "top1" not in teacher:  # the teacher on this size's test images, as the students' jobs saw it
                    seen = {r["name"]: r["value"] for r in rows if r["epoch"] == 0}
                    if "teacher/top1" in seen:
                        teacher.update(top1=seen["teacher/top1"], entropy=seen["teacher/entropy"])
                last_epoch = max((r["epoch"] for r in rows), default=0)
                best_epoch = min((r["epoch"] for r in rows if r["name"] == "test/top1" and r["epoch"] > 0
                                  and r["value"] == m.get("test/top1")), default=None)  # the trainer's `best`
                run_row = {"method": method, "seed": seed, "job": job_id, "state": job["state"],
                           "top1": m.get("test/top1", float("nan")), "entropy": m.get("test/entropy", float("nan")),
                           "kl": m.get("test/kl"), "best_epoch": best_epoch, "epochs": last_epoch,
                           "seconds": seconds(job), "reason": job.get("reason"), "reused": reused}
                runs.append(run_row)
                print(f"  {LABELS[method]:11s} seed {seed}: {job['state']}, top-1 {run_row['top1']:.2f}, "
                      f"H(q) {run_row['entropy']:.3f}, {run_row['seconds']:.0f} s  (load {os.getloadavg()[0]:.2f})",
                      flush=True)
            if "top1" not in teacher and teacher_job:
                tm = final_metrics(client, teacher_job)
                teacher.update(top1=tm["test/top1"], entropy=tm["test/entropy"])
        students = {}
        for method in methods:
            rows = [r for r in runs if r["method"] == method and r["state"] == "succeeded"]
            students[method] = {"top1": mean_std([r["top1"] for r in rows]),
                                "entropy": mean_std([r["entropy"] for r in rows]),
                                "seconds": mean_std([r["seconds"] for r in rows]), "loss": losses[method]}
        figures = {
            "size": args.size, "recipe": size, "seeds": args.seeds,
            "services": "PostgreSQL + Redis" if args.postgres_redis else "embedded (SQLite, filesystem broker)",
            "metric_definitions": {
                "top1": "test top-1 (%) at the student's best epoch (highest test top-1; the `best` checkpoint)",
                "entropy": "test/entropy at that epoch: mean over test images of H(q) = -sum_j q_j log q_j, nats",
                "seconds": "finished_at - started_at of the job (includes the trainer's start-up and evaluation)",
                "kl": "test/kl at that epoch: mean KL(softmax(gamma v) || q), gamma the loss's (1/T for KD)",
                "mean_std": "mean, sample standard deviation (n - 1) and standard error (std / sqrt(n)) over seeds",
                "claims": "paired per-seed differences; a claim holds when the mean gap exceeds its standard error"},
            "teacher_reused": bool(args.teacher_job), "teacher": teacher,
            "students": students, "runs": runs, "predictions": predictions(runs),
            "load": load.summary(), "total_seconds": round(time.monotonic() - started, 1),
        }
        out = Path(args.out) if args.out else RESULTS / f"reproduce-{args.size}.json"
        write_result("reproduce", figures, out=str(out))
        record = json.loads(out.read_text())
        print("\n" + markdown(record))
        return 0 if all(r["state"] == "succeeded" for r in runs) else 1


def spec_key(spec: dict, client=None) -> str:
    """A spec as the server stores it (validated, every default filled in), as one comparable string. A teacher
    artifact counts by its bytes (each run's user uploads the zoo's file as an artifact of their own)."""
    from ttm.spec import parse_spec

    data = parse_spec(spec).model_dump(mode="json")
    weights = (data.get("teacher") or {}).get("weights")
    if client is not None and weights and weights.startswith("art_"):
        data["teacher"]["weights"] = client.artifact(weights)["sha256"]
    return json.dumps(data, sort_keys=True)


def finished_jobs(client) -> dict[str, str]:
    """Succeeded jobs on the server by their spec (`--reuse-finished`, as an admin: every earlier run's user's),
    so that an interrupted run picks up where it stopped instead of training the same student again. The newest
    job wins."""
    out: dict[str, str] = {}
    for job in reversed(client.jobs(state="succeeded", limit=10_000)):  # oldest first: newer ones overwrite
        try:
            out[spec_key(job["spec"], client)] = job["id"]
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
    ap.add_argument("--methods", nargs="+", choices=METHODS, help="student losses to run (default: the size's)")
    ap.add_argument("--set", action="append", metavar="METHOD.FIELD=VALUE",
                    help="change one loss parameter of the size's, e.g. ttm.beta=3 (repeatable)")
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
    ap.add_argument("--teacher-zoo", metavar="NAME", help="override the size's zoo teacher (`ttm zoo`)")
    # started in the background, a shell leaves SIGINT ignored: make SIGTERM and SIGINT stop the server too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(run(ap.parse_args(argv)))


if __name__ == "__main__":
    main()
