"""Train the teacher zoo (ttm/zoo/) again from scratch, with this project's own trainer, on the data of this machine.

    python -m benchmarks.make_zoo                         # every teacher (see RECIPES for the time each takes)
    python -m benchmarks.make_zoo fashion_mnist/resnet20  # one

Each teacher is the `best` student of `ttm train <spec>` (the epoch with the highest test top-1); its safetensors
file is copied to ttm/zoo/<dataset>/<arch>.safetensors and its manifest written beside it: architecture, data set,
classes, input shape, normalization, test top-1/top-5 on the whole test split, parameters, the spec and the command
that made it, the sha256 of the file, the machine, the time it took. The trainer is deterministic for a seed on one
machine and torch version; on another machine the accuracy should agree to a few tenths of a percent.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.common import machine
from ttm.checkpoint import sha256_file
from ttm.zoo import ZOO_DIR

# name -> the spec its teacher is trained with (the name of the run is zoo-<dataset>-<arch>)
RECIPES: dict[str, dict] = {
    # 60,000 images × 5 epochs: about 12 minutes on this 2-core CPU when nothing else runs
    "fashion_mnist/resnet20": {
        "student": {"arch": "resnet20"}, "dataset": {"name": "fashion_mnist"}, "loss": {"kind": "ce"},
        "train": {"epochs": 5, "batch_size": 128, "lr": 0.1, "schedule": {"kind": "cosine"}, "seed": 0}},
    # the same recipe; about 2.5 times resnet20's time per image
    "fashion_mnist/resnet56": {
        "student": {"arch": "resnet56"}, "dataset": {"name": "fashion_mnist"}, "loss": {"kind": "ce"},
        "train": {"epochs": 5, "batch_size": 128, "lr": 0.1, "schedule": {"kind": "cosine"}, "seed": 0}},
    # scikit-learn's 8×8 digits (1,500 train / 297 test): a minute
    "digits/resnet20": {
        "student": {"arch": "resnet20"}, "dataset": {"name": "digits"}, "loss": {"kind": "ce"},
        "train": {"epochs": 30, "batch_size": 64, "lr": 0.05, "schedule": {"kind": "cosine"}, "seed": 0}},
}


def finished_run(run_dir: Path, spec: dict) -> bool:
    """Whether `run_dir` holds a run of this very spec that trained all its epochs (`--reuse`)."""
    from ttm.spec import parse_spec

    best, state = run_dir / "best.json", run_dir / "metrics.jsonl"
    if not best.is_file() or not state.is_file():
        return False
    epochs = [json.loads(line)["epoch"] for line in state.read_text().splitlines() if line.strip()]
    wanted = parse_spec(spec)
    return json.loads(best.read_text())["spec"] == wanted.model_dump(mode="json") and \
        max(epochs, default=0) >= wanted.train.epochs


def make(name: str, runs: Path, reuse: bool = False) -> dict:
    dataset, arch = name.split("/")
    run_name = f"zoo-{dataset}-{arch}"
    spec = {"name": run_name, **RECIPES[name]}
    runs.mkdir(parents=True, exist_ok=True)
    spec_path = runs / f"{run_name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    command = [sys.executable, "-m", "ttm.cli", "train", str(spec_path), "--out", str(runs), "--no-resume"]
    reused = reuse and finished_run(runs / run_name, spec)
    if not reused:
        subprocess.run(command, check=True)
    rows = [json.loads(line)["metrics"] for line in (runs / run_name / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    seconds = sum(r.get("epoch_time_s", 0.0) for r in rows)  # the epochs' own time, evaluation included
    best = json.loads((runs / run_name / "best.json").read_text())
    target = ZOO_DIR / f"{name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(runs / run_name / "best.safetensors", target)
    from ttm.models import build_model, count_params

    manifest = {
        "name": name, "arch": arch, "dataset": dataset, "num_classes": best["num_classes"],
        "input_shape": best["input_shape"], "normalization": best.get("normalization"),
        "top1": round(best["top1"], 2), "top5": round(best["top5"], 2), "epoch": best["epoch"],
        "test_images": "the whole test split",
        "params": count_params(build_model(arch, num_classes=best["num_classes"],
                                           in_channels=best["input_shape"][0])),
        "sha256": sha256_file(target), "size": target.stat().st_size,
        "spec": spec, "command": f"python -m benchmarks.make_zoo {name}",
        "trainer_command": f"ttm train {run_name}.yaml --out runs/zoo --no-resume  (the spec above, as YAML)",
        "train_seconds": round(seconds), "machine": machine(),
    }
    (ZOO_DIR / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{name}: test top-1 {manifest['top1']:.2f} % at epoch {manifest['epoch']}, "
          f"{seconds / 60:.1f} min of training{' (a finished run, reused)' if reused else ''}, "
          f"{manifest['size'] / 1e6:.1f} MB, sha256 {manifest['sha256'][:12]}…", flush=True)
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.make_zoo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"teachers to make (default: all of {', '.join(RECIPES)})")
    ap.add_argument("--runs", default="runs/zoo", help="where the training runs are written")
    ap.add_argument("--reuse", action="store_true", help="keep a finished run of the same spec under --runs "
                                                         "instead of training it again")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in RECIPES]
    if unknown:
        ap.error(f"unknown teacher {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    for name in args.names or RECIPES:
        make(name, Path(args.runs), reuse=args.reuse)


if __name__ == "__main__":
    main()
