"""
Prometheus metrics (``--metrics``): scraped over HTTP from a real server
after real jobs ran, failed, were killed and timed out, and after logins
over both transports; the counts exactly, the gauges live, and nothing a
client sent (job ids, commands) in the exposition.
"""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
import treq
from conftest import TIMEOUT, Server, poll, start_server, with_timeout
from ops_helpers import metrics_port, scrape, value
from test_store import spec
from twisted.internet import reactor

from sysadm_dispatch import tap
from sysadm_dispatch.auth.users import UserEntry, hash_password, write_users
from sysadm_dispatch.core.dispatcher import Dispatcher
from sysadm_dispatch.embed import make_router, make_websocket_factory
from sysadm_dispatch.ops.metrics import COMMIT_BUCKETS, JOB_BUCKETS, Buckets, DispatchMetrics
from sysadm_dispatch.store.database import Store

ensure = pytest_twisted.ensureDeferred
METRICS = ("--metrics", "tcp:0:interface=127.0.0.1")
P = "sysadm_dispatch_"


@ensure
async def test_job_counters_gauges_and_histograms_after_real_jobs(make_server: Any) -> None:
    server: Server = await make_server(*METRICS, "--queue", "slow_queue:2")
    port = metrics_port(server)
    began = time.time()
    marker = "cmd-marker-91b2"
    await server.run({"jobs": [
        {"id": "job-ok-7f3a", "commands": f"echo {marker}"},
        {"id": "job-fail-7f3a", "commands": ["true", "false"]},
        {"id": "job-timeout-7f3a", "commands": "sleep 30", "timeout": 0.5},
        {"id": "job-run-7f3a", "commands": "sleep 30", "queue": "pkg_queue"},
        {"id": "job-wait-7f3a", "commands": f"echo {marker}", "queue": "pkg_queue"},
    ]})
    for job_id in ("job-ok-7f3a", "job-fail-7f3a", "job-timeout-7f3a"):
        await server.wait_finished(job_id)

    # While one pkg_queue job runs and one waits behind it.
    text, samples = await scrape(port)
    assert value(samples, P + "jobs_submitted_total", queue="no_queue") == 3
    assert value(samples, P + "jobs_submitted_total", queue="pkg_queue") == 2
    assert value(samples, P + "jobs_started_total", queue="pkg_queue") == 1
    assert value(samples, P + "jobs_running", queue="pkg_queue") == 1
    assert value(samples, P + "jobs_pending", queue="pkg_queue") == 1
    assert value(samples, P + "jobs_running", queue="no_queue") == 0
    assert value(samples, P + "queue_concurrency", queue="pkg_queue") == 1
    assert value(samples, P + "queue_concurrency", queue="no_queue") == 0
    assert value(samples, P + "queue_concurrency", queue="slow_queue") == 2

    status, body, _ = await server.rest({"action": "kill", "job_id": ["job-wait-7f3a", "job-run-7f3a"]})
    assert status == 200, body
    await server.wait_finished("job-run-7f3a")
    text, samples = await scrape(port)
    finished = {(q, r): value(samples, P + "jobs_finished_total", queue=q, result=r)
                for q in ("no_queue", "pkg_queue", "iocage_queue", "slow_queue")
                for r in ("succeeded", "failed", "killed", "timed_out", "interrupted")}
    assert {k: v for k, v in finished.items() if v} == {
        ("no_queue", "succeeded"): 1, ("no_queue", "failed"): 1, ("no_queue", "timed_out"): 1,
        ("pkg_queue", "killed"): 2,
    }
    assert value(samples, P + "jobs_started_total", queue="no_queue") == 3
    # The killed pending job never started.
    assert value(samples, P + "jobs_started_total", queue="pkg_queue") == 1
    for queue in ("no_queue", "pkg_queue"):
        assert value(samples, P + "jobs_running", queue=queue) == 0
        assert value(samples, P + "jobs_pending", queue=queue) == 0
    # Histograms: one duration per job that ran, one wait per job that started.
    assert value(samples, P + "job_duration_seconds_count", queue="no_queue") == 3
    assert value(samples, P + "job_duration_seconds_count", queue="pkg_queue") == 1
    assert value(samples, P + "job_wait_seconds_count", queue="no_queue") == 3
    assert value(samples, P + "job_wait_seconds_count", queue="pkg_queue") == 1
    assert value(samples, P + "job_duration_seconds_bucket", queue="pkg_queue", le="+Inf") == 1
    # The timed-out job ran at least its 0.5 s: not in the buckets below that.
    assert value(samples, P + "job_duration_seconds_bucket", queue="no_queue", le="0.25") <= 2
    assert value(samples, P + "job_duration_seconds_sum", queue="no_queue") >= 0.5
    buckets = sorted(float(dict(labels)["le"]) for (name, labels) in samples
                     if name == P + "job_wait_seconds_bucket" and dict(labels)["queue"] == "no_queue")
    assert buckets == [*JOB_BUCKETS, float("inf")]
    assert buckets[0] == 0.01 and buckets[-2] == 3600
    # When each kind of end last happened.
    for queue, result in (("no_queue", "succeeded"), ("no_queue", "failed"), ("no_queue", "timed_out"),
                          ("pkg_queue", "killed")):
        when = value(samples, P + "last_finish_timestamp_seconds", queue=queue, result=result)
        assert began - 1 <= when <= time.time() + 1
    assert (P + "last_finish_timestamp_seconds", frozenset({("queue", "no_queue"), ("result", "killed")})) \
        not in samples
    # The store committed (the jobs are durable) and never failed.
    assert value(samples, P + "store_commit_seconds_count") >= 2
    assert value(samples, P + "store_errors_total") == 0
    # The default collectors.
    assert value(samples, "process_resident_memory_bytes") > 0
    assert any(name.startswith("python_gc_") for name, _ in samples)
    assert any(name == "python_info" for name, _ in samples)
    # Nothing a client sent.
    assert "7f3a" not in text and marker not in text and "sleep" not in text and "echo" not in text
    assert "admin" not in text


