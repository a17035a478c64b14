"""GET /v1/queue: a queue's jobs in the order they will start, and why; GET /v1/users/me: the caller's standing."""
from __future__ import annotations

import heapq
import statistics
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.deps import CurrentUser, ReadSessionDep, SettingsDep
from service.models import Job, Metric, User, utcnow
from service.queries.projects import projects_of
from service.scheduling import (
    HELD,
    PRIORITY_RANK,
    allowed_priorities,
    dispatch_order,
    half_life,
    live_workers,
    queue_state,
    week_usage_hours,
)
from service.schemas import error_responses
from service.states import FINAL_STATES, QUEUED

router = APIRouter(prefix="/v1", tags=["queue"], responses=error_responses(401, 422))


class QueueEntry(BaseModel):
    position: int = Field(description="1 = the next job this queue starts")
    priority: str = Field(description="high | normal | low")
    owner_usage_hours: float = Field(description="the owner's decayed usage, slot-hours, when this job's turn comes")
    owner_share: float = Field(description="the owner's weight: usage / share orders users within a class")
    held_back: bool = Field(description="its owner is at their max-running: it starts when one of theirs ends")
    eta_seconds: float | None = Field(description="estimated wait until it starts; null: no worker seen lately")
    id: str | None = Field(description="the job's id: yours only (an admin: all)")
    name: str | None = None
    owner: str | None = Field(description="yours only (an admin: all)")


class QueueOut(BaseModel):
    queue: str
    queued: int = Field(description="queued jobs in this queue")
    running: int = Field(description="jobs running in this queue")
    workers: int = Field(description="workers of this queue seen in the last minute")
    job_seconds: float | None = Field(description="the median run time of this queue's finished jobs lately, "
                                                  "which the ETAs assume for each queued job")
    items: list[QueueEntry]


class UserOut(BaseModel):
    name: str
    is_admin: bool
    weight: float = Field(description="your share of the queue (others have 1 unless an admin says otherwise)")
    priorities: list[str] = Field(description="the classes you may submit in (resources.priority)")
    max_running: int | None = Field(description="slots your jobs may hold at once; null: no limit")
    max_queued: int = Field(description="queued jobs you may have")
    gpu_hours_per_week: float | None = Field(description="your quota; null: none")
    used_gpu_hours_7d: float = Field(description="slot-hours your jobs ran in the last 7 days")
    usage_hours: float = Field(description="your decayed usage (half-life: TTM_FAIR_SHARE_HALF_LIFE_HOURS), "
                                           "which orders you among users of one class")
    running: int
    queued: int
    projects: list[str] = Field(default_factory=list, description="your projects: their artifacts and jobs can be "
                                                                  "your teachers")


def _etas(session: Session, queue: str, count: int, job_seconds: float | None, workers: int,
          now: datetime) -> list[float | None]:
    """When each of the first `count` queued jobs starts, if every worker of the queue takes the next one as its
    job ends: running jobs end after their remaining epochs (at their own pace so far), queued ones take the
    median run time."""
    if workers == 0 or job_seconds is None:
        return [None] * count
    free_at: list[float] = []
    running = session.execute(select(Job.id, Job.started_at, Job.spec).where(Job.state.in_(HELD),
                                                                             Job.queue == queue)).all()
    done = dict(session.execute(select(Metric.job_id, func.max(Metric.epoch))
                                .where(Metric.job_id.in_([r.id for r in running])).group_by(Metric.job_id)).all()) \
        if running else {}
    for job_id, started, spec in running:
        epochs = int(spec.get("train", {}).get("epochs", 1) or 1)
        elapsed = (now - started).total_seconds() if started else 0.0
        finished_epochs = done.get(job_id) or 0
        per_epoch = elapsed / finished_epochs if finished_epochs else job_seconds / epochs
        free_at.append(max(0.0, epochs * per_epoch - elapsed))
    free_at = sorted(free_at)[:workers] + [0.0] * max(0, workers - len(free_at))
    heapq.heapify(free_at)
    etas: list[float | None] = []
    for _ in range(count):
        start = heapq.heappop(free_at)
        etas.append(round(start, 1))
        heapq.heappush(free_at, start + job_seconds)
    return etas


