"""The client's own exit codes (docs/cli.rst) and the error that carries one."""

from __future__ import annotations

OK = 0
NOT_FOUND = 1
USAGE = 2
SOFTWARE = 70
UNAVAILABLE = 69
DROPPED = 75
NO_PERMISSION = 77
INTERRUPTED = 130


class ClientError(Exception):
    """Ends the client: ``message`` goes to stderr as one line, ``code`` is the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RemoteError(ClientError):
    """An error reply from the server, mapped to the client's exit code."""

    def __init__(self, status: int, message: str, detail: str) -> None:
        self.status = status
        self.detail = detail
        text = f"{detail} ({status} {message})" if detail else f"{status} {message}"
        super().__init__(exit_code_for_status(status), f"the server refused: {text}")


def exit_code_for_status(status: int) -> int:
    """The client's exit code for a server's error code."""
    if status in (401, 403):
        return NO_PERMISSION
    if status == 404:
        return NOT_FOUND
    if status == 503:
        return DROPPED
    if 400 <= status < 500:
        return USAGE
    return SOFTWARE
