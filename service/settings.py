"""The server's one settings object. Every `TTM_*` variable is read here and nowhere else in service/."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TTM_", extra="ignore")

    home: Path = Field(Path("~/.ttm"), description="where the embedded defaults keep their files")
    database_url: str = Field(
        default_factory=lambda d: f"sqlite:///{d['home']}/ttm.db",
        description="SQLAlchemy URL; postgresql:// means psycopg 3")
    broker_url: str | None = Field(None, description="Celery broker; none: kombu's filesystem transport")
    broker_visibility_timeout: int = Field(
        24 * 3600, gt=0, description="seconds before an unacknowledged message is redelivered (jobs run hours)")
    artifact_dir: Path = Field(default_factory=lambda d: d["home"] / "artifacts")
    data_root: Path = Field(default_factory=lambda d: d["home"] / "data",
                            description="datasets given by root/path must lie inside it")
    max_upload_bytes: int = Field(2 * 1024**3, gt=0)
    # POST /v1/datasets: the archive as sent, and what it may unpack to (service/datasets.py)
    dataset_max_upload_bytes: int = Field(4 * 1024**3, gt=0)
    dataset_max_files: int = Field(200_000, gt=0)
    dataset_max_unpacked_bytes: int = Field(16 * 1024**3, gt=0)
    dataset_unpack_timeout_seconds: float = Field(900, gt=0, description="unpacking and decoding every image")
    auth: Literal["token", "off"] = "token"
    max_attempts: int = Field(3, gt=0)
    lease_seconds: int = Field(60, gt=0)
    sse_ping_seconds: float = Field(15, gt=0)
    export_timeout_seconds: float = Field(
        900, gt=0, description="an export made on request (a download of a format the job did not make): its "
                               "process is stopped, and the export failed, after this long")

    # Files that carry code (TorchScript archives) are programs: refused unless an admin of a trusted lab allows
    # them, and then loaded only by a job's trainer child, never by the API (DESIGN decision 8).
    allow_code_teachers: bool = False
    # The inspection subprocess of uploads and architectures (service/inspection.py). torch alone maps ~3 GB of
    # address space, so the memory limit is on address space with room above that.
    inspect_timeout_seconds: float = Field(60, gt=0)
    inspect_memory_bytes: int = Field(6 * 1024**3, gt=0)
    inspect_concurrency: int = Field(2, gt=0)
    max_inflated_bytes: int = Field(4 * 1024**3, gt=0, description="what an uploaded archive may inflate to")

    # What one job may ask for (TTM_LIMITS_*): a refusal is a 422 naming the field and the limit.
    limits_max_epochs: int = Field(1000, gt=0)
    limits_max_batch_size: int = Field(4096, gt=0)
    limits_max_image_size: int = Field(1024, gt=0)
    limits_max_num_workers: int = Field(16, ge=0)
    limits_max_gpus_per_job: int = Field(8, ge=0)
    limits_max_cpu_ranks: int = Field(2, gt=0, description="resources.gpus on the cpu queue: that many gloo ranks "
                                                          "share one CPU worker (to try DDP without a GPU)")
    limits_max_num_classes: int = Field(100_000, gt=1)
    limits_max_params: int = Field(200_000_000, gt=0, description="parameters of the student or the teacher")
    fair_share_half_life_hours: float = Field(168.0, gt=0, description="how fast a user's past usage stops "
                                                                         "counting in the lab queue's order")
    limits_max_queued_per_user: int = Field(500, gt=0, description="a user's queued jobs; past it, 429")
    limits_max_feature_bytes: int = Field(16 * 1024**3, gt=0, description="what a CRD feature term may hold: its "
                                          "memory banks (2·N·dim floats) and one step's gather (2·B·(K+1)·dim)")
    preemption: bool = Field(True, description="a high job that finds every worker of its queue busy with low or "
                                               "normal work stops one of them (off: it waits)")
    preempt_grace_seconds: float = Field(
        300.0, ge=0, description="how long a preempted job may run on to end its epoch; then it stops and resumes "
                                 "from its last epoch checkpoint")

    # Webhooks (spec `notify.url`, service/webhooks.py): the server refuses to call loopback, private, link-local
    # (the cloud metadata address among them), unique-local and unspecified addresses, so a job cannot make it
    # reach what only it can reach; this comma list of hosts and CIDRs is allowed all the same (e.g. 127.0.0.1).
    webhook_allow: str = Field("", description="hosts and CIDRs a webhook may reach although not public")
    webhook_timeout_seconds: float = Field(5.0, gt=0, le=60, description="connect and read, per delivery attempt")

    # Experiment tracking (worker/tracking.py): the reconciler exports every job that ends after running to this
    # MLflow tracking server (its spec as params, its metric rows per epoch, the best student as artifacts).
    mlflow_uri: str = Field("", description="an MLflow tracking URI, e.g. http://mlflow.lab:5000; empty: none")
    mlflow_experiment: str = Field("ttm", min_length=1, max_length=200, description="the jobs' MLflow experiment")
    mlflow_timeout_seconds: int = Field(10, gt=0, le=300, description="connect and read, per MLflow request")

    @field_validator("webhook_allow", mode="after")
    @classmethod
    def _allow_list(cls, v: str) -> str:
        from service.webhooks import parse_allow_list  # (raises ValueError naming a bad entry: refused at start)

        parse_allow_list(v)
        return v

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, v: Path) -> Path:
        return v.expanduser()

    @field_validator("artifact_dir", "data_root", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @field_validator("broker_url", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def mlflow_shown_uri(self) -> str:
        """TTM_MLFLOW_URI without a user:password@ it may carry: what logs and the API show."""
        return re.sub(r"//[^/@]*@", "//", self.mlflow_uri, count=1).rstrip("/")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
