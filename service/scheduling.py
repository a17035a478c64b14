"""The lab queue's policy: which queued job a free worker gets, decided from the database alone.

Within a queue, a job's place is given by, in order:

1. its priority class: high before normal before low;
2. its owner's fair-share load: the owner's recent usage over their share (users.weight, default 1). Usage is in
   slot-seconds (a slot is one GPU; a cpu-queue job holds one), each job charged for at least MIN_CHARGE_S from its
   start, and decaying with a half-life (TTM_FAIR_SHARE_HALF_LIFE_HOURS, default a week) from when it ended; a
   running job counts until now, undecayed. A student group (jobs.group_id: trials of a sweep trained in one
   process) takes one slot: its running members share it, and each is charged its part of the group's time;
   a user with nothing running and nothing lately goes first;
3. the job's submit time (its id).

Preemption: when the job a free worker would take next is `high` but every live worker of its queue is busy, and
some of them run `low` or `normal` work, the running job of the lowest class (the newest-started among equals) is
asked to give up its worker (`preemption_victim`; the reconciler asks, the job's worker stops it at its next epoch
boundary and puts it back in the queue). One at a time per queue; TTM_PREEMPTION=false turns it off.

An owner at their max_running is held back at dispatch (their jobs wait; nothing is refused). The order is a pure
function of the database's rows and the clock: `dispatch_order` computes the whole sequence a queue will start in
if nothing else changes, by playing the policy forward (each job it picks charges its owner what such a job costs,
MIN_CHARGE_S or the queue's median duration of late, whichever is larger), and `pick_next` is its first step.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, true
from sqlalchemy.orm import Session

from service.models import Job, User, Worker, utcnow
from service.settings import Settings
from service.states import FINAL_STATES, HELD_STATES, QUEUED

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}
DEFAULT_PRIORITIES = ("low", "normal")  # what a user may submit in unless an admin says otherwise
MIN_CHARGE_S = 60.0  # a job costs at least a slot-minute: its start is what took the slot from someone else
HELD = HELD_STATES
HORIZON_HALF_LIVES = 10  # older usage weighs under 0.1 %: not read
WORKER_SEEN_S = 60  # a worker that has not beaten its heart for this long is not counted as one of its queue's


@dataclass
class Load:
    """One user's standing in the queue: slots running now, decayed usage (slot-seconds), share, limit."""

    running: float = 0.0  # slots (a student group's members share one)
    usage: float = 0.0
    weight: float = 1.0
    max_running: int | None = None

    @property
    def share_load(self) -> float:
        return self.usage / self.weight if self.weight > 0 else math.inf

    def at_limit(self, slots: int = 1) -> bool:
        return self.max_running is not None and self.running + slots > self.max_running


@dataclass(frozen=True)
class Queued:
    id: str
    owner_id: int
    priority: str
    slots: int


@dataclass
class Placed:
    """A queued job in dispatch order, with why it stands there."""

    job: Queued
    position: int
    owner_usage_hours: float  # the owner's decayed usage when this job's turn comes, in slot-hours
    owner_weight: float
    held_back: bool = False  # its owner was at max_running when its turn came: it waits for one of theirs to end


@dataclass
class QueueState:
    loads: dict[int, Load] = field(default_factory=dict)
    job_cost_s: float = MIN_CHARGE_S


def half_life(settings: Settings) -> timedelta:
    return timedelta(hours=settings.fair_share_half_life_hours)


def charge(slots: int, started: datetime, ended: datetime) -> float:
    """What one job costs its owner: slots × its running time, at least MIN_CHARGE_S."""
    return slots * max((ended - started).total_seconds(), MIN_CHARGE_S)


def decayed(amount: float, ended: datetime, now: datetime, life: timedelta) -> float:
    return amount * 0.5 ** (max((now - ended).total_seconds(), 0.0) / life.total_seconds())


