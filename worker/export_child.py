"""The process that makes an export on request: `python -m worker.export_child RUN_DIR SUPERVISOR_PID FORMAT`.

Started by the `ttm.make_export` task (worker/exports.py) like the trainer child (worker/child.py): a fresh
interpreter in its own session, with the allow-listed environment (no credentials), the same resource limits, and
dying with its worker. It loads the job's resolved spec.json for its test images and makes the export with the code
the end of a job uses (ttm.export.export_best): best.pt → file → checked in its own runtime → best.json's "files"
and "exports". It leaves `outcome-export-<format>.json` (done, or why it failed); the worker records the rest.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("ttm.worker.export_child")

EXIT_EXPORT_FAILED = 3


def main(argv: list[str] | None = None) -> int:
    from ttm.registry import EXPORT_FORMATS

    parser = argparse.ArgumentParser(prog="python -m worker.export_child")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("supervisor", type=int, help="the worker's pid: we die when it does")
    parser.add_argument("format", choices=EXPORT_FORMATS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from worker.proc import die_with_parent, limit_resources, watch_supervisor

    limit_resources()
    die_with_parent()
    if os.getppid() != args.supervisor:  # the worker died before the line above took effect
        return 128 + 9
    watch_supervisor(args.supervisor)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return make_export(args.run_dir, args.format)


def outcome_path(run_dir: Path, fmt: str) -> Path:
    return run_dir / f"outcome-export-{fmt}.json"


def make_export(run_dir: Path, fmt: str) -> int:
    from ttm.checkpoint import write_json
    from worker.child import failure_reason

    # its lines go to the job's log too, after training's: `ttm logs` shows how the export went
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("ttm.train").addHandler(handler)
    try:
        with _exclusive(run_dir / ".exports.lock"):  # another format's export of this job rewrites best.json too
            exports = _export(run_dir, fmt)
    except Exception as err:  # the reason is recorded; the traceback goes to the export's log
        reason = failure_reason(err)
        log.exception("the %s export failed: %s", fmt, reason)
        write_json(outcome_path(run_dir, fmt), {"ok": False, "reason": reason})
        return EXIT_EXPORT_FAILED
    finally:
        handler.close()
    write_json(outcome_path(run_dir, fmt), {"ok": True, "offered": bool(exports.get(fmt, {}).get("offered"))})
    return 0


def _export(run_dir: Path, fmt: str) -> dict[str, dict[str, Any]]:
    import torch

    from ttm.data import make_loaders
    from ttm.export import CHECK_IMAGES, export_best
    from ttm.spec import parse_spec

    spec = parse_spec(json.loads((run_dir / "spec.json").read_text()))
    t = spec.train
    loaders = make_loaders(spec.dataset, batch_size=t.batch_size, device=torch.device("cpu"), seed=t.seed,
                           drop_last=t.drop_last, num_workers=0, data_root=spec.dataset.root,
                           test_batch_size=CHECK_IMAGES)
    logging.getLogger("ttm.train").info("making the %s export of the best student on request", fmt)
    return export_best(run_dir, [fmt], loaders.test)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


if __name__ == "__main__":
    sys.exit(main())
