"""
TLS for real: a certificate made by the test, the server on ssl: endpoints
(through --tls-cert/--tls-key, and through a hand-written ssl: endpoint
string), and https (treq) and wss (autobahn) clients that verify it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from typing import Any

import pytest
import pytest_twisted
import treq
from conftest import with_timeout
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from security_helpers import Refused, ws_connect
from twisted.internet import reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
)

from sysadm_dispatch import tap

ensure = pytest_twisted.ensureDeferred


def make_certificate(directory: Any, name: str = "localhost") -> tuple[str, str, bytes]:
    """A self-signed certificate for ``localhost`` and 127.0.0.1: (cert path, key path, cert PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path = os.path.join(directory, f"{name}.crt")
    key_path = os.path.join(directory, f"{name}.key")
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path, cert_pem


class HTTPS:
    """treq over https, trusting only the given certificate."""

    def __init__(self, cert_pem: bytes | None) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert_pem) if cert_pem else None)
        self.agent = Agent(reactor, contextFactory=policy, pool=self.pool)

    async def put(self, url: str, body: Any, auth: tuple[str, str] | None = None) -> tuple[int, Any]:
        response = await with_timeout(treq.request("PUT", url, data=json.dumps(body).encode(), auth=auth,
                                                   agent=self.agent))
        return response.code, json.loads(await with_timeout(treq.content(response)))


@ensure
async def test_https_and_wss_with_the_tls_shortcut(make_server: Any, tmp_path: Any) -> None:
    cert, key, cert_pem = make_certificate(str(tmp_path))
    server = await make_server("--tls-cert", cert, "--tls-key", key)
    assert server.options["rest"].startswith("ssl:") and server.options["ws"].startswith("ssl:")
    https = HTTPS(cert_pem)
    for host in ("localhost", "127.0.0.1"):
        url = f"https://{host}:{server.rest_port}/rpc/dispatcher"
        status, body = await https.put(url, {"action": "run", "tls-job": "echo over tls"},
                                       auth=("admin", server.admin_password))
        assert status == 200 and body["args"]["started"] == ["tls-job"]
        await server.wait_finished("tls-job")
    status, body = await https.put(f"https://localhost:{server.rest_port}/rpc/dispatcher", {"action": "list"})
    assert status == 401

    tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert_pem))
    client = await ws_connect(server.ws_port, tls=tls, host="localhost")
    server.clients.append(client)
    reply = await client.login("admin", server.admin_password)
    assert reply["name"] == "response"
    assert (await client.call("subscribe", ["dispatcher"], namespace="events"))["name"] == "response"
    assert (await client.call("dispatcher", {"action": "run", "wss-job": "echo hi"}))["args"] == {
        "started": ["wss-job"]}
    while (event := await client.next_event())["args"]["state"] != "finished":
        pass
    assert event["args"]["process_details"]["echo hi"] == "hi\n"


@ensure
async def test_tls_listeners_refuse_plain_and_unverified_clients(make_server: Any, tmp_path: Any) -> None:
    cert, key, cert_pem = make_certificate(str(tmp_path))
    server = await make_server("--tls-cert", cert, "--tls-key", key)
    # Plain HTTP to the TLS port gets no HTTP answer.
    pool = HTTPConnectionPool(reactor, persistent=False)
    with pytest.raises(ResponseFailed):
        await with_timeout(treq.put(f"http://127.0.0.1:{server.rest_port}/rpc/identify", data=b"{}", pool=pool))
    # A client that does not trust this certificate refuses the connection.
    (tmp_path / "other").mkdir()
    stranger_cert = make_certificate(str(tmp_path / "other"), name="stranger")[2]
    with pytest.raises((ResponseFailed, RequestTransmissionFailed)) as info:
        await HTTPS(stranger_cert).put(f"https://localhost:{server.rest_port}/rpc/identify", {})
    assert "certificate verify failed" in str(info.value)
    # Plain ws:// to the wss port does not open.
    with pytest.raises(Refused):
        await ws_connect(server.ws_port)


@ensure
async def test_ssl_endpoint_string_as_documented(make_server: Any, tmp_path: Any) -> None:
    cert, key, cert_pem = make_certificate(str(tmp_path))
    server = await make_server("--rest", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    status, body = await HTTPS(cert_pem).put(f"https://localhost:{server.rest_port}/rpc/identify", {})
    assert status == 200 and body["args"]["type"] == "server"
    # The other listener, not given TLS, is still plain.
    client = await server.ws()
    assert (await client.call("identify"))["name"] == "response"


def test_missing_key_file_is_a_one_line_error(tmp_path: Any) -> None:
    cert, _, _ = make_certificate(str(tmp_path))
    options = tap.Options()
    options.parseOptions(["--state-dir", str(tmp_path / "state"), "--tls-cert", cert,
                          "--tls-key", str(tmp_path / "missing.key")])
    with pytest.raises(SystemExit) as info:
        tap.makeService(options, reactor)
    message = str(info.value.code)
    assert message.startswith("sysadm-dispatch: --ws ") and "missing.key" in message and "\n" not in message


def test_tls_is_a_normal_dependency() -> None:
    # twisted[tls] without an extra's marker: a plain install can serve TLS.
    from importlib.metadata import requires

    plain = [r for r in requires("sysadm-dispatch") or [] if "extra ==" not in r]
    assert any(r.replace(" ", "").startswith("twisted[tls]") for r in plain), plain


@ensure
async def test_missing_tls_module_names_the_option_and_the_fix(tmp_path: Any) -> None:
    # A broken environment (pyOpenSSL gone): the real twistd stops with one
    # line naming --tls-cert and how to install what is missing.
    from conftest import PYTHON, python_env
    from twistd_helpers import TwistdOutput, free_port

    cert, key, _ = make_certificate(str(tmp_path))
    script = ("import sys; sys.modules['OpenSSL'] = None; from twisted.scripts.twistd import run; "
              "sys.argv[0] = 'twistd'; run()")
    args = [PYTHON, "-c", script, "-n", "--pidfile=", "sysadm-dispatch", "--state-dir", str(tmp_path / "state"),
            "--tls-cert", cert, "--tls-key", key, "--ws", f"tcp:{free_port()}:interface=127.0.0.1",
            "--rest", f"tcp:{free_port()}:interface=127.0.0.1"]
    proto = TwistdOutput()
    reactor.spawnProcess(proto, PYTHON, args, env=python_env(), path=str(tmp_path))
    status = await with_timeout(proto.ended, 60)
    out = proto.output.decode()
    assert status.exitCode != 0, out
    assert "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert "--tls-cert" in last and "OpenSSL" in last and "pip install 'twisted[tls]'" in last, out
