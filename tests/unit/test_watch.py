"""The output reader of a command's pipe: reads what is there, and grows the pipe only for a flood."""

from __future__ import annotations

import fcntl
import os

from twisted.internet.task import Clock


class ReaderlessClock(Clock):
    """A Clock that never reads by itself: whatever is read, the code under test read."""

    def addReader(self, reader: object) -> None:
        pass

    def removeReader(self, reader: object) -> None:
        pass

    def removeWriter(self, writer: object) -> None:
        pass


def test_output_pipe_grows_only_for_a_command_that_fills_it() -> None:
    from sysadm_dispatch.process.spawn import open_output_pipe
    from sysadm_dispatch.process.watch import PIPE_SIZE, OutputReader

    Reactor = ReaderlessClock

    sizes = {}
    for name, amount in (("quiet", 100), ("flood", 1 << 16)):
        read_fd, write_fd = open_output_pipe()
        got: list[bytes] = []
        reader = OutputReader(Reactor(), read_fd, got.append, lambda: None)
        try:
            os.write(write_fd, b"x" * amount)
            reader.doRead()
            assert b"".join(got) == b"x" * amount
            sizes[name] = fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ)
        finally:
            os.close(write_fd)
            reader.close()
    assert sizes == {"quiet": 1 << 16, "flood": PIPE_SIZE}


def test_a_transport_reads_its_pipe_to_the_end_before_telling_the_exit() -> None:
    from twisted.internet.protocol import ProcessProtocol

    from sysadm_dispatch.process.backends import PipedProcess
    from sysadm_dispatch.process.spawn import open_output_pipe

    Reactor = ReaderlessClock

    told: list[tuple[str, object]] = []

    class Recorder(ProcessProtocol):
        def childDataReceived(self, childFD: int, data: bytes) -> None:
            told.append(("data", data))

        def processExited(self, reason: object) -> None:
            told.append(("exited", type(reason.value).__name__))  # type: ignore[attr-defined]

        def processEnded(self, reason: object) -> None:
            told.append(("ended", type(reason.value).__name__))  # type: ignore[attr-defined]

    read_fd, write_fd = open_output_pipe()
    process = PipedProcess(Reactor(), Recorder(), read_fd)  # type: ignore[arg-type]
    os.write(write_fd, b"last words\n")
    os.close(write_fd)
    process.exited(0)
    assert told == [("data", b"last words\n"), ("exited", "ProcessDone"), ("ended", "ProcessDone")]
    assert not process.reader.open
