"""
The server's own log under ``twistd``: text as twistd writes it, or JSON
lines (``--log-format json``) with ``time``, ``level``, ``event`` (the
message) and the structured fields of each event, for journald and log
shippers.  The log file is ours rather than twistd's so that SIGHUP can
reopen it after an external rotation (logrotate).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import FileLogObserver, LogLevel, formatEvent, textFileLogObserver
from twisted.python.logfile import LogFile

FORMATS = ("text", "json")
#: Keys of legacy (``twisted.python.log``) events that are not fields.
_LEGACY_KEYS = frozenset(("message", "isError", "system", "time", "format", "why", "failure", "printed"))
_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is JSON as it stands (no object whose text could be anything)."""
    if isinstance(value, _PLAIN):
        return True
    if depth > 4:
        return False
    if isinstance(value, list | tuple):
        return all(_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def event_as_json_line(event: dict[str, Any]) -> str:
    """One log event as one line of JSON."""
    level = event.get("log_level")
    when = event.get("log_time")
    line: dict[str, Any] = {
        "time": (datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
                 if isinstance(when, int | float) else None),
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "event": formatEvent(event),
    }
    namespace = event.get("log_namespace")
    if isinstance(namespace, str):
        line["namespace"] = namespace
    system = event.get("log_system")
    if isinstance(system, str) and system != "-":
        line["system"] = system
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in line:
            continue
        # Only plain values: an object's repr is neither a field nor safe to print.
        if _plain(value):
            line[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        try:
            line["traceback"] = failure.getTraceback()
        except Exception:
            line["traceback"] = "(the traceback could not be formatted)"
    return json.dumps(line, ensure_ascii=False, default=str) + "\n"


class ServerLog:
    """The destination and format of the log of a server run by ``twistd``."""

    def __init__(self, log_format: str, logfile: str, nodaemon: bool) -> None:
        self.format = log_format
        self.file: IO[str] | LogFile
        if logfile == "-" or (not logfile and nodaemon):
            self.file = sys.stdout
            self.logfile: LogFile | None = None
        else:
            # As twistd's own: rotated at 1 MB and on SIGUSR1, unless an
            # external rotation is set up (then SIGHUP reopens the file).
            self.logfile = LogFile.fromFullPath(logfile or "twistd.log")
            self.file = self.logfile

    def observer(self) -> Any:
        if self.format == "json":
            return FileLogObserver(self.file, event_as_json_line)  # type: ignore[arg-type]
        return textFileLogObserver(self.file)  # type: ignore[arg-type]

    def reopen(self) -> None:
        """Reopen the log file (after logrotate moved it away); nothing for standard output."""
        if self.logfile is not None:
            self.logfile.reopen()
