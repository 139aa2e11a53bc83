"""
What every client command shares while it runs: its output streams, the
connection, and what Ctrl-C does.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from .errors import INTERRUPTED, ClientError

if TYPE_CHECKING:
    from ..reactors import IClientReactor


def wants_colour(stream: IO[Any], env: dict[str, str] | os._Environ[str]) -> bool:
    """Colour only on a terminal, and not when ``NO_COLOR`` is set (no-color.org) or ``TERM=dumb``."""
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Output:
    """Writes for people and scripts; a reader that went away (``| head``) is not an error."""

    def __init__(self, stdout: IO[Any] | None = None, stderr: IO[Any] | None = None) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.colour = wants_colour(self.stdout, os.environ)
        self.err_colour = wants_colour(self.stderr, os.environ)
        self.broken = False
        self.held: list[tuple[IO[Any], bytes]] | None = None

    def _write(self, stream: IO[Any], data: bytes) -> None:
        if self.held is not None:
            self.held.append((stream, data))
            return
        if stream is self.stdout and self.broken:
            return
        try:
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                stream.flush()
                buffer.write(data)
                buffer.flush()
            else:
                stream.write(data.decode("utf-8", "replace"))
                stream.flush()
        except BrokenPipeError:
            if stream is self.stdout:
                self.broken = True
                # Later writes and the interpreter's final flush must not fail.
                try:
                    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
                except (OSError, ValueError):
                    pass

    def out(self, text: str) -> None:
        self._write(self.stdout, text.encode("utf-8", "replace"))

    def line(self, text: str = "") -> None:
        self.out(text + "\n")

    def json(self, value: Any) -> None:
        self.line(json.dumps(value, ensure_ascii=False))

    def err(self, text: str) -> None:
        self._write(self.stderr, (text + "\n").encode("utf-8", "replace"))

    def hold(self) -> None:
        """Keep what is written from now on until ``release`` (while a question waits for its answer)."""
        if self.held is None:
            self.held = []

    def release(self) -> None:
        held, self.held = self.held, None
        for stream, data in held or []:
            self._write(stream, data)


@implementer(IReadDescriptor)
class LineReader:
    """Reads one line from standard input without blocking the reactor."""

    def __init__(self, reactor: IReactorFDSet, callback: Callable[[str | None], None]) -> None:
        self.reactor = reactor
        self.callback = callback
        self.data = b""
        self.done = False

    def start(self) -> None:
        self.reactor.addReader(self)

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "stdin"

    def doRead(self) -> None:
        try:
            chunk = os.read(0, 1024)
        except OSError:
            chunk = b""
        self.data += chunk
        if not chunk or b"\n" in self.data:
            self._end(self.data.split(b"\n", 1)[0].decode("utf-8", "replace") if chunk else None)

    def connectionLost(self, reason: Any) -> None:
        self._end(None)

    def stop(self) -> None:
        self._end(None)

    def _end(self, line: str | None) -> None:
        if self.done:
            return
        self.done = True
        self.reactor.removeReader(self)
        self.callback(line)


class Session:
    """
    One run of a client command.  ``finished`` fires with the exit code;
    Ctrl-C calls ``on_interrupt`` (by default: end with 130).
    """

    def __init__(self, reactor: IClientReactor, output: Output, terminal: bool) -> None:
        self.reactor = reactor
        self.output = output
        self.terminal = terminal
        self.finished: Deferred[int] = Deferred()
        self.on_interrupt: Callable[[], None] = self.default_interrupt
        self.connection: Any = None

    def install_interrupt(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.on_interrupt)

        def terminate(signum: int, frame: Any) -> None:
            # SIGTERM (``timeout``, a service manager, ``kill``) is an
            # interrupt with nobody to ask: follow detaches, watch ends.
            self.terminal = False
            self.reactor.callFromThread(self.on_interrupt)

        signal.signal(signal.SIGINT, handler)
        # The reactor puts its own SIGTERM handler in place as it starts.
        self.reactor.callWhenRunning(signal.signal, signal.SIGTERM, terminate)

    def default_interrupt(self) -> None:
        self.fail(ClientError(INTERRUPTED, ""))

    def finish(self, code: int) -> None:
        if not self.finished.called:
            self.finished.callback(code)

    def fail(self, error: BaseException | Failure) -> None:
        if self.finished.called:
            return
        if isinstance(error, Failure):
            error = error.value or Exception("unknown failure")
        if isinstance(error, ClientError):
            if error.message:
                self.output.err(f"sysadm-dispatch: {error.message}")
            self.finished.callback(error.code)
        else:
            self.finished.errback(error)