def queue_state(session: Session, queue: str | None, settings: Settings, now: datetime,
                owners: Iterable[int] = ()) -> QueueState:
    """Every user's load (over all queues: a user's GPUs are theirs wherever they ran) and the cost the policy
    charges a job of `queue` it plays forward; `owners`: those with queued jobs (their shares and limits are read
    even when they have no usage)."""
    life = half_life(settings)
    since = now - life * HORIZON_HALF_LIVES
    rows = session.execute(
        select(Job.owner_id, Job.slots, Job.state, Job.queue, Job.started_at, Job.finished_at, Job.group_id)
        .where(Job.started_at.is_not(None),
               or_(Job.state.in_(HELD), and_(Job.state.in_(FINAL_STATES), Job.finished_at > since)))).all()
    state = QueueState()
    durations = []
    shares = group_shares(rows)
    for (owner_id, slots, job_state, job_queue, started, finished, _), share in zip(rows, shares):
        assert started is not None  # the query keeps started jobs only
        load = state.loads.setdefault(owner_id, Load())
        if job_state in HELD:
            load.running += slots * share
            load.usage += charge(slots, started, now) * share
        elif finished is not None:
            load.usage += decayed(charge(slots, started, finished) * share, finished, now, life)
            if job_queue == queue and finished > now - life:
                durations.append((finished - started).total_seconds())
    if durations:
        state.job_cost_s = max(MIN_CHARGE_S, statistics.median(durations))
    owners = set(state.loads) | set(owners)
    if owners:
        for user_id, weight, max_running in session.execute(
                select(User.id, User.weight, User.max_running).where(User.id.in_(owners))):
            load = state.loads.setdefault(user_id, Load())
            load.weight, load.max_running = weight, max_running
    return state


def group_shares(rows) -> list[float]:  # noqa: ANN001 (rows with .state and .group_id)
    """Each row's part of its slots: 1 for a job alone; 1/K for one of K running members of a student group (or of
    K members in all, once it has ended)."""
    running = Counter(r.group_id for r in rows if r.group_id is not None and r.state in HELD)
    every = Counter(r.group_id for r in rows if r.group_id is not None)
    return [1.0 if r.group_id is None else 1.0 / (running[r.group_id] if r.state in HELD else every[r.group_id])
            for r in rows]


def _groups(session: Session, queue: str, per_group: int | None) -> dict[tuple[str, int], deque[Queued]]:
    """The queue's queued jobs by (priority, owner), each in submit order; at most `per_group` of each."""
    query = select(Job.id, Job.owner_id, Job.priority, Job.slots).where(Job.state == QUEUED, Job.queue == queue)
    if per_group is not None:
        rank = func.row_number().over(partition_by=(Job.priority, Job.owner_id), order_by=Job.id).label("rank")
        inner = query.add_columns(rank).subquery()
        query = select(inner.c.id, inner.c.owner_id, inner.c.priority, inner.c.slots).where(
            inner.c.rank <= per_group)
    groups: dict[tuple[str, int], deque[Queued]] = {}
    for job_id, owner_id, priority, slots in sorted(session.execute(query).all()):
        groups.setdefault((priority, owner_id), deque()).append(Queued(job_id, owner_id, priority, slots))
    return groups


def play(groups: dict[tuple[str, int], deque[Queued]], state: QueueState, limit: int | None = None,
         until: Iterable[str] = ()) -> list[Placed]:
    """The policy played forward: the order in which the queued jobs would start if no job ended meanwhile
    (held-back owners' jobs follow once no one else's job is left: by then theirs would have ended). Stops after
    `limit` jobs, or once every job of `until` is placed."""
    wanted = set(until)
    loads = {owner: Load(load.running, load.usage, load.weight, load.max_running)
             for owner, load in state.loads.items()}
    for _, owner in groups:
        loads.setdefault(owner, Load())
    order: list[Placed] = []
    live = {key: jobs for key, jobs in groups.items() if jobs}
    while live and (limit is None or len(order) < limit):
        free = {key: jobs for key, jobs in live.items() if not loads[key[1]].at_limit(jobs[0].slots)}
        held_back = not free
        if held_back:  # only owners at their limit are left: their running jobs will have ended first
            for _, owner in live:
                loads[owner].running = 0
            free = live
        key = min(free, key=lambda k: (PRIORITY_RANK[k[0]], loads[k[1]].share_load, free[k][0].id))
        job = live[key].popleft()
        load = loads[job.owner_id]
        order.append(Placed(job, len(order) + 1, load.usage / 3600, load.weight, held_back))
        if wanted:
            wanted.discard(job.id)
            if not wanted:
                break
        load.running += job.slots
        load.usage += job.slots * state.job_cost_s
        if not live[key]:
            del live[key]
    return order


def dispatch_order(session: Session, queue: str, settings: Settings, now: datetime | None = None,
                   limit: int | None = None, until: Iterable[str] = ()) -> list[Placed]:
    """The queue's queued jobs in the order they will start (the first `limit` of them; or up to the last of the
    jobs `until`)."""
    now = now or utcnow()
    groups = _groups(session, queue, limit)
    return play(groups, queue_state(session, queue, settings, now, {owner for _, owner in groups}), limit, until)


