"""Probes and Prometheus: no token needed (they say nothing about any one user's jobs)."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from service.broker import broker_reachable
from service.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


def _database_problem(request: Request) -> str | None:
    try:
        with request.app.state.sessionmaker() as session:
            session.execute(text("SELECT 1"))
        return None
    except Exception as err:  # any driver error means not ready
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "database or broker unreachable"}})
async def readyz(request: Request) -> JSONResponse:
    """The database and the broker are reachable."""
    db = await run_in_threadpool(_database_problem, request)
    broker = await run_in_threadpool(broker_reachable, request.app.state.celery)
    checks = {"database": db or "ok", "broker": broker or "ok"}
    ready = db is None and broker is None
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"example": 'ttm_jobs{state="queued"} 3.0\n'}}}})
def metrics(request: Request) -> Response:
    """Prometheus text: jobs by state, queue depth, workers seen, request latency."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