@router.get("/queue", response_model=QueueOut)
def get_queue(who: CurrentUser, session: ReadSessionDep, settings: SettingsDep,
              queue: Literal["gpu", "cpu"] = "gpu",
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> QueueOut:
    """The queue's jobs in the order they will start, with each one's reason (class, its owner's usage over
    share) and an estimated wait. Everyone sees every position; only an admin sees other users' job ids and
    names."""
    now = utcnow()
    order = dispatch_order(session, queue, settings, now, limit=limit)
    ids = [p.job.id for p in order]
    jobs = {job_id: (name, owner_id, owner) for job_id, name, owner_id, owner in session.execute(
        select(Job.id, Job.name, Job.owner_id, User.name).join(User, User.id == Job.owner_id)
        .where(Job.id.in_(ids)))} if ids else {}
    durations = [(f - s).total_seconds() for s, f in session.execute(
        select(Job.started_at, Job.finished_at).where(Job.queue == queue, Job.state.in_(FINAL_STATES),
                                                      Job.started_at.is_not(None),
                                                      Job.finished_at > now - half_life(settings))
        .order_by(Job.finished_at.desc()).limit(500))
        if s is not None and f is not None]  # both are, by the query
    job_seconds = statistics.median(durations) if durations else None
    workers = live_workers(session, queue, now)
    etas = _etas(session, queue, len(order), job_seconds, workers, now)
    items = []
    for placed, eta in zip(order, etas, strict=True):
        name, owner_id, owner = jobs[placed.job.id]
        mine = who.is_admin or owner_id == who.id
        items.append(QueueEntry(position=placed.position, priority=placed.job.priority,
                                owner_usage_hours=round(placed.owner_usage_hours, 3), owner_share=placed.owner_weight,
                                held_back=placed.held_back, eta_seconds=eta, id=placed.job.id if mine else None,
                                name=name if mine else None, owner=owner if mine else None))
    counts = dict(session.execute(select(Job.state, func.count()).where(Job.queue == queue,
                                                                        Job.state.in_((QUEUED, *HELD)))
                                  .group_by(Job.state)).all())
    return QueueOut(queue=queue, queued=counts.get(QUEUED, 0), running=sum(counts.get(s, 0) for s in HELD),
                    workers=workers, job_seconds=job_seconds, items=items)


@router.get("/users/me", response_model=UserOut)
def me(who: CurrentUser, session: ReadSessionDep, settings: SettingsDep) -> UserOut:
    """Your limits and your standing in the queue: what an admin set (`ttm admin user set`) and what you used."""
    user = session.get(User, who.id)
    assert user is not None
    load = queue_state(session, None, settings, utcnow()).loads.get(user.id)
    counts = dict(session.execute(select(Job.state, func.count()).where(Job.owner_id == user.id,
                                                                        Job.state.in_((QUEUED, *HELD)))
                                  .group_by(Job.state)).all())
    return UserOut(name=user.name, is_admin=user.is_admin, weight=user.weight,
                   priorities=sorted(allowed_priorities(user), key=PRIORITY_RANK.__getitem__),
                   max_running=user.max_running,
                   max_queued=user.max_queued if user.max_queued is not None else settings.limits_max_queued_per_user,
                   gpu_hours_per_week=user.gpu_hours_per_week,
                   used_gpu_hours_7d=round(week_usage_hours(session, user.id), 3),
                   usage_hours=round(load.usage / 3600, 3) if load else 0.0,
                   running=sum(counts.get(s, 0) for s in HELD), queued=counts.get(QUEUED, 0),
                   projects=projects_of(session, user.id))
