"""The training loop: a spec and a metrics callback in, checkpoints and metrics out.

Read it top to bottom: set up (device, data, teacher, student, optimizer, schedule, resume), then one loop over
epochs whose step is plain PyTorch — teacher forward without gradients, then `student_step`: student forward, the loss
of the spec, backward, optimizer and schedule step — and whose epoch ends in `end_epoch` (evaluate, checkpoint,
report). A student group (ttm.group) runs the same two functions for each of its students. Metrics are accumulated
on the device and read once per epoch (no host sync inside the step), which is what lets the GPU fast path run at
full speed and CUDA graphs capture the step.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ttm import tensorboard
from ttm.checkpoint import load_state, save_state, save_student
from ttm.spec import CosineSchedule, JobSpec, StepSchedule

log = logging.getLogger("ttm.train")
MetricsCallback = Callable[[int, dict[str, float]], None]
ProgressCallback = Callable[[int, int, int], None]  # (epoch, step, steps per epoch)
PROGRESS_EVERY_S = 2.0  # how often a step count is reported within an epoch


class TrainingError(RuntimeError):
    """The run cannot go on; the message says why in words a user can act on."""


@dataclass
class TrainResult:
    out_dir: Path
    epochs_done: int
    best_top1: float
    best_epoch: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False


# ------------------------------------------------------------------------------------------ set-up helpers
@dataclass
class Dist:
    """torchrun's environment: rank 0 evaluates and writes files; every rank trains on its slice of each batch."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend=backend)
        return cls(rank=int(os.environ.get("RANK", "0")), world=world)

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(choice: str, dist: Dist) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is cuda, but no CUDA device is visible")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def lr_factor(spec: JobSpec, step: int, steps_per_epoch: int) -> float:
    """The schedule as a function of the optimizer step: linear warm-up, then step decay, cosine or constant."""
    sched, epochs = spec.train.schedule, spec.train.epochs
    epoch_float = step / steps_per_epoch
    warmup = getattr(sched, "warmup_epochs", 0)
    if warmup and epoch_float < warmup:
        return (step + 1) / (warmup * steps_per_epoch)
    if isinstance(sched, StepSchedule):  # the paper's recipe: ×factor at each milestone epoch (1-based epochs)
        assert sched.milestones is not None  # TrainSpec fills them in
        passed = sum(1 for m in sched.milestones if epoch_float >= m)
        return sched.factor ** passed
    if isinstance(sched, CosineSchedule):
        progress = (epoch_float - warmup) / max(epochs - warmup, 1e-9)
        floor = sched.min_lr / spec.train.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def make_optimizer(spec: JobSpec, *modules: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer over the parameters of `modules` (the student, and a feature term's heads)."""
    t = spec.train
    params = [p for m in modules for p in m.parameters()]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                               weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def stats_gamma(spec: JobSpec) -> float | None:
    """γ for the logged KL(p_t^T ‖ q) and U: the loss's own, 1/T for temperature-based losses, none without a
    teacher."""
    loss = spec.loss
    if hasattr(loss, "gamma"):
        return loss.gamma
    if hasattr(loss, "temperature"):
        return 1.0 / loss.temperature
    return None


@torch.no_grad()
def evaluate(model: nn.Module, batches, teacher: nn.Module | None, gamma: float | None, autocast) -> dict[str, float]:
    """Top-1/top-5 and the output statistics of the paper's figures over the whole test split."""
    from ttm.losses import output_stats

    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for x, y in batches:
        with autocast():
            z = model(x)
            v = teacher(x) if teacher is not None else None
        top5 = z.topk(min(5, z.shape[1]), dim=1).indices
        parts = {"top1": (top5[:, 0] == y).sum(), "top5": (top5 == y[:, None]).any(1).sum(),
                 "loss": F.cross_entropy(z.float(), y, reduction="sum")}
        parts.update(output_stats(z, v, gamma if gamma is not None else 1.0))
        if v is None or gamma is None:
            parts = {k: p for k, p in parts.items() if k not in ("kl", "u")}
        for k, p in parts.items():
            sums[k] = sums.get(k, 0) + p.detach().float()
        n += y.shape[0]
    model.train(was_training)
    out = {k: float(s) / n for k, s in sums.items()}  # one host sync per metric per evaluation
    out["top1"] *= 100
    out["top5"] *= 100
    return out


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def setup_device(spec: JobSpec, dist: Dist) -> tuple[torch.device, Callable[[], Any]]:
    """The device of `spec.train` and its autocast (bf16 where the precision asks for it, else a no-op)."""
    t = spec.train
    device = pick_device(t.device, dist)
    cuda = device.type == "cuda"
    bf16 = t.precision == "bf16" or (t.precision == "auto" and cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    return device, autocast


def load_job_teacher(spec: JobSpec, info, device: torch.device, memory_format) -> nn.Module | None:
    """The spec's teacher on `device`, in eval mode and without gradients; None for a loss without one."""
    from ttm.teacher import load_teacher

    if spec.teacher is None:
        return None
    tspec = spec.teacher
    if tspec.job:
        raise TrainingError("teacher.job must be resolved to the job's checkpoint by the server before training")
    teacher = load_teacher(arch=tspec.arch, weights=tspec.weights, torchscript=tspec.torchscript,
                           num_classes=info.num_classes, in_channels=info.channels, fmt=tspec.format)
    return teacher.to(device, memory_format=memory_format)  # type: ignore[call-overload]  # stub lacks it


# ------------------------------------------------------------------------------------------ one student
@dataclass
class StudentRun:
    """One student in training: its network, optimizer, schedule, run directory and best epoch so far. A run trains
    one; a student group (ttm.group) trains K on the same batches and the same teacher logits. `student_step` and
    `end_epoch` below are the step and the epoch end of both."""

    spec: JobSpec
    out_dir: Path
    student: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    features: Any = None  # ttm.features.FeatureTerm, or None (logits only)
    step_student: Callable[..., Any] | None = None  # what the step calls: the student, DDP- or compile-wrapped
    manifest_base: dict[str, Any] = field(default_factory=dict)
    start_epoch: int = 1
    best_top1: float = -1.0
    best_epoch: int = 0
    best_score: float = -1.0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def state_path(self) -> Path:
        return self.out_dir / "state.pt"

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a state.pt this project wrote (the global RNG included)."""
        self.student.load_state_dict(state["model"])
        if self.features is not None:
            self.features.load_state_dict(state["features"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.start_epoch, self.best_top1, self.best_epoch = state["epoch"] + 1, state["best_top1"], state["best_epoch"]
        self.best_score = state.get("best_score", self.best_top1)  # a state written before validation splits

    def resume_state(self, epoch: int) -> dict[str, Any]:
        return {"model": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                **({"features": self.features.state_dict()} if self.features is not None else {}),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(), "epoch": epoch,
                "best_top1": self.best_top1, "best_epoch": self.best_epoch, "best_score": self.best_score}


def build_student_run(spec: JobSpec, out_dir: Path, info, classes: int, device: torch.device, memory_format,
                      teacher: nn.Module | None, train_labels: torch.Tensor, steps_per_epoch: int,
                      job_id: str | None = None) -> StudentRun:
    """The student of `spec` (initialised from the global RNG as it stands), its feature term, optimizer and
    schedule."""
    from ttm.models import build_model

    student = build_model(spec.student.arch, num_classes=classes, in_channels=info.channels)
    student = student.to(device, memory_format=memory_format)  # type: ignore[call-overload]  # stub lacks it
    features = None  # CRD or ITRD on the penultimate features, with heads of its own (ttm.features)
    loss_features = getattr(spec.loss, "features", None)
    if loss_features is not None and teacher is not None:
        from ttm.features import FeatureError, FeatureTerm

        try:
            features = FeatureTerm(loss_features, student, teacher, train_labels).to(device)
        except FeatureError as e:
            raise TrainingError(str(e)) from e
    optimizer = make_optimizer(spec, student, *([features] if features is not None else []))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(spec, step, steps_per_epoch))
    manifest_base = {
        "arch": spec.student.arch, "num_classes": classes,
        "input_shape": [info.channels, info.image_size, info.image_size],
        "normalization": {"mean": list(info.mean), "std": list(info.std)}, "dataset": info.name,
        "class_names": info.class_names, "spec": spec.model_dump(mode="json"),
        **({"job_id": job_id} if job_id else {}),
    }
    return StudentRun(spec, out_dir, student, optimizer, scheduler, features, student, manifest_base)


def student_step(run: StudentRun, x: torch.Tensor, v: torch.Tensor | None, y: torch.Tensor, idx: torch.Tensor,
                 epoch: int, autocast) -> None:
    """One optimizer step of `run`'s student on the batch x with labels y, given the teacher's logits v (None
    without a teacher): student forward, the loss of the spec, backward, optimizer and schedule step. The parts are
    summed on the device, never read here."""
    from ttm.losses import compute_loss

    assert run.step_student is not None
    with autocast():
        z = run.step_student(x)
    parts = compute_loss(run.spec.loss, z, v, y, epoch=epoch)
    if run.features is not None:
        parts = run.features.add(parts, idx)
    run.optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    run.optimizer.step()
    run.scheduler.step()
    for k, p in parts.items():
        run.sums[k] = run.sums[k] + p.detach() if k in run.sums else p.detach().clone()


def epoch_train_metrics(run: StudentRun, epoch: int, steps_per_epoch: int) -> dict[str, float]:
    """The epoch's mean training parts (one host read each), the sums reset; a loss that is no number ends the
    run."""
    metrics = {f"train/{k}": float(s) / steps_per_epoch for k, s in run.sums.items()}
    run.sums = {}
    if not math.isfinite(metrics["train/loss"]):
        raise TrainingError(f"the training loss became {metrics['train/loss']} in epoch {epoch} "
                            f"(lr {run.spec.train.lr}): lower train.lr or check the loss weights")
    return metrics


def end_epoch(run: StudentRun, epoch: int, train_metrics: dict[str, float], *, test_batches, val_batches,
              teacher: nn.Module | None, autocast, seen: int, epoch_time: float, elapsed: float,
              epochs_this_run: int, on_metrics: MetricsCallback | None, logger: logging.Logger) -> dict[str, float]:
    """Evaluate `run`'s student, write its checkpoints (last, best, then the resume state) and report the epoch;
    returns its metrics."""
    t = run.spec.train
    gamma = stats_gamma(run.spec)
    test = evaluate(run.student, test_batches, teacher, gamma, autocast)
    val = evaluate(run.student, val_batches, teacher, gamma, autocast) if val_batches is not None else None
    metrics = {**train_metrics, **{f"test/{k}": v for k, v in test.items()},
               **{f"val/{k}": v for k, v in (val or {}).items()},
               "lr": run.optimizer.param_groups[0]["lr"], "images_per_s": seen / epoch_time,
               "epoch_time_s": epoch_time, "elapsed_s": elapsed,
               "eta_s": elapsed / epochs_this_run * (t.epochs - epoch)}
    # the best student is chosen on the validation split when there is one: the test set is then only
    # reported, never used to pick (best_top1 stays the test top-1 of the student chosen)
    score = val["top1"] if val is not None else test["top1"]
    improved = score > run.best_score
    if improved:
        run.best_score, run.best_top1, run.best_epoch = score, test["top1"], epoch
    manifest = {**run.manifest_base, "epoch": epoch, "top1": test["top1"], "top5": test["top5"],
                "selected_by": "val/top1" if val is not None else "test/top1",
                **({"val_top1": val["top1"]} if val is not None else {})}
    save_student(run.out_dir, "last", run.student, manifest)
    if improved:
        save_student(run.out_dir, "best", run.student, manifest)
    logger.info("epoch %d/%d  loss %.4f  %stest top-1 %.2f  top-5 %.2f  H(q) %.3f  lr %.4g  %.0f img/s  eta %s",
                epoch, t.epochs, metrics["train/loss"], f"val top-1 {val['top1']:.2f}  " if val else "",
                test["top1"], test["top5"], test["entropy"], metrics["lr"], metrics["images_per_s"],
                _hms(metrics["eta_s"]))
    # metrics before the resume state: a run killed in between redoes this epoch and reports it again
    # (rows are upserted), where the other order would lose the epoch's metrics for good
    _emit(run.out_dir, on_metrics, epoch, metrics)
    save_state(run.state_path, run.resume_state(epoch))
    return metrics


def export_best(run: StudentRun, in_channels: int, test_batches) -> None:
    """The exports the spec asks for, of the best student (ttm.export checks each against PyTorch)."""
    if not run.spec.output.formats or not (run.out_dir / "best.json").exists():
        return
    from ttm.export import export_best as export_run_best  # the same code as an export made on request

    export_run_best(run.out_dir, run.spec.output.formats, test_batches)


# ------------------------------------------------------------------------------------------ the run
def train(spec: JobSpec, out_dir: str | Path, *, on_metrics: MetricsCallback | None = None, resume: bool = True,
          stop_after_epoch: int | None = None, data_root: str | None = None, job_id: str | None = None,
          on_progress: ProgressCallback | None = None) -> TrainResult:
    """Train `spec`'s student into `out_dir`; resumes from `out_dir/state.pt` when it exists and `resume` is set.
    `job_id` (the server's) is recorded in the students' manifests and files. Within an epoch, every
    PROGRESS_EVERY_S the step reached is written to `out_dir/progress.json` and given to `on_progress(epoch, step,
    steps)`.

    `stop_after_epoch` ends this process's run after that epoch (its checkpoint written), as a stopped job would.
    """
    from ttm.data import make_loaders

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dist = Dist.from_env()
    handler = _attach_log_file(out_dir / "train.log") if dist.main else None
    try:
        t = spec.train
        set_seed(t.seed)
        device, autocast = setup_device(spec, dist)
        cuda = device.type == "cuda"
        if t.batch_size % dist.world:
            raise TrainingError(f"train.batch_size={t.batch_size} must divide over {dist.world} processes")
        train_batches, test_batches, info, val_batches = make_loaders(
            spec.dataset, batch_size=t.batch_size, device=device, seed=t.seed, fast_path=t.fast_path,
            drop_last=t.drop_last, num_workers=t.num_workers, data_root=data_root)
        classes = spec.student.num_classes or info.num_classes
        if classes != info.num_classes:
            raise TrainingError(f"student.num_classes={classes} but the dataset has {info.num_classes} classes")
        memory_format = torch.channels_last if cuda else torch.contiguous_format

        teacher = load_job_teacher(spec, info, device, memory_format)
        steps_per_epoch = len(train_batches)
        run = build_student_run(spec, out_dir, info, classes, device, memory_format, teacher, train_batches.labels,
                                steps_per_epoch, job_id)
        if resume and run.state_path.exists():
            run.resume(load_state(run.state_path))
            log.info("resumed from %s at epoch %d (best top-1 %.2f at epoch %d)",
                     run.state_path, run.start_epoch - 1, run.best_top1, run.best_epoch)
        start_epoch = run.start_epoch

        ddp_student = run.student
        if dist.world > 1:
            ddp_student = nn.parallel.DistributedDataParallel(run.student,
                                                              device_ids=[device.index] if cuda else None)
        run.step_student = torch.compile(ddp_student) if t.compile else ddp_student
        step_teacher = torch.compile(teacher) if (t.compile and teacher is not None) else teacher

        if dist.main:
            log.info("job %s: %s → %s on %s (%s), %d train / %s%d test images, %d steps/epoch, fast path %s",
                     spec.name, spec.teacher.arch if spec.teacher else "-", spec.student.arch, info.name, device,
                     info.train_size, f"{info.validation_size} validation / " if info.validation_size else "",
                     info.test_size, steps_per_epoch, "on" if info.fast else "off")
            if teacher is not None and start_epoch == 1:
                tm = evaluate(teacher, test_batches, None, None, autocast)
                log.info("teacher test top-1 %.2f", tm["top1"])
                _emit(out_dir, on_metrics, 0, {"teacher/top1": tm["top1"], "teacher/top5": tm["top5"],
                                               "teacher/entropy": tm["entropy"]})

        run_start = time.perf_counter()
        last: dict[str, float] = {}
        epoch = start_epoch - 1
        for epoch in range(start_epoch, t.epochs + 1):
            # ---- one epoch of training: nothing in this loop waits on the host
            train_batches.set_epoch(epoch)
            run.student.train()
            seen = 0
            epoch_start = time.perf_counter()
            next_progress = epoch_start + PROGRESS_EVERY_S
            for step, (x, y, idx) in enumerate(train_batches, 1):
                if dist.world > 1:
                    x, y, idx = x[dist.rank::dist.world], y[dist.rank::dist.world], idx[dist.rank::dist.world]
                x = x.contiguous(memory_format=memory_format)
                with autocast(), torch.no_grad():
                    v = step_teacher(x) if step_teacher is not None else None
                student_step(run, x, v, y, idx, epoch, autocast)
                seen += y.shape[0] * dist.world
                if dist.main and time.perf_counter() >= next_progress:  # a host clock: the step is not waited on
                    _progress(out_dir, on_progress, epoch, step, steps_per_epoch)
                    next_progress = time.perf_counter() + PROGRESS_EVERY_S
            if cuda:
                torch.cuda.synchronize()
            epoch_time = time.perf_counter() - epoch_start

            # ---- once per epoch: read the sums, evaluate, checkpoint, report
            train_metrics = epoch_train_metrics(run, epoch, steps_per_epoch)
            stop_now = stop_after_epoch is not None and stop_after_epoch <= epoch < t.epochs
            if not dist.main:
                _barrier(dist)
                if stop_now:
                    return TrainResult(out_dir, epoch, run.best_top1, run.best_epoch, {}, stopped_early=True)
                continue
            last = end_epoch(run, epoch, train_metrics, test_batches=test_batches, val_batches=val_batches,
                             teacher=teacher, autocast=autocast, seen=seen, epoch_time=epoch_time,
                             elapsed=time.perf_counter() - run_start, epochs_this_run=epoch - start_epoch + 1,
                             on_metrics=on_metrics, logger=log)
            _barrier(dist)
            if stop_now:
                log.info("stopping after epoch %d as asked; resume continues from here", epoch)
                return TrainResult(out_dir, epoch, run.best_top1, run.best_epoch, last, stopped_early=True)

        if dist.main:
            export_best(run, info.channels, test_batches)
            log.info("done: best test top-1 %.2f at epoch %d; checkpoints in %s", run.best_top1, run.best_epoch,
                     out_dir)
        return TrainResult(out_dir, epoch, run.best_top1, run.best_epoch, last)
    finally:
        tensorboard.close(out_dir)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _emit(out_dir: Path, on_metrics: MetricsCallback | None, epoch: int, metrics: dict[str, float]) -> None:
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": epoch, "metrics": metrics}) + "\n")
    tensorboard.add_scalars(out_dir, epoch, metrics)  # the same rows as TensorBoard scalars
    if on_metrics is not None:
        on_metrics(epoch, metrics)


def _progress(out_dir: Path, on_progress: ProgressCallback | None, epoch: int, step: int, steps: int) -> None:
    """Where the epoch is, for a progress bar: progress.json (replaced whole; the worker reads it) and the callback.
    A step counted here was queued on the device, perhaps not yet run: close enough for a bar."""
    tmp = out_dir / "progress.json.tmp"
    tmp.write_text(json.dumps({"epoch": epoch, "step": step, "steps": steps}))
    os.replace(tmp, out_dir / "progress.json")
    if on_progress is not None:
        on_progress(epoch, step, steps)


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch.distributed.barrier()


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
