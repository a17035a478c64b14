"""Sweeps: Optuna searches a job spec's fields, and every trial is an ordinary job of the sweep's owner, queued under
the lab's fair share and limits like any other (service/scheduling.py).

Optuna is used through its ask-and-tell interface with its study in the service's own database (RDBStorage): the
sweep asks it for a trial's parameters, submits the trial's job, reports the job's per-epoch validation metric back
to it (its pruner may then stop the job), and tells it the job's result. Optuna's tables would collide with ours
(`studies`, `trials`, its own `alembic_version`), so on PostgreSQL they live in the schema `optuna` of the same
database, and on SQLite in `optuna.db` beside the service's file.

A pass of `drive` does all of that for one sweep, and is safe to do twice and from several processes: it runs under
the sweep's lease (`sweeps.driving_until`, taken by a conditional UPDATE, as a worker takes a job), Optuna's trial
states say what was already told, and a trial that Optuna gave out but whose job was never stored (a crash between
the two) gets its job on the next pass. The API drives a new sweep once (its first trials are queued by the time the
POST answers); the reconciler drives every running sweep on each tick (worker/reconcile.py).
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.errors import ApiError
from service.ids import new_sweep_id
from service.models import Job, Metric, Sweep, User, utcnow
from service.principal import Principal
from service.queries import jobs as q
from service.queries.webhooks import add_sweep_delivery
from service.settings import Settings
from service.states import (
    CANCELLED,
    CANCELLING,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    WAITING,
    IllegalTransition,
    transition,
)
from service.webhooks import SWEEP_EVENT, notify_url, submit_refusal
from ttm.spec import SpecError
from ttm.sweeps import (
    IntRange,
    LogUniform,
    SweepSpec,
    Uniform,
    check_sweep,
    corner_points,
    grid_points,
    trial_spec,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("ttm.sweeps")

SWEEP_RUNNING, SWEEP_SUCCEEDED, SWEEP_FAILED, SWEEP_CANCELLED = "running", "succeeded", "failed", "cancelled"
LEASE_S = 60.0  # a pass takes well under a second per trial it submits; a crashed driver's lease lapses after this
CANCEL_WAIT_S = 10.0  # how long a cancel waits for a pass under way to end
SUBMITTED, REFUSED, WAITS = "submitted", "refused", "waits"  # what became of a trial's job at a pass


# ------------------------------------------------------------------------------------------------ Optuna
@functools.lru_cache(maxsize=4)
def optuna_storage(database_url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage beside the service's tables (see the module's docstring), one per process and database."""
    import optuna
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial in the service's log otherwise
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if not path or path == ":memory:":
            raise RuntimeError("sweeps need a database file (TTM_DATABASE_URL), not an in-memory SQLite")
        name = path.rsplit("/", 1)
        own = f"{name[0]}/optuna.db" if len(name) == 2 else "optuna.db"
        return optuna.storages.RDBStorage(f"sqlite:///{own}", engine_kwargs={"connect_args": {"timeout": 30}})
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA IF NOT EXISTS optuna"))
    engine.dispose()
    return optuna.storages.RDBStorage(url.render_as_string(hide_password=False),
                                      engine_kwargs={"connect_args": {"options": "-c search_path=optuna"},
                                                     "pool_pre_ping": True})


def distributions(spec: SweepSpec) -> dict[str, optuna.distributions.BaseDistribution]:
    import optuna

    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, dim in spec.space.items():
        if isinstance(dim, Uniform):
            out[key] = optuna.distributions.FloatDistribution(*dim.uniform)
        elif isinstance(dim, LogUniform):
            out[key] = optuna.distributions.FloatDistribution(*dim.log_uniform, log=True)
        elif isinstance(dim, IntRange):
            out[key] = optuna.distributions.IntDistribution(*dim.int)
        else:
            out[key] = optuna.distributions.CategoricalDistribution(dim)
    return out


def _sampler(spec: SweepSpec, asked: int) -> optuna.samplers.BaseSampler:
    import optuna

    # A sampler lives as long as one pass, so its seed moves on with the trials already asked: a fixed seed would
    # draw the same first point on every pass. (A grid's points are all enqueued up front, in order.)
    seed = spec.seed + asked
    if spec.strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True,  # trials run in parallel
                                          n_startup_trials=max(2, min(10, spec.budget // 3)))
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    import optuna

    pruning = spec.pruning
    if pruning is None:
        return optuna.pruners.NopPruner()
    if pruning.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruning.startup_trials,
                                           n_warmup_steps=pruning.warmup_epochs)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, pruning.warmup_epochs))