@ensure
async def test_logins_over_both_transports_ok_failed_blocked(make_server: Any) -> None:
    server: Server = await make_server(*METRICS, "--max-failed-logins", "3")
    port = metrics_port(server)
    wrong = "wrong-password-x"

    def logins(samples: Any) -> dict[tuple[str, str], float]:
        return {(t, r): value(samples, P + "logins_total", transport=t, result=r)
                for t in ("rest", "websocket") for r in ("ok", "failed", "blocked")}

    _, samples = await scrape(port)
    assert set(logins(samples).values()) == {0}
    assert value(samples, P + "blocked_addresses") == 0

    # REST: Basic credentials (checked once, then remembered), and rpc/auth.
    assert (await server.rest({"action": "list"}))[0] == 200
    assert (await server.rest({"action": "list"}))[0] == 200  # remembered: no second check
    assert (await server.rest({"action": "list"}, auth=("admin", wrong)))[0] == 401
    status, _, _ = await server.rest({"username": "admin", "password": server.admin_password}, path="/rpc/auth",
                                     auth=None)
    assert status == 200
    # WebSocket: one good login, then three bad ones block the address.
    client = await server.ws(login=None)
    assert (await client.login("admin", server.admin_password))["name"] == "response"
    for _ in range(3):
        assert (await client.login("admin", wrong))["args"]["code"] == 401
    _, samples = await scrape(port)
    assert value(samples, P + "blocked_addresses") == 1
    # Blocked: a login over either transport is refused before any check.
    assert (await client.login("admin", server.admin_password))["args"]["code"] == 403
    assert (await server.rest({"action": "list"}))[0] == 403
    status, _, _ = await server.rest({"username": "admin", "password": server.admin_password}, path="/rpc/auth",
                                     auth=None)
    assert status == 403
    # A request without credentials from the blocked address is no login.
    assert (await server.rest({}, path="/rpc/identify", auth=None))[0] == 403

    text, samples = await scrape(port)
    assert logins(samples) == {
        ("rest", "ok"): 2, ("rest", "failed"): 1, ("rest", "blocked"): 2,
        ("websocket", "ok"): 1, ("websocket", "failed"): 3, ("websocket", "blocked"): 1,
    }
    assert wrong not in text and server.admin_password not in text and "127.0.0.1" not in text


@ensure
async def test_connections_subscribers_and_dropped_clients(make_server: Any) -> None:
    server: Server = await make_server(*METRICS, "--idle-timeout", "1", "--auth-timeout", "0.5")
    port = metrics_port(server)
    _, samples = await scrape(port)
    base_subscribers = value(samples, P + "event_subscribers")
    assert value(samples, P + "websocket_connections") == 0
    for reason in ("slow_consumer", "idle", "auth_timeout"):
        assert value(samples, P + "clients_dropped_total", reason=reason) == 0

    listener = await server.ws()
    await listener.call("subscribe", ["dispatcher"], namespace="events")
    silent = await server.ws(login=None)
    _, samples = await scrape(port)
    assert value(samples, P + "websocket_connections") == 2
    assert value(samples, P + "event_subscribers") == base_subscribers + 1
    # The one that never logs in is closed after 0.5 s, the logged-in one after 1 s idle.
    await with_timeout(silent.lost)
    await with_timeout(listener.lost)

    _, samples = await scrape(port)
    assert value(samples, P + "clients_dropped_total", reason="auth_timeout") == 1
    assert value(samples, P + "clients_dropped_total", reason="idle") == 1
    assert value(samples, P + "websocket_connections") == 0
    assert value(samples, P + "event_subscribers") == base_subscribers


