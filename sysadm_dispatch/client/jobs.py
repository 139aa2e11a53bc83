"""
A job as the client sees it through events: its exit code, and what of its
output is new (pure; docs/cli.rst, "Exit codes").
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TIMED_OUT = 124
JOB_FAILED = 1


def signal_number(name: Any) -> int | None:
    """The number of a signal named as the server names it (``"SIGTERM"``, ``"SIG40"``), else None."""
    if not isinstance(name, str):
        return None
    try:
        return int(signal.Signals[name])
    except KeyError:
        match = re.fullmatch(r"SIG(\d+)", name)
        return int(match.group(1)) if match else None


def return_codes(record: Mapping[str, Any]) -> list[int]:
    """The exit codes of the commands that ended, in chain order."""
    details = record.get("process_details") or {}
    codes = []
    for command in details.get("cmd_list") or []:
        value = details.get(f"return_codes/{command}")
        try:
            codes.append(int(str(value)))
        except (TypeError, ValueError):
            continue
    return codes


def exit_code(record: Mapping[str, Any]) -> int:
    """
    The exit code the client ends with for a finished job: 124 when it timed
    out; 128+N when something stopped it with signal N; else the code of the
    command that failed, or of the last one.
    """
    if record.get("timed_out"):
        return TIMED_OUT
    codes = return_codes(record)
    failed = next((code for code in codes if code != 0), None)
    if record.get("killed") or record.get("interrupted"):
        number = signal_number(record.get("signal"))
        if number is not None:
            return 128 + number
        if failed is not None:
            return failed
        # Killed before it started, or its command ignored SIGTERM and
        # exited 0: it still did not finish by itself.
        return 128 + int(signal.SIGTERM) if record.get("killed") else JOB_FAILED
    if failed is not None:
        return failed
    if record.get("success") == "false":
        return JOB_FAILED
    return codes[-1] if codes else 0


def outcome(record: Mapping[str, Any]) -> str:
    """One word for how a finished job ended (or its state, for a job not finished yet)."""
    if record.get("state") in ("pending", "running"):
        return str(record["state"])
    if record.get("timed_out"):
        return "timed-out"
    if record.get("killed"):
        return "killed"
    if record.get("interrupted"):
        return "interrupted"
    return "ok" if record.get("success") == "true" else "failed"


def new_job_id(host: str | None = None, now: float | None = None) -> str:
    """A readable, unique job id: ``cli-<host>-<YYYYmmdd-HHMMSS>-<random>``."""
    name = (host or socket.gethostname()).split(".")[0] or "host"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"cli-{name}-{stamp}-{secrets.token_hex(3)}"


@dataclass
class Piece:
    """Something to print: output of command ``index`` (stdout) or a header line (stderr)."""

    text: str
    index: int
    header: bool = False


class OutputTracker:
    """
    Turns one job's events into what to print, once each: the output
    carried by ``running`` updates as it arrives, and at the end whatever of
    each command's final log has not been printed yet.  ``attached_at``
    is the index of the command already running when the client attached
    (``follow``); earlier commands are not replayed.
    """

    def __init__(self, job_id: str, headers: bool = True, attached_at: int = 0) -> None:
        self.job_id = job_id
        self.headers = headers
        self.attached_at = attached_at
        self.printed: dict[int, str] = {}
        self.headed: set[int] = set()
        self.commands: list[str] = []

    def _header(self, index: int) -> list[Piece]:
        if not self.headers or len(self.commands) < 2 or index in self.headed:
            return []
        self.headed.add(index)
        return [Piece(f"==> [{index + 1}/{len(self.commands)}] {self.commands[index]}", index, header=True)]

    def _running_index(self, details: Mapping[str, Any]) -> int:
        """Index of the command running (or last to run): commands end in chain order."""
        ended = sum(1 for c in self.commands if f"return_codes/{c}" in details)
        return min(ended, len(self.commands) - 1)

    def _indexes(self, details: Mapping[str, Any]) -> list[int]:
        """
        Indexes of the commands with output in ``details``.  A command
        repeated in a chain has one key for all its runs: it counts as the
        latest of them that has started.
        """
        running = self._running_index(details)
        indexes = []
        for index, command in enumerate(self.commands):
            if command in self.commands[:index] or not isinstance(details.get(command), str):
                continue
            started = [i for i, c in enumerate(self.commands) if c == command and i <= running]
            indexes.append(started[-1] if started else index)
        return sorted(indexes)

    def feed(self, args: Mapping[str, Any]) -> list[Piece]:
        details = args.get("process_details") or {}
        if not self.commands:
            self.commands = [c for c in details.get("cmd_list") or [] if isinstance(c, str)]
        state = args.get("state")
        pieces: list[Piece] = []
        if state == "running":
            current = details.get("current_cmd")
            for index in self._indexes(details):
                text = details[self.commands[index]]
                if text:
                    pieces += self._header(index)
                    self.printed[index] = self.printed.get(index, "") + text
                    pieces.append(Piece(text, index))
            if isinstance(current, str) and current in self.commands:
                once = self.commands.count(current) == 1
                pieces += self._header(self.commands.index(current) if once else self._running_index(details))
        elif state == "finished":
            for index in self._indexes(details):
                if index < self.attached_at:
                    continue
                final = details[self.commands[index]]
                rest = self._unprinted(final, self.printed.get(index, ""))
                if rest:
                    pieces += self._header(index)
                    self.printed[index] = self.printed.get(index, "") + rest
                    pieces.append(Piece(rest, index))
        return pieces

    @staticmethod
    def _unprinted(final: str, printed: str) -> str:
        if not printed:
            return final
        if final.startswith(printed):
            return final[len(printed):]
        # Attached late, or the server cut a long log in its middle: what
        # follows the end of what was printed.
        for size in (256, 64, 16):
            anchor = printed[-size:]
            at = final.rfind(anchor)
            if at >= 0:
                return final[at + len(anchor):]
        return ""


def env_pairs(pairs: list[str]) -> dict[str, str]:
    """``K=V`` strings as a dict; ``K`` alone takes the value from the client's environment."""
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not name:
            raise ValueError(f"--env {pair!r}: the variable has no name")
        if not sep:
            if name not in os.environ:
                raise ValueError(f"--env {name}: not set here, and no value given (use {name}=VALUE)")
            value = os.environ[name]
        env[name] = value
    return env
