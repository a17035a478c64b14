"""A student group: K students of one sweep trained in one process, on one data pipeline and one teacher forward
per batch (issue 17, item 4).

Jobs that share the teacher, the data set, train.seed and the batch plan see identical batches (ttm.data draws an
epoch's batches from (seed, epoch) alone), so one process can train them together: each batch is drawn once and the
teacher's logits computed once, then every member takes its own step with its own loss, optimizer and schedule —
`ttm.train.student_step`, the step of a single run — and ends its epoch with `ttm.train.end_epoch`. A member's run
directory holds exactly what `ttm.train.train` writes (state.pt every epoch, last/best checkpoints and manifests,
metrics.jsonl, progress.json, train.log, exports), so the worker's recorder reads it, and `train` or `train_group`
resume it, as a single run's.

Why a member ends with the single run's weights (the test: tests/ttm/test_group.py): its student is built from the
RNG state a single run builds it from (after the seed, the data and the teacher), it sees the same batches and the
same teacher logits, and it keeps a global RNG state of its own, swapped in around its step and its epoch end, so
whatever draws from the RNG (CRD's negatives, dropout) draws what it would alone.

    from ttm.group import train_group
    results = train_group([spec_a, spec_b, spec_c], ["runs/a", "runs/b", "runs/c"])

Members leave the group on their own: `should_stop(member, epoch, metrics) -> True` (early stopping, a sweep's
pruner) ends that member after the epoch (recorded in its state.pt, so a resumed group does not train it again), a
member whose loss stops being a number fails alone, and the others go on. After a kill, each member resumes from
its own state.pt, also when they stopped at different epochs: the group starts at the earliest epoch, and a member
that is ahead waits until the group reaches it. The feature terms (CRD, ITRD) work in a group: every member's
pre-hook on the shared teacher keeps the features of the one teacher forward.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ttm import tensorboard
from ttm.checkpoint import load_state, save_state
from ttm.spec import JobSpec
from ttm.sweeps import SHARED_FIELDS, group_difference
from ttm.train import (
    PROGRESS_EVERY_S,
    Dist,
    StudentRun,
    TrainingError,
    TrainResult,
    _emit,
    _progress,
    build_student_run,
    end_epoch,
    epoch_train_metrics,
    evaluate,
    export_best,
    load_job_teacher,
    rng_state,
    set_rng_state,
    set_seed,
    setup_device,
    student_step,
)

log = logging.getLogger("ttm.group")

STOPPED_KEY = "left_group"  # in a member's state.pt: the epoch after which should_stop ended it, for good

MemberState = Literal["done", "stopped", "paused", "failed", "left"]
LEAVE_CHECK_S = 0.25  # how often, within an epoch, leave_now is asked


class GroupError(ValueError):
    """Specs that cannot train as one group; the message names the field and says what to do."""


@dataclass
class GroupMember:
    """What the callbacks are told of a member: its place in the group, its spec and its run directory."""

    index: int
    spec: JobSpec
    out_dir: Path
    job_id: str | None = None


@dataclass
class MemberResult:
    """How a member ended. `state`: done (all epochs), stopped (should_stop said so), paused (stop_after_epoch:
    resume continues it), failed (`error` says why; the others went on) or left (leave_now said so within an
    epoch: that epoch is dropped, and its state.pt is the last finished epoch's). `device_s`: its share of the group's
    training time, each epoch's wall time split evenly among the members that trained in it (what a queue charges
    each trial)."""

    member: GroupMember
    state: MemberState
    result: TrainResult | None = None
    error: str | None = None
    device_s: float = 0.0


StopHook = Callable[[GroupMember, int, dict[str, float]], bool]
LeaveHook = Callable[[GroupMember], bool]
GroupMetricsCallback = Callable[[GroupMember, int, dict[str, float]], None]
GroupProgressCallback = Callable[[GroupMember, int, int, int], None]  # (member, epoch, step, steps per epoch)
MemberEndCallback = Callable[[MemberResult], None]


# ---------------------------------------------------------------------------------------------- what is shared
def check_group(specs: Sequence[JobSpec]) -> None:
    """Refuse specs that cannot share one pipeline and one teacher: a GroupError naming the first field in which a
    member differs from the first member."""
    if not specs:
        raise GroupError("a student group needs at least one spec")
    dumps = [s.model_dump(mode="json") for s in specs]
    for i, dump in enumerate(dumps[1:], 1):
        where = group_difference(dumps[0], dump)
        if where is not None:
            path, a, b = where
            raise GroupError(
                f"{path} differs: {_shown(b)} in member {i} ({specs[i].name}), {_shown(a)} in member 0 "
                f"({specs[0].name}); a student group shares {', '.join(SHARED_FIELDS)}: give them the same "
                f"{path}, or train member {i} as its own job")
    for i, spec in enumerate(specs):
        if spec.resources.gpus > 1:
            raise GroupError(f"resources.gpus is {spec.resources.gpus} in member {i} ({spec.name}): a student group "
                             "trains in one process on one device; set resources.gpus to 1 or 0")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"


# ---------------------------------------------------------------------------------------------- a member in training
@dataclass
class _Member:
    info: GroupMember
    run: StudentRun
    logger: logging.Logger
    rng: dict[str, Any] = field(default_factory=dict)
    state: MemberState | None = None  # set when it leaves the group
    result: TrainResult | None = None
    error: str | None = None
    device_s: float = 0.0
    last: dict[str, float] = field(default_factory=dict)
    run_start: float = 0.0

    @contextmanager
    def own_rng(self) -> Iterator[None]:
        """The member's global RNG state in effect, as it would be in a run of its own."""
        set_rng_state(self.rng)
        try:
            yield
        finally:
            self.rng = rng_state()

    def outcome(self) -> MemberResult:
        assert self.state is not None
        return MemberResult(self.info, self.state, self.result, self.error, self.device_s)


