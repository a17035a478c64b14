"""The trainer's process: `python -m worker.child JOB_ID RUN_DIR SUPERVISOR_PID [NPROC] [--member JOB_ID RUN_DIR]...`.

Started by the worker's task in a fresh interpreter (a clean CUDA context; DataLoader workers allowed), in its own
session. With NPROC > 1 it becomes torchrun on this node, which starts NPROC copies of this module as DDP ranks
(the arguments are all positional, so torchrun hands them on untouched); rank 0 evaluates, writes the checkpoints
and reports, as in a 1-process run.

The child holds no credentials (worker/runner.py starts it with an allow-listed environment): rank 0 appends each
epoch's metrics to RUN_DIR/metrics.jsonl and writes the checkpoints there, and the worker records both in the
database as they appear. Every process leaves `outcome-<rank>.json` in RUN_DIR: success with the best accuracy, or
the reason it failed in words a user can
act on. The worker turns that (or, when there is none, the exit code and the log's last lines) into the job's end.

With `--member`, the jobs train as one student group (ttm.group.train_group): the first job leads, each member
trains into its own run directory and gets its own outcome-0.json as it leaves the group. A member whose run
directory holds a LEAVE_FILE (the worker writes one when its job is cancelled or its lease lost) leaves at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("ttm.worker.child")

EXIT_TRAINING_FAILED = 3
MAX_REASON = 2000
LEAVE_FILE = "leave"  # in a group member's run directory: it stops training now


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m worker.child")
    parser.add_argument("job_id")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("supervisor", type=int, help="the worker's pid: we die when it does")
    parser.add_argument("nproc", type=int, nargs="?", default=1, help="processes for this job; > 1: torchrun")
    parser.add_argument("--member", nargs=2, action="append", default=[], metavar=("JOB_ID", "RUN_DIR"),
                        help="another job of its student group")
    args = parser.parse_args(argv)

    from worker.proc import die_with_parent, fit_socket_paths, limit_resources, watch_supervisor

    under_torchrun = "LOCAL_RANK" in os.environ  # torchrun's protocol, which ttm.train.Dist reads too
    if not under_torchrun:
        limit_resources()  # before anything a user sent is opened; torchrun and the ranks inherit the limits
        die_with_parent()
        if os.getppid() != args.supervisor:  # the worker died before the line above took effect
            return 128 + 9
        if args.nproc > 1:  # torchrun inherits the parent-death signal through exec
            queue = json.loads((args.run_dir / "spec.json").read_text()).get("resources", {}).get("queue")
            problem = gpus_missing(args.nproc, queue)
            if problem is not None:
                write_outcome(args.run_dir, 0, {"ok": False, "reason": problem})
                return EXIT_TRAINING_FAILED
            os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      f"--nproc-per-node={args.nproc}", "-m", "worker.child", *argv])
    watch_supervisor(args.supervisor)
    fit_socket_paths()
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    if args.member:
        return run_group([(args.job_id, args.run_dir), *((job, Path(d)) for job, d in args.member)])
    return run_trainer(args.job_id, args.run_dir, rank)


def gpus_missing(nproc: int, queue: str | None) -> str | None:
    """Why N ranks cannot each have a GPU here, or None. Without CUDA, ranks share the CPU (gloo), as a job of the
    cpu queue asks; a job of the gpu queue asked for GPUs, and is not run on the CPU in their place."""
    import torch

    if not torch.cuda.is_available():
        if queue != "gpu":
            return None
        return (f"the job asks for {nproc} GPUs (resources.gpus: {nproc}) but its worker has no GPU (CUDA is not "
                f"available there): submit it with resources.queue: cpu to train {nproc} CPU processes, or run a "
                "worker on a GPU host")
    if torch.cuda.device_count() >= nproc:
        return None
    return (f"the job asks for {nproc} GPUs (resources.gpus) but its worker sees {torch.cuda.device_count()}: "
            f"lower resources.gpus, or start a worker that owns {nproc} (ttm worker --gpu 0,1,...)")


def run_trainer(job_id: str, run_dir: Path, rank: int) -> int:
    """Train the run directory's spec.json. No database, no settings: the worker resolved every path into the spec,
    and records the metrics.jsonl lines and checkpoint manifests this process writes (worker/record.py)."""
    from ttm.spec import parse_spec
    from ttm.train import train

    try:
        spec = parse_spec(json.loads((run_dir / "spec.json").read_text()))
        result = train(spec, run_dir, resume=True, data_root=spec.dataset.root, job_id=job_id)
    except Exception as err:  # every failure becomes a reason; the traceback goes to child.log
        reason = failure_reason(err)
        log.exception("training failed: %s", reason)
        write_outcome(run_dir, rank, {"ok": False, "reason": reason})
        return EXIT_TRAINING_FAILED
    write_outcome(run_dir, rank, {"ok": True, "best_top1": result.best_top1, "best_epoch": result.best_epoch,
                                  "epochs_done": result.epochs_done})
    return 0


def run_group(members: list[tuple[str, Path]]) -> int:
    """Train the members' spec.json files as one student group. Each member's outcome-0.json is written as it
    leaves (done, failed alone, or asked to leave); an error of the group itself fails every member still in it."""
    from ttm.group import MemberResult, train_group
    from ttm.spec import parse_spec

    def ended(result: MemberResult) -> None:
        out = result.member.out_dir
        if result.state == "failed":
            write_outcome(out, 0, {"ok": False, "reason": result.error or "the trainer failed"})
        elif result.state == "left":
            write_outcome(out, 0, {"ok": False, "left": True, "reason": "left its student group on request"})
        elif result.result is not None:
            write_outcome(out, 0, {"ok": True, "best_top1": result.result.best_top1,
                                   "best_epoch": result.result.best_epoch, "epochs_done": result.result.epochs_done,
                                   "device_s": result.device_s})

    try:
        specs = [parse_spec(json.loads((run_dir / "spec.json").read_text())) for _, run_dir in members]
        train_group(specs, [run_dir for _, run_dir in members], job_ids=[job for job, _ in members],
                    resume=True, data_root=specs[0].dataset.root, on_member_end=ended,
                    leave_now=lambda m: (m.out_dir / LEAVE_FILE).exists())
    except Exception as err:
        reason = failure_reason(err)
        log.exception("the student group failed: %s", reason)
        for _, run_dir in members:
            if not outcome_path(run_dir, 0).exists():
                write_outcome(run_dir, 0, {"ok": False, "reason": reason})
        return EXIT_TRAINING_FAILED
    return 0


def failure_reason(err: BaseException) -> str:
    import torch

    from ttm.spec import SpecError
    from ttm.teacher import WeightsError
    from ttm.train import TrainingError

    text = str(err)
    if isinstance(err, torch.cuda.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in text):
        first = text.strip().splitlines()[0] if text.strip() else ""
        reason = ("out of memory on the GPU: lower train.batch_size, pick a smaller student or teacher, "
                  f"or turn off train.compile ({first})")
    elif isinstance(err, MemoryError):
        reason = "out of host memory: use a dataset subset, fewer DataLoader workers, or a bigger machine"
    elif isinstance(err, (TrainingError, WeightsError, SpecError, FileNotFoundError)):
        reason = text
    else:
        reason = f"{type(err).__name__}: {text}"
    return reason[:MAX_REASON]


def outcome_path(run_dir: Path, rank: int) -> Path:
    return run_dir / f"outcome-{rank}.json"


def write_outcome(run_dir: Path, rank: int, outcome: dict[str, Any]) -> None:
    from ttm.checkpoint import write_json

    write_json(outcome_path(run_dir, rank), outcome)


if __name__ == "__main__":
    sys.exit(main())
