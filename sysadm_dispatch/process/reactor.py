"""
The reactor as the process room uses it (and named timers over it): Twisted's ``IReactorTime``,
``IReactorFDSet`` and ``IReactorProcess``, spelled as ``typing.Protocol`` so
that mypy checks calls through them (it cannot check calls through a zope
``Interface``).  Any Twisted reactor, ``Clock`` or ``MemoryReactorClock``
(for the parts each provides) satisfies them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol


class DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class TimeReactor(Protocol):
    """``IReactorTime``: what timers need."""

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any: ...

    def seconds(self) -> float: ...


class ProcessReactor(TimeReactor, Protocol):
    """``IReactorTime`` + ``IReactorFDSet`` + ``IReactorProcess``: what starting and watching commands needs."""

    def addReader(self, reader: Any) -> None: ...

    def removeReader(self, reader: Any) -> None: ...

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> Any: ...


class ProcessTransport(Protocol):
    """``IProcessTransport``, as its users here call it."""

    @property
    def pid(self) -> int | None: ...

    def signalProcess(self, signalID: str | int) -> None: ...

    def closeStdin(self) -> None: ...

    def closeStdout(self) -> None: ...

    def closeStderr(self) -> None: ...

    def closeChildFD(self, descriptor: int) -> None: ...

    def writeToChild(self, childFD: int, data: bytes) -> None: ...

    def write(self, data: bytes) -> None: ...

    def writeSequence(self, data: Sequence[bytes]) -> None: ...

    def loseConnection(self) -> None: ...

    def getPeer(self) -> Any: ...

    def getHost(self) -> Any: ...


class NamedTimers:
    """Timers by name: setting one replaces the one of that name, and one call cancels them all."""

    def __init__(self, reactor: TimeReactor) -> None:
        self.reactor = reactor
        self._calls: dict[str, DelayedCall] = {}

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
