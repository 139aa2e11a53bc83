"""``rpc/logs`` (any user): ``read_logs`` pages through the history, ``job`` finds one job's last record."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from ...core.dispatcher import Unavailable
from ...store.history import BadQuery, flat_record, parse_read_logs, read_logs_reply
from ..envelope import RPCError, require_text
from ..table import Call, HandlerTable, Role
from .dispatcher import refused


def register(table: HandlerTable) -> None:
    table.register("rpc", "logs", read_logs, role=Role.READ, action="read_logs")
    table.register("rpc", "logs", last_record, role=Role.READ, action="job")


def read_logs(call: Call) -> Deferred[Any]:
    dispatcher = call.services.dispatcher
    try:
        query = parse_read_logs(call.args, dispatcher.reactor.seconds())
        d = dispatcher.read_history(query.start, query.end, query.limit)
    except BadQuery as e:
        raise RPCError(400, str(e)) from None
    except Unavailable as e:
        raise RPCError(503, str(e)) from None
    return d.addCallbacks(lambda page: read_logs_reply(query, *page), refused)


def last_record(call: Call) -> Deferred[Any]:
    job_id = call.args.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise RPCError(400, "logs: job_id must be a non-empty string")
    require_text("logs", job_id=job_id)

    def found(record: dict[str, Any] | None) -> dict[str, Any]:
        if record is None:
            raise RPCError(404, f"no job {job_id[:256]!r}: none is pending or running, and none in the history")
        return flat_record(record)

    try:
        d = call.services.dispatcher.last_record(job_id)
    except Unavailable as e:
        raise RPCError(503, str(e)) from None
    return d.addCallbacks(found, refused)
