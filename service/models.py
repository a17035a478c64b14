"""The ORM: the database is the single source of truth for users, artifacts, jobs and their history.

Sequences: `JobEvent.id` and `Metric.id` are autoincrement keys that double as each row's sequence number; the SSE
stream and `?after=` pagination use them as cursors. `Job.id` sorts by creation time (see `ids.new_job_id`), so
"newest first" is `ORDER BY id DESC` and the (owner_id, id) index serves the job list.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite keeps no zone, so naive values read back are UTC by construction."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
SeqType = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    # every mapping here is a table (DeclarativeBase types __table__ as any FromClause, a join included)
    __table__: ClassVar[Table]


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # the lab queue (service/scheduling.py); set by `ttm admin user set`
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")  # the user's share
    max_running: Mapped[int | None] = mapped_column(Integer, nullable=True)  # slots at once; null: no limit
    max_queued: Mapped[int | None] = mapped_column(Integer, nullable=True)  # null: TTM_LIMITS_MAX_QUEUED_PER_USER
    gpu_hours_per_week: Mapped[float | None] = mapped_column(Float, nullable=True)  # null: no quota
    priorities: Mapped[str | None] = mapped_column(String(32), nullable=True)  # null: low,normal
    # the HMAC key of the user's webhooks, made on first need; kept as is, since the server signs with it
    webhook_secret: Mapped[str | None] = mapped_column(String(100), nullable=True)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the token itself is never stored
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # none: never
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def public_id(self) -> str:
        """What names a token in `ttm admin token list/revoke`: its hash's first 12 hex digits, which say nothing
        about the token itself (the hash of 256 random bits)."""
        return public_token_id(self.token_hash)


def public_token_id(token_hash: str) -> str:
    return "tok_" + token_hash[:12]


class Project(Base):
    """A group of lab members who share teachers: an artifact or a job in the project can teach any member's job."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProjectMember(Base):
    __tablename__ = "project_members"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("owner_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # art_<hex>
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(20))  # state_dict | safetensors | torchscript
    path: Mapped[str] = mapped_column(Text)  # artifact_dir/blobs/<sha[:2]>/<sha>, shared by all owners
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # key → shape of each tensor, as the inspection recorded them (service/inspection.py); None for TorchScript
    tensors: Mapped[dict[str, list[int]] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # shared with a project's members as a teacher (null: its owner's alone)
    project_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # projects.id (never deleted)


class Dataset(Base):
    """An ImageFolder tree sent over HTTP and unpacked under the artifact directory (service/datasets.py)."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("owner_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # ds_<hex>
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the uploader's file name
    sha256: Mapped[str] = mapped_column(String(64))  # of the archive: the same archive again is the same data set
    size: Mapped[int] = mapped_column(BigInteger)  # the archive's bytes
    files: Mapped[int] = mapped_column(Integer)
    unpacked_bytes: Mapped[int] = mapped_column(BigInteger)
    classes: Mapped[list[str]] = mapped_column(JSONType)
    counts: Mapped[dict[str, dict[str, int]]] = mapped_column(JSONType)  # split -> class -> images
    path: Mapped[str] = mapped_column(Text)  # the folder holding train/ and val/
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key"),
        Index("ix_jobs_owner_created", "owner_id", "id"),  # id sorts by creation time
        Index("ix_jobs_state_queue", "state", "queue", "id"),  # queue positions, the reconciler, /metrics
        Index("ix_jobs_owner_id_state", "owner_id", "state"),  # a user's queued count (a limit, per submit)
        Index("ix_jobs_dispatch", "state", "queue", "priority", "owner_id", "id"),  # the lab queue's groups
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # job_<time-sortable>
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    queue: Mapped[str] = mapped_column(String(16))  # gpu | cpu
    priority: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")  # low|normal|high
    slots: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # GPUs held (1 on the cpu queue)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    best_top1: Mapped[float | None] = mapped_column(Float, nullable=True)
    out_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    # set on a running job that a waiting high job preempts (that job's id); cleared when it stops running
    preempted_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # a waiting student's teacher job (it becomes queued when that one succeeds); null for every other job
    waits_for: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    # shared with a project's members as a teacher (resources.project; null: its owner's alone)
    project_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # projects.id (never deleted)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)  # its owner's words on it, changeable
    # where a running job is within its epoch, {"epoch", "step", "steps"}, as its trainer last said (overwritten)
    progress: Mapped[dict[str, int] | None] = mapped_column(JSONType, nullable=True)
    # a trial of a sweep (service/sweeps.py): the sweep's id and the trial's number in its Optuna study
    sweep_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    trial: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the student group it trains in (its leader's id, the same on every member: worker/lease.py take_companions);
    # null when it trains alone. The queue counts a group as one slot and splits its usage (service/scheduling.py)
    group_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # loaded when read (a page of jobs loads them in one query: service/queries/jobs.py list_jobs)
    tag_rows: Mapped[list[JobTag]] = relationship(order_by="JobTag.tag", cascade="all, delete-orphan",
                                                  passive_deletes=True)

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]


class Sweep(Base):
    """A search over a job spec's fields (POST /v1/sweeps): its trials are jobs (`jobs.sweep_id`); Optuna's study of
    the same id, in its own tables (service/sweeps.py), holds each trial's parameters, values and pruning.

    running → succeeded | failed | cancelled. `driving_until` is a lease on the sweep: whoever drives it (asks Optuna
    for trials, creates their jobs, reports their metrics) holds it, so two reconcilers never both create a trial."""

    __tablename__ = "sweeps"
    __table_args__ = (UniqueConstraint("owner_id", "idempotency_key"), Index("ix_sweeps_owner_id", "owner_id", "id"),
                      Index("ix_sweeps_state", "state"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # swp_<time-sortable>
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)  # the sweep as admitted (ttm.sweeps.SweepSpec)
    state: Mapped[str] = mapped_column(String(16), default="running")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    best_job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # the chosen trial, once it ends
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    driving_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class JobTag(Base):
    """A tag on a job (its owner's label, changeable; not part of the spec)."""

    __tablename__ = "job_tags"
    __table_args__ = (Index("ix_job_tags_tag", "tag", "job_id"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "id"),)

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)  # the event's sequence
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))  # state | log
    state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Metric(Base):
    __tablename__ = "metrics"
    # the worker upserts on (job, epoch, name): a resumed job rewrites an epoch without duplicating it
    __table_args__ = (UniqueConstraint("job_id", "epoch", "name"), Index("ix_metrics_job_seq", "job_id", "id"))

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)  # the row's sequence
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "which", "format"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    which: Mapped[str] = mapped_column(String(8))  # best | last
    format: Mapped[str] = mapped_column(String(16))  # pt | safetensors | torchscript
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    epoch: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ExportRequest(Base):
    """An export of a succeeded job's best student asked for after the job (a download of a format it did not make):
    the API inserts it, a worker of the job's queue makes it (worker/exports.py), and once made its file is a
    Checkpoint row like any other. One row per (job, which, format): two requests at once make one export.

    requested → running → made | failed; running → requested when its worker is lost (the reconciler re-sends it)."""

    __tablename__ = "export_requests"
    __table_args__ = (Index("ix_export_requests_state", "state"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    which: Mapped[str] = mapped_column(String(8), primary_key=True)  # best
    format: Mapped[str] = mapped_column(String(16), primary_key=True)  # onnx | pt2 | torchscript
    state: Mapped[str] = mapped_column(String(16), default="requested")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker took it
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sends: Mapped[int] = mapped_column(Integer, default=1)  # messages sent for it (the reconciler's back-off)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebhookDelivery(Base):
    """One call of a job's or a sweep's `notify.url` for its final state, written in the transaction that records
    that state (service/states.py, service/sweeps.py) and sent by the reconciler's delivery pass (worker/webhooks.py)
    until a 2xx or a day. Exactly one of `job_id` and `sweep_id` is set.

    pending: `next_attempt_at` is set; delivered: `delivered_at` is set; given up: neither."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "next_attempt_at"),
                      Index("ix_webhook_deliveries_job", "job_id", "created_at"),
                      Index("ix_webhook_deliveries_sweep", "sweep_id", "created_at"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # dlv_<hex>, sent as X-TTM-Delivery
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True)
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=True)
    event: Mapped[str] = mapped_column(String(32))  # job.finished | sweep.finished
    url: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the receiver's last HTTP status
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)  # why the last attempt failed
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TrackingExport(Base):
    """A job's export to the MLflow tracking server (TTM_MLFLOW_URI), owed once it ends after running: written in
    the transaction that records that end (service/states.py), made by the reconciler's export pass
    (worker/tracking.py), retried with a backoff while the server is away.

    pending: `next_attempt_at` is set; exported: `exported_at` is set; given up: neither."""

    __tablename__ = "tracking_exports"
    __table_args__ = (Index("ix_tracking_exports_due", "next_attempt_at"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # MLflow's, once an attempt made one
    experiment_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)  # why the last attempt did not export
    exported_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Worker(Base):
    """A worker process's heartbeat; /metrics counts those seen in the last minute."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queue: Mapped[str] = mapped_column(String(100))
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
