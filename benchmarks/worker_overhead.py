"""Does the worker slow the trainer's step? The same job trained twice, alternately: by `ttm.train.train` in this
process, and through `ttm serve` (a Celery worker, the trainer in its child process, metrics streamed to the
database). Compared: the trainer's own images/s of each epoch after the first (it times the training loop alone).

    python -m benchmarks.worker_overhead [--rounds 2] [--epochs 4]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from ttm.demo import free_port, start_server, stop_server, wait_ready


def spec(epochs: int, seed: int) -> dict:
    return {"name": f"overhead-{seed}", "student": {"arch": "resnet8"}, "loss": {"kind": "ce"},
            "dataset": {"name": "fashion_mnist", "subset": {"train": 4000, "test": 500}},
            "train": {"epochs": epochs, "batch_size": 128, "lr": 0.1, "schedule": {"kind": "cosine"}, "seed": seed},
            "resources": {"gpus": 0}}


def direct(epochs: int, seed: int, out: Path) -> list[float]:
    from ttm.spec import parse_spec
    from ttm.train import train

    seen: dict[int, float] = {}
    train(parse_spec(spec(epochs, seed)), out, on_metrics=lambda e, m: seen.__setitem__(e, m["images_per_s"]),
          resume=False)
    return [seen[e] for e in sorted(seen) if e > 1]


def through_worker(client, epochs: int, seed: int) -> list[float]:
    job = client.wait(client.submit(spec(epochs, seed))["id"])
    assert job["state"] == "succeeded", job
    rows = [r for r in client.metrics(job["id"]) if r["name"] == "images_per_s" and r["epoch"] > 1]
    return [r["value"] for r in sorted(rows, key=lambda r: r["epoch"])]


def main() -> None:
    import os

    import torch

    from benchmarks.common import write_result
    from ttm.client import Client

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    with tempfile.TemporaryDirectory() as tmp:
        server, token = start_server(Path(tmp) / "home", port := free_port(0), workers=1)
        try:
            with Client(f"http://127.0.0.1:{port}", token) as client:
                wait_ready(client, server)
                local, served = [], []
                for r in range(args.rounds):  # alternate, so that a change of load hits both alike
                    local += direct(args.epochs, r, Path(tmp) / f"direct-{r}")
                    served += through_worker(client, args.epochs, r)
        finally:
            stop_server(server)
    figures = {"direct_img_s": local, "worker_img_s": served,
               "direct_median": statistics.median(local), "worker_median": statistics.median(served),
               "load_avg": os.getloadavg()}
    figures["worker_over_direct"] = figures["worker_median"] / figures["direct_median"]
    write_result("worker_overhead", figures, args.out)


if __name__ == "__main__":
    main()