def load_study(sweep: Sweep, settings: Settings, asked: int = 0) -> optuna.Study:
    import optuna

    spec = SweepSpec.model_validate(sweep.spec)
    storage = optuna_storage(settings.database_url)
    study = optuna.create_study(study_name=sweep.id, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=_sampler(spec, asked), pruner=_pruner(spec))
    if not study.user_attrs.get("ready"):  # first pass (or a crash during it): the grid, in order
        if spec.strategy == "grid":
            for point in grid_points(spec)[:spec.budget]:
                study.enqueue_trial(point, skip_if_exists=True)
        study.set_user_attr("ready", True)
    return study


def read_trials(sweep: Sweep, settings: Settings) -> list[optuna.trial.FrozenTrial]:
    """The study's trials as they stand, for reading (a study not made yet has none: nothing is created here)."""
    import optuna

    try:
        study = optuna.load_study(study_name=sweep.id, storage=optuna_storage(settings.database_url))
    except KeyError:  # Optuna's word for "no such study"
        return []
    return study.get_trials(deepcopy=False)


def _asked(trials: list[optuna.trial.FrozenTrial]) -> int:
    import optuna

    return sum(1 for t in trials if t.state != optuna.trial.TrialState.WAITING)


# ------------------------------------------------------------------------------------------------ submit, cancel
def create_sweep(session: Session, who: Principal, data: Any, settings: Settings, key: str | None,
                 body_hash: str | None) -> Sweep:
    """A new running sweep, leased to the caller (who commits, then calls `drive(..., leased=True)`); its job is
    admitted here as a trial would be (architectures, teacher, limits), each refusal naming its field."""
    from service.admission import admit

    sweep_spec, _ = check_sweep(data)  # SpecError: 422 naming the field
    if sweep_spec.notify is not None and (why := submit_refusal(sweep_spec.notify.url, settings.webhook_allow)):
        raise ApiError(422, f"notify.url: {why}", code="url_refused", field="notify.url",
                       errors=[{"field": "notify.url", "message": why}])
    # the job, then each listed value and range end, admitted as a trial's job would be (the server's limits, the
    # data root, the teacher): a value no trial could run is refused now, naming it
    for field, value in [(None, None), *corner_points(sweep_spec)]:
        params = {} if field is None else {field: value}
        where = "job" if field is None else f"space.{field}"
        try:
            admit(session, who, trial_spec(sweep_spec, params, 0), settings)
        except SpecError as err:
            if field is None:
                raise SpecError([(f"job.{f}" if f else "job", m) for f, m in err.problems]) from None
            raise SpecError([(where, f"with {field} = {value!r}: {err}")]) from None
        except ApiError as err:
            if err.status in (429, 503):  # the caller's queue is full, or the server busy: as for a job
                raise
            if field is None:  # the job itself: its field under job.
                named = f"job.{err.field}" if err.field else "job"
                message = f"job.{err.message}" if err.field else err.message
            else:
                named, message = where, f"{where}: with {field} = {value!r}: {err.message}"
            raise ApiError(err.status, message, code=err.code, field=named, headers=err.headers) from None
    sweep = Sweep(id=new_sweep_id(), owner_id=who.id, name=sweep_spec.name,
                  spec=sweep_spec.model_dump(mode="json"), state=SWEEP_RUNNING, idempotency_key=key,
                  request_hash=body_hash, created_at=utcnow(), driving_until=utcnow() + timedelta(seconds=LEASE_S))
    session.add(sweep)
    return sweep


def cancel_sweep(session: Session, sweep: Sweep, by: str, settings: Settings) -> None:
    """Cancel the sweep and its trials that have not ended (a running one stops at its worker, as any cancel), and
    tell Optuna the unfinished trials failed; commits. It takes the sweep's lease first, so no pass is asking for a
    trial meanwhile (a pass lasts a second or so: this waits a few)."""
    import optuna

    deadline = time.monotonic() + CANCEL_WAIT_S
    while not take_lease(session, sweep.id):
        session.refresh(sweep)
        if sweep.state != SWEEP_RUNNING:
            raise ApiError(409, f"sweep {sweep.id} is already {sweep.state}", code="sweep_finished")
        if time.monotonic() >= deadline:
            raise ApiError(503, f"sweep {sweep.id} is being driven (its next trials asked for); cancel it again in "
                                "a few seconds", code="busy", headers={"Retry-After": "2"})
        time.sleep(0.2)
    session.refresh(sweep)
    sweep.state, sweep.reason, sweep.finished_at = SWEEP_CANCELLED, f"cancelled by {by}", utcnow()
    sweep.driving_until = None
    owe_call(session, sweep)
    for job in trial_jobs(session, sweep.id):
        target = {WAITING: CANCELLED, QUEUED: CANCELLED, RUNNING: CANCELLING}.get(job.state)
        if target is not None:
            try:
                transition(session, job, target, reason=f"its sweep {sweep.id} was cancelled by {by}")
            except IllegalTransition:  # it moved meanwhile (a worker finished it): leave it as it ended
                pass
    session.commit()
    try:
        study = optuna.load_study(study_name=sweep.id, storage=optuna_storage(settings.database_url))
    except KeyError:  # never driven: no trial to tell
        return
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def owe_call(session: Session, sweep: Sweep) -> None:
    """The sweep's `notify.url` call for the end just recorded, in the same transaction (as a job's, service/states.py):
    the call is never lost, and the end never waits on the network."""
    url = notify_url(sweep)
    if url is not None:
        add_sweep_delivery(session, sweep, url, SWEEP_EVENT, sweep.finished_at or utcnow())


