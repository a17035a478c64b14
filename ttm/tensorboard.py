"""TensorBoard event files of a run: every metric row the trainer reports, as a scalar of that name at step = epoch,
in `<run dir>/tensorboard/` (the job server offers that folder as GET /v1/jobs/{id}/tensorboard).

One writer per run directory and process, opened by the first row the process reports there. That first row is
where this process's run begins: epoch 0 (the teacher's row) or 1 for a run from the start, the epoch after the
resume state for a resumed one. The writer's first event is a restart at that step (SummaryWriter's `purge_step`),
and TensorBoard's reader then drops what earlier event files hold for that step and later ones: an epoch whose
metrics were written before its process was killed, and which ran again, shows once, with the value of the run
that kept it. The events are a convenience beside metrics.jsonl: without the `tensorboard` package the trainer
says so once in its log and goes on.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("ttm.train")
EVENTS_DIR = "tensorboard"

_writers: dict[Path, Any] = {}  # run directory -> its SummaryWriter in this process
_missing_said = False


def add_scalars(out_dir: Path, epoch: int, metrics: dict[str, float]) -> None:
    """One epoch's rows as scalars at step `epoch`, flushed to disk before this returns."""
    writer = _writers.get(out_dir) or _open(out_dir, epoch)
    if writer is None:
        return
    for name, value in metrics.items():
        writer.add_scalar(name, value, global_step=epoch)
    writer.flush()  # on disk with the epoch's metrics line: a download during the run shows it


def close(out_dir: Path) -> None:
    writer = _writers.pop(out_dir, None)
    if writer is not None:
        writer.close()


def _open(out_dir: Path, first_step: int) -> Any:
    global _missing_said
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's writer needs the tensorboard package (the [train] extra has it)
        if not _missing_said:
            log.warning("no TensorBoard events (%s): pip install tensorboard to have them", err)
            _missing_said = True
        return None
    writer = _writers[out_dir] = SummaryWriter(log_dir=str(out_dir / EVENTS_DIR), purge_step=first_step)
    return writer
