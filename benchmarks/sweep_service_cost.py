"""What a sweep costs through the service, its trials as one student group against the same trials one by one.

    python -m benchmarks.sweep_service_cost            # a grid of 4 β, Fashion-MNIST, twice: ~5 min here

`ttm serve` on the embedded defaults with one worker; the zoo's Fashion-MNIST resnet20 teacher, uploaded as a user
would; a grid sweep of resnet8 WTTM students over K values of β, all K queued at once (`max_running: K`), submitted
twice: with `group: K` (the worker trains them as one student group) and with `group: 1` (one job after another).
Reports the wall time of each sweep from its submit to its end, and checks that both chose the same trial with the
same validation values (a member of a group trains the weights a job of its own would). Writes
benchmarks/results/sweep-service-cost.json.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, write_result
from ttm.demo import free_port, start_server, stop_server, upload_zoo_teacher, wait_ready

BETAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def sweep(teacher: dict, group: int, args: argparse.Namespace) -> dict:
    return {"name": f"beta-grid-group{group}", "strategy": "grid", "max_running": args.k, "group": group,
            "space": {"loss.beta": list(BETAS[:args.k])},
            "job": {"teacher": teacher, "student": {"arch": "resnet8"},
                    "loss": {"kind": "wttm", "gamma": 0.3, "beta": BETAS[0]},
                    "dataset": {"name": "fashion_mnist", "subset": {"train": args.train_size, "test": args.test_size},
                                "validation": {"fraction": 0.1, "seed": 0}},
                    "train": {"epochs": args.epochs, "batch_size": 128, "lr": 0.1, "schedule": {"kind": "cosine"},
                              "seed": 0},
                    "resources": {"gpus": 0}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=4, choices=range(2, len(BETAS) + 1), help="trials (values of β)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=3000)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--port", type=int, default=8766)
    args = ap.parse_args()
    from ttm.client import Client

    home = Path(tempfile.mkdtemp(prefix="ttm-sweep-service-cost-"))
    port = free_port(args.port)
    server, token = start_server(home, port, workers=1, admin=False)
    runs: dict[str, dict] = {}
    try:
        with Client(f"http://127.0.0.1:{port}", token, timeout=120) as client:
            wait_ready(client, server)
            teacher, _ = upload_zoo_teacher(client, "fashion_mnist/resnet20")
            for group in (args.k, 1):
                started = time.monotonic()
                done = client.wait_sweep(client.submit_sweep(sweep(teacher, group, args))["id"])
                seconds = time.monotonic() - started
                if done["state"] != "succeeded":
                    raise SystemExit(f"the sweep with group {group} ended {done['state']}: {done['reason']}")
                groups = {client.job(t["job_id"]).get("group_id") for t in done["trials"]}
                runs[f"group_{group}"] = {
                    "seconds": seconds, "groups_formed": len(groups - {None}),
                    "best": {k: done["best"][k] for k in ("number", "params", "value", "test_top1")},
                    "trials": [{k: t[k] for k in ("number", "params", "value")} for t in done["trials"]]}
                print(f"group {group}: {seconds:.1f} s, best t{done['best']['number']} "
                      f"{done['best']['value']:.2f}", flush=True)
    finally:
        stop_server(server)
    grouped, alone = runs[f"group_{args.k}"], runs["group_1"]
    figures = {
        "recipe": {"k": args.k, "train_size": args.train_size, "test_size": args.test_size, "epochs": args.epochs,
                   "teacher": "zoo fashion_mnist/resnet20", "student": "resnet8", "loss": "wttm γ 0.3",
                   "workers": 1},
        **runs,
        "group_over_one_by_one": grouped["seconds"] / alone["seconds"],
        "same_choice": grouped["best"]["number"] == alone["best"]["number"],
        "largest_value_difference": max(abs(a["value"] - b["value"])
                                        for a, b in zip(grouped["trials"], alone["trials"])),
    }
    write_result("sweep-service-cost", figures, str(RESULTS / "sweep-service-cost.json"))


if __name__ == "__main__":
    main()