class _Replay(nn.Module):
    """The teacher's logits of fixed evaluation splits, computed once and handed back batch by batch in the order
    end_epoch evaluates them (the test split, then the validation split, each whole): K members are evaluated
    against one teacher pass instead of K."""

    def __init__(self, teacher: nn.Module, splits: Sequence[Any], autocast) -> None:
        super().__init__()
        with torch.no_grad(), autocast():
            self.logits = [teacher(x) for batches in splits for x, _ in batches]
        self.position = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.logits[self.position % len(self.logits)]
        self.position += 1
        if v.shape[0] != x.shape[0]:
            raise RuntimeError("the evaluation splits changed under the teacher's replay")
        return v


def _attach_log(logger: logging.Logger, path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


# ---------------------------------------------------------------------------------------------- the group's run
def train_group(specs: Sequence[JobSpec], run_dirs: Sequence[str | Path], *,
                on_metrics: GroupMetricsCallback | None = None, should_stop: StopHook | None = None,
                on_progress: GroupProgressCallback | None = None, on_member_end: MemberEndCallback | None = None,
                resume: bool = True, stop_after_epoch: int | None = None, data_root: str | None = None,
                job_ids: Sequence[str | None] | None = None, leave_now: LeaveHook | None = None
                ) -> list[MemberResult]:
    """Train `specs[i]`'s student into `run_dirs[i]`, all on one data pipeline and one teacher forward per batch;
    each member resumes from its own state.pt when `resume` is set. Returns how each member ended, in order.

    `should_stop(member, epoch, metrics)`, asked after each of a member's epochs, ends that member when true;
    `leave_now(member)`, asked every LEAVE_CHECK_S within an epoch, ends it at once (a cancelled job: its epoch
    under way is dropped);
    `on_member_end(result)` is called as each member leaves (the worker writes its outcome there); `on_metrics` and
    `on_progress` are those of `ttm.train.train` with the member first. `stop_after_epoch` pauses every member after
    that epoch, as in `train`. A member that fails (its loss became NaN) leaves the group with its reason; an
    error of the group itself (out of memory, a missing data set) is raised."""
    from ttm.data import make_loaders

    check_group(specs)
    if len(run_dirs) != len(specs):
        raise GroupError(f"{len(specs)} specs but {len(run_dirs)} run directories: give one directory per member")
    dirs = [Path(d) for d in run_dirs]
    resolved = [d.resolve() for d in dirs]
    if len(set(resolved)) != len(resolved):
        raise GroupError("two members share a run directory: give each member its own")
    ids = list(job_ids) if job_ids is not None else [None] * len(specs)
    if len(ids) != len(specs):
        raise GroupError(f"{len(specs)} specs but {len(ids)} job ids")
    dist = Dist.from_env()
    if dist.world > 1:
        raise GroupError("a student group trains in one process: run it without torchrun")

    first, t = specs[0], specs[0].train
    members: list[_Member] = []
    handlers: list[tuple[logging.Logger, logging.Handler]] = []
    try:
        set_seed(t.seed)
        device, autocast = setup_device(first, dist)
        cuda = device.type == "cuda"
        train_batches, test_batches, info, val_batches = make_loaders(
            first.dataset, batch_size=t.batch_size, device=device, seed=t.seed, fast_path=t.fast_path,
            drop_last=t.drop_last, num_workers=t.num_workers, data_root=data_root)
        memory_format = torch.channels_last if cuda else torch.contiguous_format
        teacher = load_job_teacher(first, info, device, memory_format)
        steps_per_epoch = len(train_batches)
        built_from = rng_state()  # where a single run of any member builds its student

        for i, (spec, out_dir) in enumerate(zip(specs, dirs)):
            classes = spec.student.num_classes or info.num_classes
            if classes != info.num_classes:
                raise TrainingError(f"member {i} ({spec.name}): student.num_classes={classes} but the dataset has "
                                    f"{info.num_classes} classes")
            out_dir.mkdir(parents=True, exist_ok=True)
            logger = logging.getLogger(f"ttm.group.member{i}")
            handlers.append((logger, _attach_log(logger, out_dir / "train.log")))
            set_rng_state(built_from)
            run = build_student_run(spec, out_dir, info, classes, device, memory_format, teacher,
                                    train_batches.labels, steps_per_epoch, ids[i])
            member = _Member(GroupMember(i, spec, out_dir, ids[i]), run, logger)
            members.append(member)
            state = load_state(run.state_path) if resume and run.state_path.exists() else None
            if state is not None:
                run.resume(state)
                logger.info("resumed from %s at epoch %d (best top-1 %.2f at epoch %d)", run.state_path,
                            state["epoch"], run.best_top1, run.best_epoch)
                if state.get(STOPPED_KEY) is not None:  # should_stop ended it in an earlier run of the group
                    member.state = "stopped"
                    member.result = TrainResult(out_dir, state["epoch"], run.best_top1, run.best_epoch,
                                                stopped_early=True)
            member.rng = rng_state()
            member.run.step_student = torch.compile(member.run.student) if t.compile else member.run.student
            logger.info("job %s: %s → %s on %s (%s), %d train / %s%d test images, %d steps/epoch, fast path %s; "
                        "member %d of a student group of %d (one teacher forward per batch)",
                        spec.name, spec.teacher.arch if spec.teacher else "-", spec.student.arch, info.name, device,
                        info.train_size, f"{info.validation_size} validation / " if info.validation_size else "",
                        info.test_size, steps_per_epoch, "on" if info.fast else "off", i, len(specs))
        step_teacher = torch.compile(teacher) if (t.compile and teacher is not None) else teacher

        for m in members:
            if m.state is not None and on_member_end is not None:
                on_member_end(m.outcome())
        waiting = [m for m in members if m.state is None]
        if teacher is not None and any(m.run.start_epoch == 1 for m in waiting):
            tm = evaluate(teacher, test_batches, None, None, autocast)
            for m in waiting:
                if m.run.start_epoch == 1:
                    m.logger.info("teacher test top-1 %.2f", tm["top1"])
                    _emit(m.info.out_dir, _callback(on_metrics, m), 0, {
                        "teacher/top1": tm["top1"], "teacher/top5": tm["top5"], "teacher/entropy": tm["entropy"]})
        replay = None
        if teacher is not None and waiting:
            replay = _Replay(teacher, [test_batches, *([val_batches] if val_batches is not None else [])], autocast)

        start = min((m.run.start_epoch for m in waiting), default=t.epochs + 1)
        for m in waiting:
            m.run_start = time.perf_counter()
        for epoch in range(start, t.epochs + 1):
            active = [m for m in members if m.state is None and m.run.start_epoch <= epoch]
            if not active:  # the rest left, or are ahead (resumed from a later epoch) and wait for theirs
                continue
            # ---- one epoch: each batch and its teacher logits once, then every member's own step
            train_batches.set_epoch(epoch)
            for m in active:
                m.run.student.train()
            seen = 0
            epoch_start = time.perf_counter()
            next_progress = epoch_start + PROGRESS_EVERY_S
            next_look = epoch_start + LEAVE_CHECK_S
            for step, (x, y, idx) in enumerate(train_batches, 1):
                if leave_now is not None and time.perf_counter() >= next_look:
                    active = _without_leavers(active, epoch, leave_now, on_member_end)
                    next_look = time.perf_counter() + LEAVE_CHECK_S
                    if not active:
                        break
                x = x.contiguous(memory_format=memory_format)
                with autocast(), torch.no_grad():
                    v = step_teacher(x) if step_teacher is not None else None
                for m in active:
                    with m.own_rng():
                        student_step(m.run, x, v, y, idx, epoch, autocast)
                seen += y.shape[0]
                if time.perf_counter() >= next_progress:
                    for m in active:
                        _progress(m.info.out_dir, _progress_callback(on_progress, m), epoch, step, steps_per_epoch)
                    next_progress = time.perf_counter() + PROGRESS_EVERY_S
            if cuda:
                torch.cuda.synchronize()
            epoch_time = time.perf_counter() - epoch_start
            if leave_now is not None:
                active = _without_leavers(active, epoch, leave_now, on_member_end)

            # ---- once per epoch, member by member: evaluate, checkpoint, report, and whether it goes on
            for m in active:
                m.device_s += epoch_time / len(active)
                with m.own_rng():
                    _end_member_epoch(m, epoch, steps_per_epoch, seen, epoch_time, test_batches, val_batches,
                                      replay, autocast, on_metrics, should_stop)
                if m.state is not None and on_member_end is not None:
                    on_member_end(m.outcome())
            if stop_after_epoch is not None and stop_after_epoch <= epoch < t.epochs:
                for m in members:
                    if m.state is None:
                        m.logger.info("stopping after epoch %d as asked; resume continues from here", epoch)
                        m.state = "paused"
                        m.result = TrainResult(m.info.out_dir, epoch, m.run.best_top1, m.run.best_epoch, m.last,
                                               stopped_early=True)
                        if on_member_end is not None:
                            on_member_end(m.outcome())
                break

        for m in members:
            if m.state is None:  # every epoch trained (now or in an earlier run)
                export_best(m.run, info.channels, test_batches)
                m.logger.info("done: best test top-1 %.2f at epoch %d; checkpoints in %s", m.run.best_top1,
                              m.run.best_epoch, m.info.out_dir)
                m.state = "done"
                m.result = TrainResult(m.info.out_dir, t.epochs, m.run.best_top1, m.run.best_epoch, m.last)
                if on_member_end is not None:
                    on_member_end(m.outcome())
        return [m.outcome() for m in members]
    finally:
        for d in dirs:
            tensorboard.close(d)  # each member's events writer, opened by its first metrics row
        for logger, handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def _without_leavers(active: list[_Member], epoch: int, leave_now: LeaveHook,
                     on_member_end: MemberEndCallback | None) -> list[_Member]:
    """`active` less the members leave_now sends away now (their epoch under way dropped)."""
    staying = []
    for m in active:
        if not leave_now(m.info):
            staying.append(m)
            continue
        m.logger.info("asked to leave the group in epoch %d; it resumes from epoch %d's checkpoint", epoch,
                      epoch - 1)
        m.state = "left"
        m.result = TrainResult(m.info.out_dir, epoch - 1, m.run.best_top1, m.run.best_epoch, m.last,
                               stopped_early=True)
        if on_member_end is not None:
            on_member_end(m.outcome())
    return staying


def _end_member_epoch(m: _Member, epoch: int, steps_per_epoch: int, seen: int, epoch_time: float, test_batches,
                      val_batches, teacher: nn.Module | None, autocast, on_metrics: GroupMetricsCallback | None,
                      should_stop: StopHook | None) -> None:
    """The single run's epoch end for one member; then it fails alone, leaves (should_stop) or goes on."""
    try:
        train_metrics = epoch_train_metrics(m.run, epoch, steps_per_epoch)
    except TrainingError as err:
        m.logger.error("member %d (%s) leaves the group: %s", m.info.index, m.info.spec.name, err)
        m.state, m.error = "failed", str(err)
        return
    m.last = end_epoch(m.run, epoch, train_metrics, test_batches=test_batches, val_batches=val_batches,
                       teacher=teacher, autocast=autocast, seen=seen, epoch_time=epoch_time,
                       elapsed=time.perf_counter() - m.run_start, epochs_this_run=epoch - m.run.start_epoch + 1,
                       on_metrics=_callback(on_metrics, m), logger=m.logger)
    if should_stop is not None and epoch < m.info.spec.train.epochs and should_stop(m.info, epoch, m.last):
        save_state(m.run.state_path, {**m.run.resume_state(epoch), STOPPED_KEY: {"epoch": epoch}})
        export_best(m.run, m.run.manifest_base["input_shape"][0], test_batches)
        m.logger.info("should_stop ended this member after epoch %d; the rest of the group goes on", epoch)
        m.state = "stopped"
        m.result = TrainResult(m.info.out_dir, epoch, m.run.best_top1, m.run.best_epoch, m.last, stopped_early=True)


def _callback(on_metrics: GroupMetricsCallback | None, m: _Member):
    if on_metrics is None:
        return None
    return lambda epoch, metrics: on_metrics(m.info, epoch, metrics)


def _progress_callback(on_progress: GroupProgressCallback | None, m: _Member):
    if on_progress is None:
        return None
    return lambda epoch, step, steps: on_progress(m.info, epoch, step, steps)
