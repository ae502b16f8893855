"""The web console (issue 17): server-rendered pages under ``/console``.

Jinja2 templates rendered by the app, one stylesheet and one plain JavaScript module written
here and served from ``app/console/static``. Plain modules rather than htmx or Alpine: every
page works as ordinary forms and links, and what scripting it needs (keyboard shortcuts, bulk
selection, the live run view over the existing SSE stream, a drag-and-drop upload through the
API) is small; a library would have to come from a Python package shipping its files, and would
add a dependency for a few hundred lines. No build step, no CDN.
"""

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.console.templating import HERE, STATIC_URL, install_error_pages


def install_console(app: FastAPI) -> None:
    from app.console.admin import router as admin
    from app.console.router import router

    install_error_pages(app)
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)
    app.include_router(admin)