@ensure
async def test_the_listener_serves_only_metrics_and_openmetrics_on_request(make_server: Any) -> None:
    server: Server = await make_server(*METRICS)
    base = f"http://127.0.0.1:{metrics_port(server)}"
    response = await with_timeout(treq.get(base + "/metrics", headers={"Accept": "application/openmetrics-text"}))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"application/openmetrics-text")
    body = (await with_timeout(treq.content(response))).decode()
    assert body.rstrip().endswith("# EOF")
    response = await with_timeout(treq.get(base + "/rpc/dispatcher"))
    assert response.code == 404
    await treq.content(response)
    # The REST and WebSocket listeners do not serve it.
    response = await with_timeout(treq.get(server.rest_url + "/metrics"))
    assert response.code == 404
    await treq.content(response)


@ensure
async def test_metrics_are_off_unless_asked_for(server: Server) -> None:
    names = [service.name for service in server.service]
    assert "metrics" not in names
    assert server.dispatcher.observers == []


@ensure
async def test_jobs_interrupted_by_a_stop_are_counted() -> None:
    dispatcher = Dispatcher(reactor, kill_grace=1)
    metrics = DispatchMetrics(dispatcher)
    dispatcher.startService()
    done = dispatcher.run("long", "sleep 30")
    await poll(lambda: dispatcher.jobs["long"].state == "running")
    await with_timeout(dispatcher.stopService(), TIMEOUT)
    record = await with_timeout(done)
    assert record["interrupted"] is True
    text, _ = metrics.exposition(None)
    assert f'{P}jobs_finished_total{{queue="no_queue",result="interrupted"}} 1.0' in text.decode()
    assert f'{P}job_duration_seconds_count{{queue="no_queue"}} 1.0' in text.decode()


def test_buckets_count_each_value_under_the_first_bound_not_below_it() -> None:
    buckets = Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        buckets.observe(v)
    assert buckets.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert buckets.sum == 8.65
    assert COMMIT_BUCKETS[0] < JOB_BUCKETS[0]


@ensure
async def test_jobs_found_in_the_store_at_startup(tmp_path: Any) -> None:
    # The store of a server that died with one job running and one pending.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = Store(str(state / tap.STORE_FILE), reactor)
    await with_timeout(store.open())
    await with_timeout(store.add([(spec("was-running", "sleep 100"), 1.0, 2.0), (spec("was-pending", "true"), 1.5, None)]))
    await with_timeout(store.close())

    server = await start_server(str(state), *METRICS)
    try:
        await server.wait_finished("was-pending")
        _, samples = await scrape(metrics_port(server))
        # Neither was submitted to this server; the pending one started here, the running one is interrupted.
        assert value(samples, P + "jobs_submitted_total", queue="no_queue") == 0
        assert value(samples, P + "jobs_started_total", queue="no_queue") == 1
        assert value(samples, P + "jobs_finished_total", queue="no_queue", result="interrupted") == 1
        assert value(samples, P + "jobs_finished_total", queue="no_queue", result="succeeded") == 1
        # Only the job that ran here has a duration; its wait counts from when it was first queued.
        assert value(samples, P + "job_duration_seconds_count", queue="no_queue") == 1
        assert value(samples, P + "job_wait_seconds_count", queue="no_queue") == 1
        assert value(samples, P + "job_wait_seconds_bucket", queue="no_queue", le="3600.0") == 0
        assert value(samples, P + "last_finish_timestamp_seconds", queue="no_queue", result="interrupted") > 0
    finally:
        await server.stop()


@ensure
async def test_metrics_of_an_embedded_dispatcher(tmp_path: Any) -> None:
    users = tmp_path / "users"
    write_users(str(users), {"admin": UserEntry("admin", "full", hash_password("pw"))})
    dispatcher = Dispatcher(reactor)
    dispatcher.startService()
    router = make_router(dispatcher, str(users))
    factory = make_websocket_factory(router)
    metrics = DispatchMetrics(dispatcher, auth=router.auth, websocket=factory)
    port = reactor.listenTCP(0, metrics.site(), interface="127.0.0.1")
    try:
        await with_timeout(dispatcher.run("embedded", "true"))
        await with_timeout(router.auth.login("admin", "nope", "10.0.0.1", transport="websocket")
                           .addErrback(lambda f: None))
        _, samples = await scrape(port.getHost().port)
        assert value(samples, P + "jobs_finished_total", queue="no_queue", result="succeeded") == 1
        assert value(samples, P + "logins_total", transport="websocket", result="failed") == 1
        assert value(samples, P + "websocket_connections") == 0
        # No store to report on.
        assert value(samples, P + "store_commit_seconds_count") == 0
    finally:
        await port.stopListening()
        await with_timeout(dispatcher.stopService())