def trial_jobs(session: Session, sweep_id: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.trial)))


# ------------------------------------------------------------------------------------------------ one pass
def take_lease(session: Session, sweep_id: str) -> bool:
    now = utcnow()
    result = session.execute(
        update(Sweep).where(Sweep.id == sweep_id, Sweep.state == SWEEP_RUNNING,
                            or_(Sweep.driving_until.is_(None), Sweep.driving_until < now))
        .values(driving_until=now + timedelta(seconds=LEASE_S)), execution_options={"synchronize_session": False})
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]  # an UPDATE's Result is a CursorResult


def drive(session: Session, sweep_id: str, settings: Settings, leased: bool = False) -> list[tuple[str, str]]:
    """One pass over a sweep (see the module's docstring); returns the (job id, queue) of the trials it queued, for
    the caller to send once this has returned. `leased`: the caller holds the sweep's lease already."""
    if not leased and not take_lease(session, sweep_id):
        return []
    try:
        return _Pass(session, sweep_id, settings).run()
    finally:
        session.rollback()
        session.execute(update(Sweep).where(Sweep.id == sweep_id).values(driving_until=None),
                        execution_options={"synchronize_session": False})
        session.commit()


def drive_all(settings: Settings, send: Callable[[str, str], None]) -> None:
    """A pass over every running sweep (the reconciler's tick), each in transactions of its own."""
    from service.db import session_scope

    with session_scope(settings) as session:
        ids = list(session.scalars(select(Sweep.id).where(Sweep.state == SWEEP_RUNNING).order_by(Sweep.id)))
    for sweep_id in ids:
        try:
            with session_scope(settings) as session:
                queued = drive(session, sweep_id, settings)
        except Exception:  # this sweep's pass failed (the database away, say): the others go on; it retries
            log.exception("sweep %s: the pass failed", sweep_id)
            continue
        for job_id, queue in queued:
            send(job_id, queue)


