"""
The dashboard's HTTP side, without a browser: the page and its assets with
their security headers, the REST API still routed beside them, and the
WebSocket protocol at /ws on the REST listener (plain and TLS), with the
WebSocket listener's limits and a same-origin rule.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
from typing import Any

import pytest
import pytest_twisted
import treq
from conftest import REPO, WSClient, with_timeout
from security_helpers import Refused, captured_log, log_text, ws_connect

from sysadm_dispatch.transports import dashboard

ensure = pytest_twisted.ensureDeferred

WEB = os.path.join(REPO, "sysadm_dispatch", "web")
SECURITY = {
    "content-security-policy": dashboard.CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


async def ws_path_connect(port: int, path: str = "/ws", *, headers: dict[str, str] | None = None,
                          tls: Any = None, host: str = "127.0.0.1") -> WSClient:
    """A protocol client on ``path`` of ``port``; raises ``Refused`` if the handshake is refused."""
    return await ws_connect(port, headers=headers, tls=tls, host=host, path=path)


def assert_secure(response: Any) -> None:
    for name, value in SECURITY.items():
        assert response.headers.getRawHeaders(name) == [value], name
    policy = SECURITY["content-security-policy"]
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy


async def get(server: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
    response = await with_timeout(treq.request(method, server.rest_url + path, headers=headers, pool=server.pool))
    return response, await with_timeout(treq.content(response))


@ensure
async def test_the_page_and_every_asset_come_with_the_security_headers(server: Any) -> None:
    response, body = await get(server, "/")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert_secure(response)
    assert b'<script type="module" src="ui/app.js"></script>' in body
    # No inline script or style anywhere in the page: the policy would block them.
    assert body.count(b"<script") == 1 and b"<style" not in body and b" style=" not in body
    assert b"http://" not in body and b"https://" not in body  # nothing from another origin
    names = sorted(os.listdir(WEB))
    assert {"app.js", "style.css", "index.html"} <= set(names)
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
             ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}
    for name in names:
        response, body = await get(server, f"/ui/{name}")
        assert response.code == 200, name
        assert_secure(response)
        assert response.headers.getRawHeaders("content-type") == [types[os.path.splitext(name)[1]]]
        with open(os.path.join(WEB, name), "rb") as f:
            assert body == f.read()
        if name.endswith(".js"):
            # Server data goes in as text: the scripts never write HTML.
            for sink in (b"innerHTML", b"outerHTML", b"insertAdjacentHTML", b"document.write", b"eval("):
                assert sink not in body, (name, sink)
    # Conditional requests: the browser's copy is current.
    response, _ = await get(server, "/ui/app.js")
    etag = response.headers.getRawHeaders("etag")[0]
    response, body = await get(server, "/ui/app.js", headers={"If-None-Match": etag})
    assert response.code == 304 and body == b""
    response, body = await get(server, "/ui/app.js", method="HEAD")
    assert response.code == 200 and body == b""


@ensure
async def test_refusals_on_the_page_paths_carry_the_headers_too(server: Any) -> None:
    for path, method, code in [("/ui/nope.js", "GET", 404), ("/ui/../rpc/identify", "GET", 404),
                               ("/ui/", "GET", 404), ("/ui/app.js/x", "GET", 404),
                               ("/ui/app.js", "POST", 405), ("/ws", "GET", 426), ("/ws", "PUT", 405)]:
        response, body = await get(server, path, method=method)
        assert response.code == code, (path, method, response.code, body)
        assert_secure(response)
        assert response.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    response, body = await get(server, "/ws")
    assert b"connect with a WebSocket client" in body


@ensure
async def test_the_api_is_routed_as_before_beside_the_page(server: Any) -> None:
    status, body, _ = await server.rest(path="/rpc/identify", auth=None)
    assert status == 200 and body["args"]["type"] == "server"
    status, body, _ = await server.rest({"action": "list"})
    assert status == 200 and body == {"args": {"jobs": {}}}
    status, body, _ = await server.rest({"action": "list"}, auth=None)
    assert status == 401
    status, body, _ = await server.rest(path="/nope/x/y")
    assert status == 404 and "no such resource '/nope/x/y'" in body["args"]["detail"]
    status, body, _ = await server.rest(path="/rpc/dispatcher", method="GET")
    assert status == 405
    status, body, _ = await server.rest({}, path="/")
    assert status == 404 and body["args"]["code"] == 404  # PUT / is still the API's


@ensure
async def test_no_dashboard_serves_neither_page_nor_ws(make_server: Any) -> None:
    server = await make_server("--no-dashboard")
    response, body = await get(server, "/")
    assert response.code == 404 and b"no such resource" in body
    response, body = await get(server, "/ui/app.js")
    assert response.code == 405 and b"use PUT" in body  # the API's answer
    with pytest.raises(Refused):
        await ws_path_connect(server.rest_port)
    status, _, _ = await server.rest({"action": "list"})
    assert status == 200


@ensure
async def test_ws_on_the_rest_port_is_the_websocket_protocol(server: Any) -> None:
    client = await ws_path_connect(server.rest_port)
    server.clients.append(client)
    # Before login: refused like on the WebSocket listener.
    reply = await client.call("dispatcher", {"action": "list"})
    assert reply["name"] == "error" and reply["args"]["code"] == 401
    assert (await client.login("admin", server.admin_password))["name"] == "response"
    assert (await client.call("subscribe", ["dispatcher"], namespace="events"))["name"] == "response"
    # A job started over REST is seen through /ws, with its output.
    await server.run({"over-ws": ["echo through ws"]})
    while (event := await client.next_event())["args"]["state"] != "finished":
        pass
    assert event["args"]["process_details"]["echo through ws"] == "through ws\n"
    # The same size limit: 413, and the connection stays usable.
    client.send_raw(b'{"namespace": "rpc", "name": "identify", "id": "big", "args": "' + b"x" * (1 << 20) + b'"}')
    reply = await client.next_unmatched()
    assert reply["args"]["code"] == 413
    assert (await client.call("identify", {}))["name"] == "response"


@ensure
async def test_ws_on_the_rest_port_shares_the_websocket_listeners_limits(make_server: Any) -> None:
    server = await make_server("--max-connections-per-address", "1", "--auth-timeout", "1")
    first = await ws_path_connect(server.ws_port, "/")
    server.clients.append(first)
    # One connection per address in all, whichever listener it came through.
    with pytest.raises(Refused):
        await ws_path_connect(server.rest_port)
    await first.close()
    with captured_log() as logged:
        second = await ws_path_connect(server.rest_port)
        server.clients.append(second)
        # Not logged in within the login timeout: closed by the protocol's
        # own timer (the HTTP channel's idle timer no longer owns it).
        code = await with_timeout(second.lost)
        assert code == 1008
    assert "Unhandled" not in log_text(logged) and "Traceback" not in log_text(logged)


@ensure
async def test_ws_refuses_pages_of_other_origins(server: Any) -> None:
    port = server.rest_port
    for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", f"http://localhost:{port}", "null"):
        with pytest.raises(Refused, match="403"):
            await ws_path_connect(port, headers={"Origin": origin})
    client = await ws_path_connect(port, headers={"Origin": f"http://127.0.0.1:{port}"})
    server.clients.append(client)
    assert (await client.login("admin", server.admin_password))["name"] == "response"


def test_origin_matching() -> None:
    match = dashboard._origin_matches
    assert match("http://127.0.0.1:12151", "127.0.0.1:12151")
    assert match("https://host.example", "host.example")
    assert match("https://host.example", "host.example:443")
    assert match("http://host.example:80", "host.example")
    assert match("http://[::1]:8080", "[::1]:8080")
    assert not match("http://host.example", "host.example:8080")
    assert not match("https://host.example", "host.example:80")
    assert not match("http://other.example:12151", "127.0.0.1:12151")
    assert not match("null", "127.0.0.1")
    assert not match("file://", "")
    assert not match("http://host:99999", "host:99999")


def test_every_asset_is_package_data() -> None:
    """An installed server has the page: setup.cfg ships every file of web/."""
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    patterns = [p.strip() for p in config["options.package_data"]["sysadm_dispatch"].split(",")]
    for name in os.listdir(WEB):
        assert any(fnmatch.fnmatch(f"web/{name}", p) for p in patterns), name
    assert set(dashboard.load_assets()) == set(os.listdir(WEB))


@ensure
async def test_ws_on_the_rest_port_over_tls(make_server: Any, tmp_path: Any) -> None:
    pytest.importorskip("OpenSSL", reason="TLS needs the tls extra (twisted[tls])")
    from test_tls import HTTPS, make_certificate
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    cert, key, cert_pem = make_certificate(str(tmp_path))
    server = await make_server("--tls-cert", cert, "--tls-key", key)
    https = HTTPS(cert_pem)
    response = await with_timeout(treq.get(f"https://localhost:{server.rest_port}/", agent=https.agent))
    assert response.code == 200
    assert_secure(response)
    await with_timeout(treq.content(response))
    tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert_pem))
    client = await ws_path_connect(server.rest_port, tls=tls, host="localhost",
                                   headers={"Origin": f"https://localhost:{server.rest_port}"})
    server.clients.append(client)
    assert (await client.login("admin", server.admin_password))["name"] == "response"
    assert (await client.call("dispatcher", {"action": "run", "wss-rest": "echo tls"}))["args"] == {
        "started": ["wss-rest"]}
    record = await server.wait_finished("wss-rest")
    assert record["process_details"]["echo tls"] == "tls\n"
