"""/docs without the internet: Swagger UI's JS and CSS from the `swagger-ui-bundle-v2` package, served by the app
under /docs/assets, instead of FastAPI's default page, which loads them from a CDN. /redoc (CDN-only) is removed."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.routing import BaseRoute
from starlette.staticfiles import StaticFiles

ASSETS = "/docs/assets"


def _swagger_dir() -> str:
    from swagger_ui_bundle import swagger_ui_path

    return str(swagger_ui_path)


def install_offline_docs(app: FastAPI) -> None:
    """Replace FastAPI's /docs, its OAuth2 redirect page and /redoc with pages that load nothing from elsewhere."""
    docs_url = app.docs_url or "/docs"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    gone = {docs_url, redirect_url, app.redoc_url}
    app.router.routes[:] = [r for r in app.router.routes if not _is_route_for(r, gone)]
    app.docs_url, app.redoc_url = docs_url, None

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=root + (app.openapi_url or "/openapi.json"), title=f"{app.title} - docs",
                                   swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png",
                                   oauth2_redirect_url=root + redirect_url)

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_api_route(docs_url, swagger_ui, include_in_schema=False, methods=["GET"])
    app.add_api_route(redirect_url, oauth2_redirect, include_in_schema=False, methods=["GET"])
    app.mount(ASSETS, StaticFiles(directory=_swagger_dir()), name="docs-assets")


def _is_route_for(route: BaseRoute, paths: set[str | None]) -> bool:
    return getattr(route, "path", None) in paths