class _Pass:
    def __init__(self, session: Session, sweep_id: str, settings: Settings):
        self.session, self.settings = session, settings
        sweep = session.get(Sweep, sweep_id, populate_existing=True)
        assert sweep is not None
        self.sweep, self.spec = sweep, SweepSpec.model_validate(sweep.spec)
        owner = session.get(User, sweep.owner_id)
        assert owner is not None
        self.owner = Principal(owner.id, owner.name, owner.is_admin)
        self.queued: list[tuple[str, str]] = []

    def run(self) -> list[tuple[str, str]]:
        import optuna

        if self.sweep.state != SWEEP_RUNNING:
            return []
        study = load_study(self.sweep, self.settings)
        jobs = {job.trial: job for job in trial_jobs(self.session, self.sweep.id)}
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            job = jobs.get(trial.number)
            if job is None:  # asked, but its job was not stored (refused for now, or a crash): submit it now
                self._submit(study, trial.number, trial.params)
            else:
                self._follow(study, trial, job)
        trials = study.get_trials(deepcopy=False)
        asked = _asked(trials)
        owed = sum(1 for t in trials if t.state == optuna.trial.TrialState.RUNNING)
        if asked < self.spec.budget and owed < self.spec.max_running:
            study = load_study(self.sweep, self.settings, asked)  # a sampler seeded past the trials asked so far
            while asked < self.spec.budget and owed < self.spec.max_running:
                new = study.ask(fixed_distributions=distributions(self.spec))
                asked += 1
                outcome = self._submit(study, new.number, new.params)
                if outcome == WAITS:
                    break  # the queue is full for now: ask no more this pass
                owed += outcome == SUBMITTED  # a refused trial is told failed; the budget counts it
        trials = study.get_trials(deepcopy=False)
        if asked >= self.spec.budget and not any(t.state == optuna.trial.TrialState.RUNNING for t in trials) and all(
                job.state in FINAL_STATES for job in trial_jobs(self.session, self.sweep.id)):
            self._finish(study, trials)  # (a pruned trial's job has stopped too: nothing of it runs on)
        return self.queued

    # ---- a trial's job
    def _submit(self, study: optuna.Study, number: int, params: dict[str, Any]) -> str:
        """Store and queue the trial's job: SUBMITTED; REFUSED when admission refuses it for good (the trial is told
        it failed); WAITS when it refuses it for now (a full queue, an inspection busy): the trial stays owed and the
        next pass tries again."""
        import optuna

        from service.admission import admit

        data = trial_spec(self.spec, params, number)
        try:
            admitted = admit(self.session, self.owner, data, self.settings)
        except (ApiError, SpecError) as err:
            self.session.rollback()
            message = err.message if isinstance(err, ApiError) else str(err)
            trial = _live(study, number)
            if isinstance(err, ApiError) and err.status in (429, 503):
                log.info("sweep %s: trial %d waits (%s)", self.sweep.id, number, message)
                trial.set_user_attr("waits", message)
                return WAITS
            trial.set_user_attr("refused", message)
            study.tell(number, state=optuna.trial.TrialState.FAIL)
            return REFUSED
        job = q.insert_job(self.session, self.owner.id, name=admitted.spec.name, spec=admitted.spec_json,
                           queue=admitted.queue, priority=admitted.spec.resources.priority, slots=admitted.slots,
                           idempotency_key=f"{self.sweep.id}#t{number}", request_hash=None,
                           waits_for=admitted.waits_for, project_id=admitted.project_id)
        job.sweep_id, job.trial = self.sweep.id, number
        self.session.commit()
        if job.state == QUEUED:
            self.queued.append((job.id, job.queue))
        return SUBMITTED

    def _follow(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, job: Job) -> None:
        """Report the job's new epochs to Optuna; tell it the result once the job has ended; stop it if pruned."""
        import optuna

        values = self._metric(job.id)
        pruner = _live(study, trial.number)
        for epoch in sorted(set(values) - set(trial.intermediate_values)):
            pruner.report(values[epoch], epoch)
        if job.state in FINAL_STATES:
            if job.state == SUCCEEDED and values:
                study.tell(trial.number, max(values.values()))
            else:
                pruner.set_user_attr("job_state", job.state)
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            return
        if job.state == RUNNING and values and pruner.should_prune():
            epoch = max(values)
            reason = (f"pruned by its sweep {self.sweep.id} ({self.spec.pruning.kind if self.spec.pruning else ''}) "
                      f"at epoch {epoch}: {self.spec.metric} {values[epoch]:.2f}")
            try:
                transition(self.session, job, CANCELLING, reason=reason)
                self.session.commit()
            except IllegalTransition:  # it ended meanwhile: the next pass tells its result
                self.session.rollback()
                return
            study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
            log.info("sweep %s: trial %d (%s) %s", self.sweep.id, trial.number, job.id, reason)

    def _metric(self, job_id: str) -> dict[int, float]:
        """The selected metric of each epoch the job has recorded so far (epoch 0 is the teacher's, not a trial's)."""
        rows = self.session.execute(select(Metric.epoch, Metric.value).where(
            Metric.job_id == job_id, Metric.name == self.spec.metric, Metric.epoch > 0))
        return {int(epoch): float(value) for epoch, value in rows}

    def _finish(self, study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> None:
        import optuna

        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        sweep = self.sweep
        if complete:
            best = study.best_trial
            job = self.session.scalar(select(Job).where(Job.sweep_id == sweep.id, Job.trial == best.number))
            sweep.state, sweep.best_job_id = SWEEP_SUCCEEDED, job.id if job else None
            params = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                               for k, v in best.params.items())
            sweep.reason = f"best trial t{best.number} ({params}): {self.spec.metric} {best.value:.2f}"
        else:
            refused = next((t.user_attrs["refused"] for t in trials if "refused" in t.user_attrs), None)
            sweep.state = SWEEP_FAILED
            sweep.reason = f"none of its {len(trials)} trials completed" + (
                f" (trial refused: {refused})" if refused else "")
        sweep.finished_at = utcnow()
        owe_call(self.session, sweep)
        self.session.commit()
        log.info("sweep %s: %s (%s)", sweep.id, sweep.state, sweep.reason)


def _live(study: optuna.Study, number: int) -> optuna.trial.Trial:
    """The trial `number` of the study as a live Trial, to report to and ask whether to prune, in a process other than
    the one that asked for it (ask-and-tell across processes; Optuna's documented constructor, its storage's id)."""
    import optuna

    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)
