"""Plain HTTP on the WebSocket port: a health check and the browser client page.

``PageAndHealth`` is a ``process_request`` callable: upgrade requests pass through
to the WebSocket handshake, ``GET /`` answers the page from ``fastws/static/``,
``GET /healthz`` answers 200, any other path 404. (Other methods get 405 from
the handshake itself, before ``process_request``.)
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from http import HTTPStatus

from .handshake import Headers, Request, Response, upgrades_to_websocket

__all__ = ["PageAndHealth", "page_bytes"]


def page_bytes() -> bytes:
    """The browser client page shipped in the package."""
    return importlib.resources.files("fastws").joinpath("static", "index.html").read_bytes()


class PageAndHealth:
    """``process_request`` for the CLI server: ``/`` the page, ``/healthz`` 200, other paths 404.

    ``extra_headers`` go on every plain-HTTP answer (the CLI names its worker there).
    """

    def __init__(self, extra_headers: Sequence[tuple[str, str]] = ()) -> None:
        self.extra_headers = list(extra_headers)
        self.page = page_bytes()

    def __call__(self, request: Request) -> Response | None:
        if upgrades_to_websocket(request.headers):
            return None
        path = request.path.split("?", 1)[0]
        if path == "/":
            return self._answer(HTTPStatus.OK, self.page, "text/html; charset=utf-8", [("Cache-Control", "no-cache")])
        if path == "/healthz":
            return self._answer(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8", [("Cache-Control", "no-store")])
        return self._answer(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _answer(self, status: int, body: bytes, content_type: str, extra: Sequence[tuple[str, str]] = ()) -> Response:
        headers = Headers([("Content-Type", content_type), ("X-Content-Type-Options", "nosniff"), *extra, *self.extra_headers])
        return Response(status, headers, body)
