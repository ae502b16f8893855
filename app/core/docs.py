"""Swagger UI at ``/docs`` and ReDoc at ``/redoc``, with every asset served by the app itself.

FastAPI's default pages load their JavaScript, CSS and favicon from a public CDN, so they are
blank on a machine without internet. Here they come from the installed
``fastapi-standalone-docs`` package: the dist files of Swagger UI 5 and ReDoc 2 (its ReDoc
bundle is patched to load the Redocly logo from ``<page>/logo-mini.svg`` instead of a CDN) and
FastAPI's favicon. Only its files are used, not its ``StandaloneDocs`` helper (which patches
FastAPI's functions globally). Nothing is copied into this repository.
"""

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PACKAGE = "fastapi_standalone_docs"
ASSETS_URL = "/docs-assets"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"
# The package's ReDoc bundle asks for its logo at window.location.pathname + "/logo-mini.svg".
REDOC_LOGO_URL = f"{REDOC_URL}/logo-mini.svg"

# URL path under ASSETS_URL -> the package's folder under static/, and the files used from it.
ASSET_DIRS = {
    "swagger": ("swagger", ("swagger-ui-bundle.js", "swagger-ui.css")),
    "redoc": ("redoc", ("redoc.standalone.js", "logo-mini.svg")),
    "favicon": ("fastapi", ("favicon.png",)),
}


def assets_dir(name: str) -> Path:
    """The installed package's folder for ``name`` (a key of ``ASSET_DIRS``), checked."""
    folder, needed = ASSET_DIRS[name]
    directory = Path(str(files(ASSETS_PACKAGE) / "static" / folder))
    missing = [file for file in needed if not (directory / file).is_file()]
    if missing:
        raise RuntimeError(
            f"{ASSETS_PACKAGE} has no {', '.join(missing)} in {directory}: "
            "the API docs pages cannot be served"
        )
    return directory


def install_docs(app: FastAPI) -> None:
    """Mount the assets and add the docs pages (none of them in the OpenAPI schema).

    The app must be built with ``docs_url=None, redoc_url=None`` so that FastAPI's own CDN
    pages are not registered.
    """
    for name in ASSET_DIRS:
        app.mount(
            f"{ASSETS_URL}/{name}",
            StaticFiles(directory=assets_dir(name)),
            name=f"docs-assets-{name}",
        )
    openapi_url = app.openapi_url or "/openapi.json"
    logo_file = assets_dir("redoc") / "logo-mini.svg"

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", ""))

    # Plain routes, as FastAPI adds its own docs pages: public, and not API operations.
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        return get_swagger_ui_html(
            openapi_url=f"{base}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{base}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{base}{ASSETS_URL}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{ASSETS_URL}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{base}{ASSETS_URL}/favicon/favicon.png",
            # No badge that sends the spec's URL to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        )

    async def swagger_ui_oauth2_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return get_redoc_html(
            openapi_url=f"{base}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{base}{ASSETS_URL}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{base}{ASSETS_URL}/favicon/favicon.png",
            with_google_fonts=False,
        )

    async def redoc_logo(request: Request) -> FileResponse:
        return FileResponse(logo_file, media_type="image/svg+xml")

    async def home(request: Request) -> RedirectResponse:
        """The service's root opens the web console (which links to the API docs)."""
        return RedirectResponse(f"{root(request)}/console")

    for path, page in (
        ("/", home),
        (DOCS_URL, swagger_ui),
        (OAUTH2_REDIRECT_URL, swagger_ui_oauth2_redirect),
        (REDOC_URL, redoc),
        (REDOC_LOGO_URL, redoc_logo),
    ):
        app.add_route(path, page, include_in_schema=False)
