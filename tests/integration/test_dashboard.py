"""
The dashboard in a real browser: Debian's chromium driven through selenium
and Debian's chromium-driver (nothing is downloaded), against a real server
on 127.0.0.1:0.  One browser serves the whole module; each test has its own
server (and so its own origin and session storage).

Without chromium these tests skip, saying why; with
SYSADM_DISPATCH_BROWSER_TESTS=required (as in CI) they fail instead.  With
SYSADM_DISPATCH_SCREENSHOTS=1 the screenshots they take are written to
docs/images/.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from conftest import REPO, deferLater, poll, with_timeout
from test_dashboard_http import ws_path_connect
from twisted.internet.threads import deferToThread

ensure = pytest_twisted.ensureDeferred

CHROMIUM = os.environ.get("SYSADM_DISPATCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SYSADM_DISPATCH_CHROMEDRIVER", "/usr/bin/chromedriver")
REQUIRED = os.environ.get("SYSADM_DISPATCH_BROWSER_TESTS") == "required"
SCREENSHOTS = os.environ.get("SYSADM_DISPATCH_SCREENSHOTS") == "1"
IMAGES = os.path.join(REPO, "docs", "images")
WAIT = 20.0
DESKTOP = (1280, 800)
PHONE = (390, 844)
XSS = "<img src=x onerror=window.__xss=1>"


def _missing() -> list[str]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (the test extra)")
    return missing


def _spki_hash(cert_pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: Any) -> tuple[str, str, bytes]:
    """A certificate for the TLS test, made before the browser starts so it can trust it."""
    from test_tls import make_certificate

    return make_certificate(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def browser(certificate: tuple[str, str, bytes]) -> Iterator[Any]:
    missing = _missing()
    if missing:
        reason = (f"browser tests need {', '.join(missing)}: apt-get install chromium chromium-driver, "
                  "pip install -e '.[test]'")
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="sysadm-dispatch-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1280,1000",
                 # Trusts the one test certificate (by its key), nothing else.
                 f"--ignore-certificate-errors-spki-list={_spki_hash(certificate[2])}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The server under test runs in this process and, as a subreaper, ends
    # the children of the main thread that it did not start when it stops:
    # chromedriver is the child of a thread of its own, alive until the end.
    started: dict[str, Any] = {}
    ready, finished = threading.Event(), threading.Event()

    def parent() -> None:
        try:
            # The driver's path is given: selenium-manager never looks for (or downloads) one.
            started["driver"] = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        except BaseException as e:  # reported in the test's thread
            started["error"] = e
        ready.set()
        finished.wait()

    thread = threading.Thread(target=parent, name="chromedriver-parent", daemon=True)
    thread.start()
    ready.wait(120)
    if "driver" not in started:
        shutil.rmtree(profile, ignore_errors=True)
        raise started.get("error") or AssertionError("chromedriver did not start within 120 s")
    driver = started["driver"]
    try:
        yield driver
    finally:
        driver.quit()
        finished.set()
        thread.join(10)
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The browser, used from the reactor's thread pool (selenium blocks; the server must not)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await with_timeout(deferToThread(fn, *args), WAIT + 10)

    async def js(self, script: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, script, *args)

    async def wait(self, script: str, *args: Any, seconds: float = WAIT) -> Any:
        """Poll ``script`` (a JS expression's body returning a value) until it is truthy; returns it."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.wait import WebDriverWait

        def until() -> Any:
            try:
                return WebDriverWait(self.driver, seconds, poll_frequency=0.05).until(
                    lambda d: d.execute_script(script, *args))
            except TimeoutException:
                state = self.driver.execute_script("return document.body.innerText.slice(0, 2000)")
                raise AssertionError(f"not true within {seconds}s: {script}\npage text:\n{state}") from None

        return await self.call(until)

    async def size(self, width: int, height: int) -> None:
        await self.call(self.driver.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})

    async def open(self, url: str) -> None:
        await self.call(self.driver.get, url)
        await self.wait("return document.body.dataset.screen === 'login' || document.body.dataset.screen === 'app'")

    async def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        await self.call(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def type(self, css: str, text: str, clear: bool = True) -> None:
        from selenium.webdriver.common.by import By

        def typing() -> None:
            element = self.driver.find_element(By.CSS_SELECTOR, css)
            if clear:
                element.clear()
            element.send_keys(text)

        await self.call(typing)

    async def login(self, username: str, password: str) -> None:
        await self.type('.login-form [name="username"]', username)
        await self.type('.login-form [name="password"]', password)
        await self.click('.login-form button[type="submit"]')

    async def shot(self, name: str) -> None:
        """A screenshot for the docs, written only when SYSADM_DISPATCH_SCREENSHOTS=1."""
        if SCREENSHOTS:
            os.makedirs(IMAGES, exist_ok=True)
            # Ticking durations and the caret differ from shot to shot; nothing else should.
            await self.js("document.activeElement && document.activeElement.blur()")
            await self.call(self.driver.save_screenshot, os.path.join(IMAGES, f"dashboard-{name}.png"))

    async def row(self, job_id: str, list_name: str = "jobs") -> dict[str, Any] | None:
        """The row of ``job_id`` in a list: its state and text (found by comparing data, not by a selector)."""
        result: dict[str, Any] | None = await self.js(
            "const row = [...document.querySelectorAll(`[data-list='${arguments[1]}'] tr[data-job-id]`)]"
            ".find(r => r.dataset.jobId === arguments[0]);"
            "return row ? {state: row.dataset.state, text: row.innerText,"
            " kill: row.querySelectorAll('[data-action=kill]').length} : null;", job_id, list_name)
        return result

    async def wait_row(self, job_id: str, condition: str = "true", list_name: str = "jobs") -> dict[str, Any]:
        """Wait for ``job_id``'s row to satisfy ``condition`` (JS over ``row``); returns the row's summary."""
        await self.wait(
            "const row = [...document.querySelectorAll(`[data-list='${arguments[1]}'] tr[data-job-id]`)]"
            f".find(r => r.dataset.jobId === arguments[0]); return !!row && ({condition});",
            job_id, list_name)
        row = await self.row(job_id, list_name)
        assert row is not None
        return row

    async def click_row(self, job_id: str, list_name: str = "jobs", inside: str = "") -> None:
        from selenium.webdriver.common.by import By

        def clicking() -> None:
            row = self.driver.execute_script(
                "return [...document.querySelectorAll(`[data-list='${arguments[1]}'] tr[data-job-id]`)]"
                ".find(r => r.dataset.jobId === arguments[0]);", job_id, list_name)
            (row.find_element(By.CSS_SELECTOR, inside) if inside else row.find_element(By.CSS_SELECTOR, ".c-id")).click()

        await self.call(clicking)

    async def output(self, job_id: str) -> str:
        text: str = await self.js(
            "const o = [...document.querySelectorAll('[data-output-for]')].find(e => e.dataset.outputFor === arguments[0]);"
            "return o ? o.textContent : '';", job_id)
        return text

    async def wait_output(self, job_id: str, text: str) -> None:
        """Wait for ``text`` in the output view (which also shows each command: end output with a newline)."""
        await self.wait(
            "const o = [...document.querySelectorAll('[data-output-for]')].find(e => e.dataset.outputFor === arguments[0]);"
            "return !!o && o.textContent.includes(arguments[1]);", job_id, text)

    async def problems(self) -> list[str]:
        """Errors the browser logged: script errors, CSP violations, failed loads."""
        logs = await self.call(self.driver.get_log, "browser")
        return [entry["message"] for entry in logs if entry["level"] == "SEVERE"]


@pytest.fixture
def page(browser: Any, make_server: Any) -> Iterator[Page]:
    p = Page(browser)
    browser.get("about:blank")
    browser.get_log("browser")  # what earlier tests left
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": DESKTOP[0], "height": DESKTOP[1], "deviceScaleFactor": 1, "mobile": False})
    yield p
    # Leave the page (closing its WebSocket) before the server stops.
    logs = browser.get_log("browser")
    browser.get("about:blank")
    severe = [e["message"] for e in logs if e["level"] == "SEVERE"]
    assert not severe, f"the browser logged errors: {severe}"


async def logged_in(page: Page, server: Any, user: str = "admin", password: str | None = None) -> None:
    await page.open(server.rest_url + "/")
    await page.login(user, server.admin_password if password is None else password)
    await page.wait("return document.body.dataset.screen === 'app' && !!document.body.dataset.role")


@ensure
async def test_login_with_a_bad_then_a_good_password_reload_and_log_out(page: Page, make_server: Any) -> None:
    server = await make_server()
    await page.open(server.rest_url + "/")
    assert await page.js("return document.body.dataset.screen") == "login"
    await page.shot("login")
    await page.login("admin", "not the password")
    await page.wait("return document.querySelector('[data-bind=login-error]').textContent.includes('Wrong')")
    assert await page.js("return document.body.dataset.screen") == "login"
    await page.login("admin", server.admin_password)
    await page.wait("return document.body.dataset.screen === 'app'")
    assert "admin" in await page.js("return document.querySelector('[data-bind=who]').textContent")
    # The token is in this tab's session storage: not in the URL, not in a cookie.
    token = await page.js("return JSON.parse(sessionStorage.getItem('sysadm-dispatch.session')).token")
    assert isinstance(token, str) and len(token) >= 20
    assert token not in await page.js("return location.href")
    assert await page.js("return document.cookie") == ""
    status, _, _ = await server.rest({"action": "list"}, auth=None, headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    # A reload keeps the session.
    await page.open(server.rest_url + "/")
    await page.wait("return document.body.dataset.screen === 'app'")
    # Logging out revokes the token (auth_clear) and shows the login form.
    await page.click('[data-action="logout"]')
    await page.wait("return document.body.dataset.screen === 'login'")
    assert await page.js("return sessionStorage.getItem('sysadm-dispatch.session')") is None
    for _ in range(200):  # the auth_clear frame is on its way
        status, _, _ = await server.rest({"action": "list"}, auth=None, headers={"Authorization": f"Bearer {token}"})
        if status == 401:
            break
        await deferLater(0.05)
    assert status == 401


@ensure
async def test_use_renews_the_session_and_an_expired_one_returns_to_the_login_form(page: Page,
                                                                                   make_server: Any) -> None:
    server = await make_server("--token-ttl", "3")
    await logged_in(page, server)
    # Working in the page for longer than a token lives keeps it alive.
    deadline = await page.js("return Date.now() + 8000")
    while await page.js("return Date.now()") < deadline:
        await page.click('[data-panel="jobs"] input[name="filter"]')
        await deferLater(0.3)
        assert await page.js("return document.body.dataset.screen") == "app"
    # Left alone, it expires, and the page says so.
    await page.wait("return document.body.dataset.screen === 'login'", seconds=15)
    assert "ended" in await page.js("return document.querySelector('[data-bind=login-error]').textContent")


@ensure
async def test_a_job_run_from_the_page_streams_its_output_live(page: Page, make_server: Any, tmp_path: Any) -> None:
    server = await make_server("--update-interval", "0.05")
    await logged_in(page, server)
    await page.click('[data-view="run"]')
    # A refusal is shown in the form, with the server's detail.
    await page.type('form.run-form [name="id"]', "refused")
    await page.type('form.run-form [name="queue"]', "no_such_queue")
    await page.type('form.run-form [name="commands"]', "true")
    await page.click('form.run-form [data-action="run"]')
    await page.wait("return document.querySelector('[data-bind=run-error]').textContent.includes(\"unknown queue 'no_such_queue'\")")
    # A job that prints, waits for the test, then prints again.
    gate = tmp_path / "gate"
    await page.type('form.run-form [name="id"]', "from-page")
    await page.type('form.run-form [name="queue"]', "no_queue")
    await page.type('form.run-form [name="commands"]',
                    "echo first\nsh -c 'while [ ! -e gate ]; do sleep 0.02; done; echo second'")
    await page.type('form.run-form [name="cwd"]', str(tmp_path))
    await page.type('form.run-form [name="timeout"]', "60")
    await page.click('form.run-form [data-action="run"]')
    await page.wait("return document.querySelector('[data-bind=run-error]').textContent === ''")
    await page.wait_output("from-page", "first\n")
    job = server.dispatcher.jobs.get("from-page")
    assert job is not None and job.state == "running" and job.spec.cwd == str(tmp_path) and job.timeout == 60
    # echo first ended (its exit code may come in the update after its output); the second still runs.
    await page.wait_output("from-page", "exit 0")
    await page.shot("run")
    await page.click('[data-view="jobs"]')
    row = await page.wait_row("from-page", "row.dataset.state === 'running'")
    assert "second\n" not in await page.output("from-page")
    gate.write_text("")
    await page.wait_output("from-page", "second\n")
    row = await page.wait_row("from-page", "row.dataset.state === 'finished'")
    assert "ok" in row["text"]
    assert (await page.output("from-page")).count("exit 0") == 2


@ensure
async def test_a_job_from_another_client_appears_and_is_killed_from_the_page(page: Page, make_server: Any) -> None:
    server = await make_server("--kill-grace", "2")
    await logged_in(page, server)
    await page.js("window.__stillTheSamePage = true")
    # Ignores SIGTERM: the kill takes the grace period, then SIGKILL.
    await server.run({"jobs": [{"id": "stubborn", "commands": ["sh -c 'trap \"\" TERM; echo up; sleep 60'"],
                                "queue": "pkg_queue"},
                               {"id": "waiting", "commands": ["true"], "queue": "pkg_queue"}]})
    await page.wait_row("stubborn", "row.dataset.state === 'running'")
    row = await page.wait_row("waiting", "row.dataset.state === 'pending' && row.innerText.includes('#1')")
    assert await page.js("return window.__stillTheSamePage") is True  # no reload
    counts = await page.js("return document.querySelector('[data-queue=pkg_queue]').textContent")
    assert "1 running" in counts and "1 pending" in counts
    await page.click_row("stubborn")
    await page.wait_output("stubborn", "up\n")
    await page.click_row("stubborn", inside='[data-action="kill"]')
    await page.wait("return document.querySelector('dialog').open")
    assert await page.js("return document.querySelector('[data-bind=confirm-id]').textContent") == "stubborn"
    await page.shot("kill")
    await page.click('dialog [data-action="confirm"]')
    row = await page.wait_row("stubborn", "row.innerText.includes('killing...')")
    assert row["state"] == "running" and row["kill"] == 0
    row = await page.wait_row("stubborn", "row.dataset.state === 'finished'")
    assert "killed" in row["text"] and "SIGKILL" in row["text"]
    record = await server.wait_finished("stubborn")
    assert record["killed"] is True and record["signal"] == "SIGKILL"
    # The queue moved on; finished rows stay until dismissed.
    await page.wait_row("waiting", "row.dataset.state === 'finished'")
    await page.click_row("waiting", inside='[data-action="dismiss"]')
    await page.wait("return ![...document.querySelectorAll('[data-list=jobs] tr')].some(r => r.dataset.jobId === 'waiting')")
    assert await page.row("stubborn") is not None


@ensure
async def test_a_read_user_sees_no_run_or_kill_controls_and_the_server_refuses_them(page: Page, make_server: Any) -> None:
    server = await make_server()
    server.add_user("bob", "read", "bob-password")
    await server.run({"jobs": [{"id": "admins-job", "commands": ["sleep 60"]}]})
    await logged_in(page, server, "bob", "bob-password")
    await page.wait_row("admins-job", "row.dataset.state === 'running'")
    await page.click_row("admins-job")
    await page.wait("return !!document.querySelector('[data-output-for]')")
    visible = await page.js(
        "return [...document.querySelectorAll('[data-action=kill], [data-action=run], [data-view=run]')]"
        ".filter(e => e.offsetParent !== null || e.getClientRects().length > 0).length")
    assert visible == 0
    assert await page.js("return document.querySelectorAll('[data-list=jobs] [data-action=kill]').length") == 0
    # Asking for the run view shows the jobs view instead.
    await page.js("location.hash = '#run'; document.querySelector('[data-view=run]').click()")
    assert await page.js("return document.body.dataset.view") == "jobs"
    # And the server refuses anyway, on the page's own endpoint.
    client = await ws_path_connect(server.rest_port)
    server.clients.append(client)
    assert (await client.login("bob", "bob-password"))["name"] == "response"
    reply = await client.call("dispatcher", {"action": "run", "sneaky": "true"})
    assert reply["args"]["code"] == 403
    reply = await client.call("dispatcher", {"action": "kill", "job_id": "admins-job"})
    assert reply["args"]["code"] == 403
    assert server.dispatcher.jobs["admins-job"].state == "running"


@ensure
async def test_the_history_view_reads_lists_filters_and_opens_records(page: Page, make_server: Any) -> None:
    server = await make_server()
    await server.run({"jobs": [{"id": "went-well", "commands": ["echo all good"]},
                               {"id": "went-wrong", "commands": ["sh -c 'echo bad; exit 3'"]}]})
    for job_id in ("went-well", "went-wrong"):
        await server.wait_finished(job_id)
    await logged_in(page, server)
    await page.click('[data-view="history"]')
    await page.wait_row("went-well", list_name="history")
    await page.wait_row("went-wrong", list_name="history")
    order = await page.js("return [...document.querySelectorAll('[data-list=history] tr')].map(r => r.dataset.jobId)")
    assert set(order) == {"went-well", "went-wrong"}
    await page.js("const s = document.querySelector('form.history-query [name=outcome]');"
                  "s.value = 'failed'; s.dispatchEvent(new Event('change'))")
    await page.wait("return document.querySelectorAll('[data-list=history] tr').length === 1")
    row = await page.row("went-wrong", "history")
    assert row is not None and "exit 3" in row["text"]
    await page.click_row("went-wrong", "history")
    await page.wait_output("went-wrong", "bad\n")
    assert "exit 3" in await page.output("went-wrong")
    await page.js("const s = document.querySelector('form.history-query [name=outcome]');"
                  "s.value = 'all'; s.dispatchEvent(new Event('change'))")
    # A range that holds nothing.
    await page.js("const s = document.querySelector('form.history-query [name=range]');"
                  "s.value = 'custom'; s.dispatchEvent(new Event('change'));"
                  "document.querySelector('form.history-query [name=from]').value = '2001-01-01T00:00:00';"
                  "document.querySelector('form.history-query [name=to]').value = '2001-01-02T00:00:00';")
    await page.click('form.history-query [data-action="load-history"]')
    await page.wait("return document.querySelectorAll('[data-list=history] tr').length === 0")


@ensure
async def test_server_text_is_shown_as_text_never_as_html(page: Page, make_server: Any) -> None:
    server = await make_server()
    await logged_in(page, server)
    shown = XSS.replace("__xss=1", "__xss=2")
    await server.run({"jobs": [{"id": XSS, "commands": [f"echo {shown}", "echo <b>bold</b>"]}]})
    await server.wait_finished(XSS)
    await page.wait_row(XSS, "row.dataset.state === 'finished'")
    await page.click_row(XSS)
    await page.wait_output(XSS, "<b>bold</b>\n")
    output = await page.output(XSS)
    assert f"{shown}\n" in output and f"echo {shown}" in output
    await page.click('[data-view="history"]')
    await page.wait_row(XSS, list_name="history")
    text = await page.js("return document.body.textContent")
    assert XSS in text
    # No element was made from any of it, and nothing ran.
    assert await page.js("return document.querySelectorAll('img').length") == 0
    assert await page.js("return [...document.querySelectorAll('b')].filter(b => b.textContent === 'bold').length") == 0
    assert await page.js("return window.__xss") is None


@ensure
async def test_output_follows_the_end_until_scrolled_up_and_pauses(page: Page, make_server: Any, tmp_path: Any) -> None:
    server = await make_server("--update-interval", "0.05")
    await logged_in(page, server)
    script = "i=0; while [ ! -e stop ]; do i=$((i+1)); echo line $i; sleep 0.01; done"
    await server.run({"jobs": [{"id": "chatty", "commands": [f"sh -c '{script}'"], "cwd": str(tmp_path)}]})
    await page.wait_row("chatty", "row.dataset.state === 'running'")
    await page.click_row("chatty")
    at_end = ("const o = document.querySelector('[data-output-for]');"
              "return o.scrollHeight > o.clientHeight && o.scrollHeight - o.scrollTop - o.clientHeight < 30;")
    await page.wait(at_end)
    # Well past one screen, so that the top is not "near the end".
    await page.wait("const o = document.querySelector('[data-output-for]'); return o.scrollHeight > o.clientHeight + 300")
    length = "return document.querySelector('[data-output-for]').textContent.length"
    # Scrolled up: the view stays where the user put it while output grows.
    await page.js("const o = document.querySelector('[data-output-for]'); o.scrollTop = 0;"
                  "o.dispatchEvent(new Event('scroll'))")
    before = await page.js(length)
    await page.wait(f"{length} > {before} + 200")
    assert await page.js("return document.querySelector('[data-output-for]').scrollTop") == 0
    assert "Scrolled up" in await page.js("return document.querySelector('[data-bind=output-status]').textContent")
    # Back at the end: following again.
    await page.click('[data-action="follow"]')
    await page.wait(at_end)
    # Paused: the text holds still while the job goes on; resumed, it catches up.
    await page.click('[data-action="pause"]')
    held = await page.js(length)
    log = server.dispatcher.jobs["chatty"].logs[0]
    produced = log.total
    await poll(lambda: log.total > produced + 2000)
    await page.wait("return true")  # a round trip: updates sent meanwhile have arrived
    assert await page.js(length) == held
    assert "Paused" in await page.js("return document.querySelector('[data-bind=output-status]').textContent")
    await page.click('[data-action="pause"]')
    await page.wait(f"{length} > {held} + 1000")
    (tmp_path / "stop").write_text("")
    await server.wait_finished("chatty")


@ensure
async def test_a_running_job_joined_late_shows_its_output_so_far(page: Page, make_server: Any, tmp_path: Any) -> None:
    server = await make_server("--update-interval", "0.05")
    await server.run({"jobs": [{"id": "early", "commands": ["sh -c 'echo before login; while [ ! -e go ]; do "
                                                            "sleep 0.02; done; echo after login'"],
                                "cwd": str(tmp_path)}]})
    job = server.dispatcher.jobs["early"]
    await poll(lambda: job.logs and job.logs[0].total)
    await logged_in(page, server)
    await page.wait_row("early", "row.dataset.state === 'running'")
    await page.click_row("early")
    # A server that answers rpc/logs `job` for a running job gives the output
    # so far; one that does not leaves a note saying earlier output is missing.
    status, _, _ = await server.rest({"action": "job", "job_id": "early"}, path="/rpc/logs")
    if status == 200:
        await page.wait_output("early", "before login\n")
    else:
        await page.wait_output("early", "is not shown")
    (tmp_path / "go").write_text("")
    await page.wait_output("early", "after login\n")
    await page.wait_row("early", "row.dataset.state === 'finished'")
    # Finished: the whole log, from the finished event and the stored record.
    await page.wait_output("early", "before login\n")
    assert "is not shown" not in await page.output("early")


@ensure
async def test_the_dashboard_over_https_with_tls_cert(page: Page, make_server: Any,
                                                      certificate: tuple[str, str, bytes]) -> None:
    from test_tls import HTTPS

    cert, key, cert_pem = certificate
    server = await make_server("--tls-cert", cert, "--tls-key", key)
    await page.open(f"https://localhost:{server.rest_port}/")
    assert await page.js("return location.protocol") == "https:"
    await page.login("admin", server.admin_password)
    await page.wait("return document.body.dataset.screen === 'app'")
    # Live over wss://.../ws: a job started elsewhere shows up.
    status, _ = await HTTPS(cert_pem).put(f"https://localhost:{server.rest_port}/rpc/dispatcher",
                                          {"action": "run", "over-tls": "echo secure"},
                                          auth=("admin", server.admin_password))
    assert status == 200
    await page.wait_row("over-tls", "row.dataset.state === 'finished'")


@ensure
async def test_layout_at_desktop_and_phone_width_and_the_screenshots(page: Page, make_server: Any,
                                                                      tmp_path: Any) -> None:
    server = await make_server("--update-interval", "0.05")
    await server.run({"jobs": [
        {"id": "nightly-backup", "commands": ["sh -c 'echo rsync -a /srv /backup; sleep 0.3; echo sent 2.1G'",
                                              "echo verified"]},
        {"id": "broken-cron", "commands": ["ls /no/such/dir"]},
    ]})
    for job_id in ("nightly-backup", "broken-cron"):
        await server.wait_finished(job_id)
    await logged_in(page, server)
    build = ("i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo \"[$i/40] compiling module_$i.c\"; done; "
             "while [ ! -e stop ]; do sleep 0.05; done")
    await server.run({"jobs": [
        {"id": "build-web-2041", "commands": ["echo git fetch --all", f"sh -c '{build}'"], "cwd": str(tmp_path)},
        {"id": "pkg-upgrade", "commands": ["sh -c 'echo fetching; while [ ! -e stop ]; do sleep 0.05; done'"],
         "queue": "pkg_queue", "cwd": str(tmp_path)},
        {"id": "pkg-install-nginx", "commands": ["pkg install -y nginx"], "queue": "pkg_queue"},
        {"id": "pkg-clean", "commands": ["pkg clean -y"], "queue": "pkg_queue"},
        {"id": "jail-update", "commands": ["sh -c 'while [ ! -e stop ]; do sleep 0.05; done'"],
         "queue": "iocage_queue", "cwd": str(tmp_path)},
        {"id": "quick-check", "commands": ["echo ok"]},
    ]})
    await page.wait_row("pkg-clean", "row.innerText.includes('#2')")
    await page.wait_row("quick-check", "row.dataset.state === 'finished'")
    await page.click_row("build-web-2041")
    await page.wait_output("build-web-2041", "[40/40]")
    no_overflow = "return document.documentElement.scrollWidth <= window.innerWidth"
    assert await page.js(no_overflow)
    await page.shot("jobs")
    await page.click('[data-view="history"]')
    await page.wait_row("broken-cron", list_name="history")
    await page.click_row("nightly-backup", "history")
    await page.wait_output("nightly-backup", "verified\n")
    assert await page.js(no_overflow)
    await page.shot("history")
    await page.click('[data-view="jobs"]')
    # Phone width: one pane at a time, nothing wider than the screen.
    await page.size(*PHONE)
    await page.click('[data-action="back"]')
    await page.wait("return document.body.dataset.detail === 'closed'")
    assert await page.js(no_overflow)
    assert await page.js("return document.querySelector('.detail-pane').offsetParent === null")
    await page.shot("phone-jobs")
    await page.click_row("build-web-2041")
    await page.wait("return document.querySelector('.list-pane').offsetParent === null")
    assert await page.js(no_overflow)
    await page.shot("phone-output")
    await page.size(*DESKTOP)
    (tmp_path / "stop").write_text("")
    for job_id in ("build-web-2041", "pkg-upgrade", "jail-update"):
        await server.wait_finished(job_id)


@ensure
async def test_a_dropped_connection_is_resumed_with_the_token(page: Page, make_server: Any) -> None:
    # The server closes connections idle for a second: the page reconnects
    # (with its token, no login) and reads the list again.
    server = await make_server("--idle-timeout", "1")
    await logged_in(page, server)
    await page.wait("return document.querySelector('[data-bind=conn]').dataset.conn === 'down'")
    await page.wait("return document.querySelector('[data-bind=conn]').textContent === 'live'")
    assert await page.js("return document.body.dataset.screen") == "app"
    await server.run({"after-reconnect": "true"})
    await page.wait_row("after-reconnect", "row.dataset.state === 'finished'")


@ensure
async def test_the_job_model_merges_list_events_and_records(page: Page, make_server: Any) -> None:
    """The page's own job model (jobs.js), exercised in the browser where it runs."""
    server = await make_server()
    await page.open(server.rest_url + "/")
    result = await page.call(page.driver.execute_async_script, """
        const done = arguments[arguments.length - 1];
        import("./ui/jobs.js").then(({JobBook, Job, outcome}) => {
          const out = {};
          const ev = (state, id, details, extra = {}) => ({state, process_id: id, queue: "no_queue",
            process_details: {process_id: id, state, cmd_list: ["a", "b"], ...details}, ...extra});
          // Seen from the start: the events hold all the output.
          let book = new JobBook();
          book.event(ev("pending", "j", {}), 1);
          book.event(ev("running", "j", {time_started: "2026-01-01T00:00:00+00:00", current_cmd: "a"}), 2);
          book.event(ev("running", "j", {current_cmd: "a", a: "one\\n"}), 3);
          book.event(ev("running", "j", {current_cmd: "b", a: "two\\n", "return_codes/a": "0", b: "x"}), 4);
          let j = book.get("j");
          out.complete = j.sections().map(s => [s.text, s.rc, s.partial]);
          // A live record that is ahead of the events wins; one behind does not.
          j.record = {state: "running", process_details: {a: "one\\ntwo\\n", b: "xyz"}};
          out.ahead = j.sections().map(s => s.text);
          j.record = {state: "running", process_details: {a: "one\\n", b: ""}};
          out.behind = j.sections().map(s => s.text);
          // Joined late: partial without a record, the record's text with one.
          book = new JobBook();
          book.list({no_queue: {late: {commands: ["a"], state: "running", current_cmd: "a",
                                        time_started: "2026-01-01T00:00:00+00:00"}}}, 10);
          book.event(ev("running", "late", {cmd_list: ["a"], current_cmd: "a", a: "tail\\n"}), 11);
          j = book.get("late");
          out.lateBare = j.sections().map(s => [s.text, s.partial]);
          out.lateNeeds = j.needsRecord();
          j.record = {state: "running", process_details: {a: "head\\ntail\\n"}};
          out.lateRecord = j.sections().map(s => [s.text, s.partial]);
          // A list asked before a finished event does not bring the job back.
          book.event(ev("finished", "late", {cmd_list: ["a"], a: "head\\ntail\\n", "return_codes/a": "0"},
                        {success: "true"}), 20);
          book.list({no_queue: {late: {commands: ["a"], state: "running"}}}, 15);
          out.afterOldList = [book.get("late").state, outcome(book.get("late")).label];
          // A job gone from a newer list finished unseen; a new run replaces a finished one.
          book.event(ev("running", "gone", {cmd_list: ["a"], current_cmd: "a"}), 30);
          book.list({}, 31);
          out.gone = [book.get("gone").state, book.get("gone").missed];
          book.event(ev("running", "late", {cmd_list: ["a"], current_cmd: "a"}), 40);
          out.rerun = [book.get("late").state, book.get("late").final, book.get("late").partialUpTo];
          // Outcomes.
          const done_ = (extra, codes = {}) => { const k = new JobBook();
            k.event(ev("finished", "o", {cmd_list: ["a"], ...codes}, extra), 1); return outcome(k.get("o")).label; };
          out.outcomes = [done_({success: "true"}), done_({success: "false"}, {"return_codes/a": "2"}),
                          done_({success: "false", killed: true, signal: "SIGTERM"}),
                          done_({success: "false", timed_out: true, killed: true, signal: "SIGKILL"}),
                          done_({success: "false", interrupted: true})];
          // A history record in the flat shape of the original server.
          const flat = Job.fromRecord({process_id: "f", state: "finished", cmd_list: ["a"], a: "out",
                                       "return_codes/a": "0", success: "true"});
          out.flat = [flat.id, flat.sections().map(s => [s.text, s.rc])];
          done(out);
        }).catch(e => done({error: String(e)}));
    """)
    assert "error" not in result, result
    assert result["complete"] == [["one\ntwo\n", "0", False], ["x", None, False]]
    assert result["ahead"] == ["one\ntwo\n", "xyz"]
    assert result["behind"] == ["one\ntwo\n", "x"]
    assert result["lateBare"] == [["tail\n", True]] and result["lateNeeds"] is True
    assert result["lateRecord"] == [["head\ntail\n", False]]
    assert result["afterOldList"] == ["finished", "ok"]
    assert result["gone"] == ["finished", True]
    assert result["rerun"] == ["running", None, -1]
    assert result["outcomes"] == ["ok", "failed · exit 2", "killed · SIGTERM", "timed out · SIGKILL", "interrupted"]
    assert result["flat"] == ["f", [["out", "0"]]]
