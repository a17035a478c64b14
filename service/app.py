"""The FastAPI application: `create_app(settings, host=...)`, and `run_server` for `ttm serve`."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service import dashboard
from service.broker import make_celery
from service.db import get_engine, make_sessionmaker
from service.docs import install_offline_docs
from service.errors import install_error_handlers
from service.limits import BodyLimitMiddleware
from service.local_guard import LocalOnlyMiddleware, is_loopback
from service.migrate import check_at_head
from service.observability import LatencyMiddleware, make_registry
from service.principal import Principal
from service.queries.users import local_admin
from service.routes import artifacts, datasets, events, health, jobs, pipelines, queue, sweeps, tracking, webhooks
from service.settings import Settings, get_settings
from ttm.spec import JobSpec

log = logging.getLogger("ttm.service")
AUTH_OFF_WARNING = "auth is OFF (loopback only): every request acts as the admin user 'local'"

DESCRIPTION = """Distillation as a service: upload teacher weights, submit TTM/WTTM (and CE, KD, DKD, DIST) jobs,
watch them over Server-Sent Events, download the student.

Every /v1 route takes `Authorization: Bearer <token>` (`ttm admin user create NAME` prints one). Errors are
`{"error": {"code", "message", "field"?, "errors"?}}`."""


class AuthOffRefused(RuntimeError):
    pass


def create_app(settings: Settings | None = None, *, host: str | None = None) -> FastAPI:
    """The app for these settings. Refuses (raises) when the database is not at the schema head, or when auth is
    off and `host` (where the server will listen) is not a loopback address."""
    settings = settings or get_settings()
    if settings.auth == "off" and not is_loopback(host):
        raise AuthOffRefused(f"TTM_AUTH=off is allowed only on a loopback address; the server would listen on "
                             f"{host or 'an unknown address'}. Use tokens (`ttm admin user create NAME`) or "
                             "listen on 127.0.0.1.")
    check_at_head(settings)
    engine = get_engine(settings)
    make_session = make_sessionmaker(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.auth == "off":
            log.warning(AUTH_OFF_WARNING)
        yield

    app = FastAPI(title="ttm job server", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.sessionmaker = make_session
    app.state.read_sessionmaker = make_sessionmaker(get_engine(settings, autocommit=True))
    app.state.celery = make_celery(settings)
    app.state.local_user = None
    if settings.auth == "off":
        with make_session() as session:
            user = local_admin(session)
            session.commit()
            app.state.local_user = Principal(user.id, user.name, True)
    app.state.registry, histogram = make_registry(app.state.read_sessionmaker)

    install_error_handlers(app)
    for module in (artifacts, datasets, jobs, pipelines, sweeps, events, queue, tracking, webhooks, health):
        app.include_router(module.router)
    app.include_router(dashboard.router)  # the web UI: /ui/ (service/dashboard)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(LatencyMiddleware, histogram=histogram)
    if settings.auth == "off":  # the machine's own user only: loopback Host, no foreign writes (service/local_guard)
        app.add_middleware(LocalOnlyMiddleware)
    install_offline_docs(app)  # /docs from bundled assets, nothing from a CDN
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus the JobSpec model, which POST /v1/jobs validates with ttm.spec.parse_spec (presets
    fill what a body leaves out, so the body itself is a plain object to FastAPI)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(spec.pop("$defs", {}))
        components["JobSpec"] = spec
        for ops in schema["paths"].values():  # a $ref given in openapi_extra replaces the generic body schema
            for op in ops.values():
                for content in op.get("requestBody", {}).get("content", {}).values():
                    if "$ref" in content.get("schema", {}):
                        content["schema"] = {"$ref": content["schema"]["$ref"]}
        app.openapi_schema = schema
    return app.openapi_schema


def run_server(settings: Settings | None = None, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "info") -> None:
    import uvicorn

    app = create_app(settings, host=host)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
