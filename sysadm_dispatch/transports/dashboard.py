"""
The web dashboard on the REST listener: ``GET /`` serves the page, ``/ui/``
its assets (package data in ``web/``, read once at start), and ``/ws`` the
WebSocket protocol, through the same factory (and so the same protocol and
limits) as the WebSocket listener.  Every other path goes to the REST API.

The page is documented in docs/dashboard.rst; its security headers in
docs/security.rst.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import IResource, Resource

#: Where the assets are served, under the site's root.
ASSET_PREFIX = b"ui"
#: Where the WebSocket protocol is served, under the site's root.
WEBSOCKET_PATH = b"ws"

#: Sent with the page, every asset and every refusal of this module.  No
#: inline script or style, nothing from another origin, no framing, and
#: (Trusted Types) no way for the page to turn a string into HTML.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
SECURITY_HEADERS = {
    b"Content-Security-Policy": CONTENT_SECURITY_POLICY.encode(),
    b"X-Frame-Options": b"DENY",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cross-Origin-Resource-Policy": b"same-origin",
    # Assets change with the server: each use asks whether they did (ETag).
    b"Cache-Control": b"no-cache",
}

CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}


class Asset:
    """One file of the page, held in memory with its type and ETag."""

    def __init__(self, name: str, body: bytes) -> None:
        self.name = name
        self.body = body
        suffix = name[name.rfind("."):]
        self.content_type = CONTENT_TYPES[suffix]
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'


def load_assets() -> dict[str, Asset]:
    """Every file in the package's ``web`` directory of a type the page uses."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("sysadm_dispatch").joinpath("web").iterdir():
        name = entry.name
        if entry.is_file() and name[name.rfind("."):] in CONTENT_TYPES:
            assets[name] = Asset(name, entry.read_bytes())
    if "index.html" not in assets:
        raise RuntimeError("the dashboard's files are missing from the package (web/index.html)")
    return assets


def _secure(request: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)


#: Reasons Twisted does not know.
_REASONS = {426: b"Upgrade Required"}


def _refuse(request: Any, code: int, text: str) -> bytes:
    _secure(request)
    request.setResponseCode(code, _REASONS.get(code))
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return text.encode() + b"\n"


def _serve(request: Any, asset: Asset | None) -> bytes:
    if request.method not in (b"GET", b"HEAD"):
        request.setHeader(b"Allow", b"GET, HEAD")
        return _refuse(request, 405, f"use GET, not {request.method.decode('latin-1')[:16]}")
    if asset is None:
        return _refuse(request, 404, f"no such file {request.path.decode('utf-8', 'replace')[:200]!r}")
    _secure(request)
    request.setHeader(b"Content-Type", asset.content_type)
    if request.setETag(asset.etag):
        return b""  # 304 Not Modified: the browser's copy is current.
    return asset.body


class Page(Resource):
    """The dashboard itself, at ``/`` (an exact match: ``//x`` is not it)."""

    isLeaf = True

    def __init__(self, asset: Asset) -> None:
        super().__init__()
        self.asset = asset

    def render(self, request: Any) -> bytes:
        return _serve(request, self.asset if not request.postpath else None)


class Assets(Resource):
    """The page's files, at ``/ui/<name>``; no subdirectories, no listing."""

    isLeaf = True

    def __init__(self, assets: dict[str, Asset]) -> None:
        super().__init__()
        self.assets = assets

    def render(self, request: Any) -> bytes:
        asset = None
        if len(request.postpath) == 1:
            asset = self.assets.get(request.postpath[0].decode("utf-8", "replace"))
        return _serve(request, asset)


def _origin_matches(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` names the host (and port) it sent the request to."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default = 443 if parts.scheme == "https" else 80
    try:
        asked = urlsplit("//" + host)
        asked_port = asked.port
    except ValueError:
        return False
    return (parts.hostname == asked.hostname and (port or default) == (asked_port or default))


class SameOriginWebSocket(WebSocketResource):
    """
    The WebSocket protocol at ``/ws``.  A browser says which page opened the
    connection (``Origin``): only pages of this server's own origin may
    (clients that are not browsers send no ``Origin`` and are let in).
    """

    def render(self, request: Any) -> Any:
        if request.method != b"GET":
            request.setHeader(b"Allow", b"GET")
            return _refuse(request, 405, "the WebSocket handshake is a GET")
        if (request.getHeader(b"upgrade") or b"").lower() != b"websocket":
            request.setHeader(b"Upgrade", b"websocket")
            return _refuse(request, 426, "this is the WebSocket endpoint: connect with a WebSocket client")
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host")
        if origin is not None and not _origin_matches(origin.decode("latin-1"), (host or b"").decode("latin-1")):
            return _refuse(request, 403, "cross-origin WebSocket refused: this endpoint serves this server's "
                           "own page; other clients connect without an Origin header")
        # The connection is the WebSocket protocol's from now on: the HTTP
        # channel lets go of it (its idle timer would fire on a connection
        # it no longer has, and the protocol registers its own producer for
        # the transport's flow control).
        channel = request.channel
        channel.setTimeout(None)
        if channel.transport is not None:
            channel.transport.unregisterProducer()
        return super().render(request)


class DashboardRoot(Resource):
    """
    The REST site's root: the page, its assets and ``/ws`` as children;
    every other path is handed, whole, to the REST API.
    """

    def __init__(self, api: IResource, websocket_factory: Any, assets: dict[str, Asset] | None = None) -> None:
        super().__init__()
        self.api = api
        files = load_assets() if assets is None else assets
        # (zope interfaces are not types to mypy: these provide IResource.)
        self.putChild(b"", Page(files["index.html"]))
        self.putChild(ASSET_PREFIX, Assets(files))
        self.putChild(WEBSOCKET_PATH, SameOriginWebSocket(websocket_factory))

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        if path == b"" and request.method not in (b"GET", b"HEAD"):
            # PUT / and the like are API requests (answered 404) as before.
            return self.getChild(path, request)
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request: Any) -> IResource:
        # The API routes on the whole path: give back the segment just taken.
        request.postpath.insert(0, request.prepath.pop())
        return self.api
