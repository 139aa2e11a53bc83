"""``rpc/dispatcher``: ``list`` (any user), ``run`` and ``kill`` (full access)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...core.dispatcher import Unavailable
from ...core.spec import InvalidJob
from ..envelope import RPCError, require_text
from ..table import Call, HandlerTable, Role

log = Logger()


def register(table: HandlerTable) -> None:
    table.register("rpc", "dispatcher", list_jobs, role=Role.READ, action="list")
    table.register("rpc", "dispatcher", run, role=Role.FULL, action="run", what="run jobs")
    table.register("rpc", "dispatcher", kill, role=Role.FULL, action="kill", what="kill jobs")


def list_jobs(call: Call) -> Deferred[Any]:
    dispatcher = call.services.dispatcher
    if not dispatcher.recovered:
        # Just started: the jobs kept in the store are being taken up.
        return dispatcher.when_recovered().addCallback(lambda _: {"jobs": dispatcher.list_jobs()})
    return succeed({"jobs": dispatcher.list_jobs()})


def run(call: Call) -> Deferred[Any]:
    session, dispatcher = call.session, call.services.dispatcher
    user = session.user
    try:
        specs = dispatcher.parse_run(call.args, user.name if user else None)
        submitted = dispatcher.submit(specs)
    except InvalidJob as e:
        raise RPCError(400, str(e)) from None
    except Unavailable as e:
        raise RPCError(503, str(e)) from None

    # The reply waits until the jobs are recorded (with a store).
    def started(jobs: list[Any]) -> Any:
        # One line per request says who asked for what: the audit trail.
        user = session.user
        log.info("user {username} from {peer} queued {jobs!r}", username=user.name if user else "?",
                 peer=session.peer, jobs={j.id: [j.queue, *j.spec.commands] for j in jobs})
        return {"started": [job.id for job in jobs]}

    return submitted.addCallbacks(started, refused)


def kill(call: Call) -> Deferred[Any]:
    job_id = call.args.get("job_id")
    if isinstance(job_id, str):
        ids = [job_id]
    elif isinstance(job_id, list) and job_id and all(isinstance(i, str) for i in job_id):
        ids = job_id
    else:
        raise RPCError(400, "kill: job_id must be a string or a non-empty list of strings")
    require_text("kill", job_id="".join(ids))
    user = call.session.user
    d = call.services.dispatcher.kill(ids, user.name if user else None)
    return d.addCallback(lambda result: {"killed": {"jobs": result[0], "not_found": result[1]}})


def refused(f: Failure) -> Failure:
    """Dispatcher refusals that arrive late (with a store) as error replies."""
    if f.check(InvalidJob):
        return Failure(RPCError(400, f.getErrorMessage()))
    if f.check(Unavailable):
        return Failure(RPCError(503, f.getErrorMessage()))
    return f