def pick_next(session: Session, queue: str, settings: Settings, now: datetime | None = None,
              skip: Iterable[str] = ()) -> str | None:
    """The id of the queued job a free worker of `queue` should start now, or None (nothing queued, or every
    owner with queued jobs at their max_running)."""
    now = now or utcnow()
    skipped = set(skip)
    best: tuple | None = None
    best_id = None
    # the head of each (priority, owner) group: the oldest job that is not being taken by another worker
    heads = session.execute(
        select(Job.priority, Job.owner_id, func.min(Job.id))
        .where(Job.state == QUEUED, Job.queue == queue, Job.id.not_in(skipped) if skipped else true())
        .group_by(Job.priority, Job.owner_id)).all()
    if not heads:
        return None
    state = queue_state(session, queue, settings, now, {owner for _, owner, _ in heads})
    slots_of = dict(session.execute(select(Job.id, Job.slots).where(Job.id.in_([h[2] for h in heads]))).all())
    for priority, owner_id, job_id in heads:
        load = state.loads.get(owner_id, Load())
        if load.at_limit(slots_of.get(job_id, 1)):
            continue
        key = (PRIORITY_RANK.get(priority, 1), load.share_load, job_id)
        if best is None or key < best:
            best, best_id = key, job_id
    return best_id


def live_workers(session: Session, queue: str, now: datetime) -> int:
    """Workers of `queue` that have beaten their heart in the last WORKER_SEEN_S seconds."""
    return session.scalar(select(func.count()).select_from(Worker).where(
        Worker.queue.contains(queue), Worker.last_seen > now - timedelta(seconds=WORKER_SEEN_S))) or 0


def preemption_victim(session: Session, queue: str, settings: Settings, now: datetime | None = None
                      ) -> tuple[str, str] | None:
    """(the running job to stop, the high job it makes room for), or None: preemption is off, the next job to
    start is not `high`, a worker of the queue is free (or there is none), a preemption in the queue is already
    under way, or every running job of the queue is `high` too."""
    if not settings.preemption:
        return None
    now = now or utcnow()
    running = session.execute(
        select(Job.id, Job.priority, Job.started_at, Job.preempted_by, Job.group_id)
        .where(Job.queue == queue, Job.state.in_(HELD), Job.lease_expires_at > now)).all()
    if not running or any(r.preempted_by is not None for r in running):
        return None
    workers = live_workers(session, queue, now)
    if workers == 0 or len({r.group_id or r.id for r in running}) < workers:  # a student group holds one worker
        return None
    waiting = pick_next(session, queue, settings, now)
    if waiting is None or session.scalar(select(Job.priority).where(Job.id == waiting)) != "high":
        return None
    victims = [r for r in running if PRIORITY_RANK.get(r.priority, 1) > PRIORITY_RANK["high"]]
    if not victims:
        return None
    # the lowest class first; among equals the newest-started (it has the least work to lose), then the newest id
    victim = max(victims, key=lambda r: (PRIORITY_RANK.get(r.priority, 1), r.started_at or now, r.id))
    return victim.id, waiting


def place_in_group(session: Session, job: Job, cap: int) -> int:
    """How many jobs of the same queue, class and owner are queued ahead of `job`, counted up to `cap` (an index
    range): a job with `cap` ahead of it in its own group cannot be among the queue's first `cap`."""
    ahead = (select(Job.id).where(Job.state == QUEUED, Job.queue == job.queue, Job.priority == job.priority,
                                  Job.owner_id == job.owner_id, Job.id < job.id).limit(cap).subquery())
    return int(session.scalar(select(func.count()).select_from(ahead)) or 0)


def allowed_priorities(user: User) -> tuple[str, ...]:
    if user.is_admin:
        return tuple(PRIORITY_RANK)
    if user.priorities is None:
        return DEFAULT_PRIORITIES
    return tuple(p for p in user.priorities.split(",") if p in PRIORITY_RANK)


def week_usage_hours(session: Session, owner_id: int, now: datetime | None = None) -> float:
    """Slot-hours the user's jobs ran in the last 7 days (not decayed): what gpu_hours_per_week bounds."""
    now = now or utcnow()
    since = now - timedelta(days=7)
    total = 0.0
    rows = session.execute(
        select(Job.slots, Job.state, Job.started_at, Job.finished_at, Job.group_id)
        .where(Job.owner_id == owner_id, Job.started_at.is_not(None),
               or_(Job.state.in_(HELD), Job.finished_at > since))).all()
    for (slots, state, started, finished, _), share in zip(rows, group_shares(rows)):
        assert started is not None  # the query keeps started jobs only
        end = now if state in HELD or finished is None else finished
        total += slots * share * max((end - max(started, since)).total_seconds(), 0.0)
    return total / 3600
