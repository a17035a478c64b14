"""The dashboard: static HTML, CSS and vanilla JavaScript served by the API itself; no build step, nothing fetched
from the internet. The pages call the same /v1 API as every other client, with the token the user typed in
(kept in the browser's localStorage, sent as a Bearer header; the event stream is read with fetch(), which can
send that header where EventSource cannot). Text from the API (job names, notes, specs, log lines) is always put
in as text, never parsed as HTML; the Content-Security-Policy below allows no inline script either way.

    /ui/                 the jobs: sortable by any column, searchable; architecture, loss, γ/β, progress,
                         duration and ETA of each (jobs.js)
    /ui/jobs/{id}        one job: epoch progress and ETA, curves on an axis to the planned epochs with the teacher's
                         accuracy and entropy as reference lines, the live log, state history, checkpoints, spec,
                         why it failed, cancel (job.js)
    /ui/compare?jobs=..  several jobs: the spec parameters that differ, final metrics, curves under one legend
                         (compare.js)
    /ui/queue?queue=gpu  the lab queue in dispatch order, with each owner's usage over share (app.js)
    /ui/sweeps           your sweeps, newest first: state, trials ended / budget, the best metric (sweeps.js)
    /ui/sweeps/{id}      one sweep: its search space, the best trial and its student's download, a table of the
                         trials linking to their jobs, and a scatter of them over the searched fields coloured by
                         the sweep's metric; live while it runs, cancel (sweeps.js, scatter.js)

Mounted by service/app.py: `app.include_router(dashboard.router)`.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from service.errors import not_found

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Everything the pages need comes from this server; inline scripts and styles are not needed, so not allowed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> FileResponse:
    path = STATIC / name
    return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                        headers=SECURITY_HEADERS)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/")
@router.get("/ui/compare")
@router.get("/ui/queue")
@router.get("/ui/jobs/{job_id}")
@router.get("/ui/sweeps")
@router.get("/ui/sweeps/{sweep_id}")
def page(job_id: str | None = None, sweep_id: str | None = None) -> FileResponse:
    """Every page is the same shell; app.js draws the one the path names."""
    return _file("index.html")


@router.get("/ui/static/{name}")
def asset(name: str) -> FileResponse:
    # only the files shipped in static/, by exact name: no paths, no dotfiles
    if "/" in name or "\\" in name or name.startswith(".") or not (STATIC / name).is_file():
        raise not_found("file", name)
    return _file(name)
