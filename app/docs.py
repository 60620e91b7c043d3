"""Swagger UI at /docs and ReDoc at /redoc, served from files installed with the package.

FastAPI's own pages load their JavaScript and CSS from a CDN, so an offline or air-gapped
install shows a blank page. The assets come from ``fastapi-offline`` (a dependency in
pyproject.toml: swagger-ui-dist 5 and redoc 2 bundles, rebuilt with each release); only its
static folder is used, the pages are our own routes.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
# The pages may load and call only this server: ReDoc's sidebar otherwise fetches its logo from
# cdn.redoc.ly, and nothing else should leave an offline install either. Inline script and
# styles: the pages' start-up script and both UIs' style attributes; blob: workers for ReDoc's
# search and blob:/data: images for Swagger UI's icons and image responses.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; worker-src 'self' blob:; connect-src 'self'; "
       "font-src 'self' data:; base-uri 'self'; frame-ancestors 'self'")


def assets_dir() -> Path:
    """The folder holding the Swagger UI and ReDoc bundles.

    Raises:
        RuntimeError: the package is installed without them (a broken install).
    """
    folder = Path(str(files("fastapi_offline") / "static"))
    missing = [n for n in (SWAGGER_JS, SWAGGER_CSS, REDOC_JS) if not (folder / n).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline is installed without {missing} in {folder}")
    return folder


def install(app: FastAPI) -> None:
    """Add /docs, /redoc and their assets; create the app with ``docs_url=redoc_url=None``."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"

    def spec(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{app.openapi_url}"

    def local_only(page: HTMLResponse) -> HTMLResponse:
        page.headers["Content-Security-Policy"] = CSP
        return page

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        return local_only(get_swagger_ui_html(
            openapi_url=spec(request), title=f"{app.title} - Swagger UI",
            swagger_js_url=asset(request, SWAGGER_JS),
            swagger_css_url=asset(request, SWAGGER_CSS),
            swagger_favicon_url=asset(request, FAVICON),
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            # no validator badge: Swagger UI would fetch it from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        ))

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return local_only(get_redoc_html(
            openapi_url=spec(request), title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, REDOC_JS), redoc_favicon_url=asset(request, FAVICON),
            with_google_fonts=False,
        ))
