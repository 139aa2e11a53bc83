"""
``GET /health``: whether this server can take work, for a load balancer,
systemd or the monitoring.  ``200 {"status": "ok"}`` once the jobs of the
store have been taken up and the store can write; otherwise ``503`` with
the reason (``starting``, ``stopping``, ``store unavailable``, ``disk
full``) and nothing else.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from ..core.dispatcher import Dispatcher

OK: dict[str, Any] = {"status": "ok"}


def unavailable(reason: str) -> tuple[int, dict[str, Any]]:
    return 503, {"status": "unavailable", "reason": reason}


def store_reason(error: str) -> str:
    """The health reason for a store error message."""
    lowered = error.lower()
    if "disk is full" in lowered or "no space left" in lowered or "disk quota" in lowered:
        return "disk full"
    return "store unavailable"


class HealthCheck:
    """
    Answers whether ``dispatcher`` is healthy.  Whether its store can write
    is tried with a real commit each time (one at a time: checks asked for
    while one is under way share its answer), so a disk that filled up
    since the last job is seen.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._probing: list[Deferred[tuple[int, dict[str, Any]]]] | None = None

    def check(self) -> Deferred[tuple[int, dict[str, Any]]]:
        """Fires with the HTTP status and the body."""
        dispatcher = self.dispatcher
        if dispatcher.stopping:
            return succeed(unavailable("stopping"))
        if not dispatcher.running or not dispatcher.recovered:
            return succeed(unavailable("starting"))
        store = dispatcher.store
        if store is None:
            return succeed((200, OK))
        d: Deferred[tuple[int, dict[str, Any]]] = Deferred()
        if self._probing is not None:
            self._probing.append(d)
            return d
        self._probing = [d]
        store.probe().addBoth(self._probed)
        return d

    def _probed(self, result: object) -> None:
        if isinstance(result, Failure):
            answer = unavailable(store_reason(result.getErrorMessage()))
        else:
            answer = (200, OK)
        waiting, self._probing = self._probing or [], None
        for d in waiting:
            d.callback(answer)
