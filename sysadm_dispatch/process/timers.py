"""Timers by name over the reactor's ``IReactorTime``."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class NamedTimers:
    """Timers by name: setting one replaces the one of that name, and one call cancels them all."""

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self._calls: dict[str, IDelayedCall] = {}

    def later(self, name: str, seconds: float, f: Callable[[], None]) -> None:
        self.cancel(name)

        def fire() -> None:
            del self._calls[name]
            f()

        self._calls[name] = self.reactor.callLater(seconds, fire)

    def cancel(self, name: str) -> None:
        call = self._calls.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def cancel_all(self) -> None:
        for name in list(self._calls):
            self.cancel(name)
