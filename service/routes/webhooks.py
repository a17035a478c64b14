"""GET /v1/jobs/{id}/deliveries: a job's webhook calls; /v1/users/me/webhook-secret: the key they are signed with."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.deps import CurrentUser, ReadSessionDep, SessionDep
from service.models import WebhookDelivery
from service.queries import users as uq
from service.queries import webhooks as q
from service.routes.jobs import visible_job
from service.schemas import error_responses

router = APIRouter(prefix="/v1", tags=["webhooks"], responses=error_responses(401, 422))


class DeliveryOut(BaseModel):
    id: str = Field(description="sent as X-TTM-Delivery (and in the body): the same in every attempt",
                    examples=["dlv_3f9a1c0b7e2d4a6c8b5e1f20"])
    event: str = Field(description="job.finished, or sweep.finished")
    url: str
    state: Literal["pending", "delivered", "failed"] = Field(
        description="pending: tried again at next_attempt_at; delivered: a 2xx came back; failed: gave up")
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None = Field(description="the receiver's HTTP status at the last attempt")
    last_error: str | None = Field(description="why the last attempt did not deliver")
    delivered_at: datetime | None
    created_at: datetime = Field(description="when the job (or sweep) reached its final state")


class DeliveryList(BaseModel):
    items: list[DeliveryOut]


class WebhookSecret(BaseModel):
    secret: str = Field(description="the HMAC-SHA256 key of X-TTM-Signature on your jobs' webhook calls")


def delivery_out(d: WebhookDelivery) -> DeliveryOut:
    state: Literal["pending", "delivered", "failed"] = (
        "delivered" if d.delivered_at is not None else "pending" if d.next_attempt_at is not None else "failed")
    return DeliveryOut(id=d.id, event=d.event, url=d.url, state=state, attempts=d.attempts,
                       next_attempt_at=d.next_attempt_at, last_status=d.last_status, last_error=d.last_error,
                       delivered_at=d.delivered_at, created_at=d.created_at)


@router.get("/jobs/{job_id}/deliveries", response_model=DeliveryList, responses=error_responses(401, 404))
def list_deliveries(job_id: str, who: CurrentUser, session: ReadSessionDep) -> DeliveryList:
    """The calls of the job's `notify.url` (one per final state reached), oldest first."""
    visible_job(session, who, job_id)
    return DeliveryList(items=[delivery_out(d) for d in q.list_deliveries(session, job_id)])


@router.get("/users/me/webhook-secret", response_model=WebhookSecret)
def get_webhook_secret(who: CurrentUser, session: SessionDep) -> WebhookSecret:
    """Your webhook secret (made on first request, or on your first job's call): verify X-TTM-Signature with it."""
    secret = uq.webhook_secret(session, who.id)
    session.commit()
    return WebhookSecret(secret=secret)


@router.post("/users/me/webhook-secret/rotate", response_model=WebhookSecret)
def rotate_webhook_secret(who: CurrentUser, session: SessionDep) -> WebhookSecret:
    """A new secret: every call from now on, pending retries included, is signed with it alone."""
    secret = uq.rotate_webhook_secret(session, who.id)
    session.commit()
    return WebhookSecret(secret=secret)
