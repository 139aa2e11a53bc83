"""How the client shows things to people: durations, times, tables, colour (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .jobs import exit_code, outcome

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")

COLOURS = {
    "running": "32",      # green
    "pending": "33",      # yellow
    "ok": "32",
    "failed": "31",       # red
    "killed": "35",       # magenta
    "timed-out": "35",
    "interrupted": "35",
    "header": "1",        # bold
}


def parse_duration(text: str) -> float:
    """
    Seconds in ``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``1w`` or sums such
    as ``1h30m``; a ValueError naming what is wrong otherwise.
    """
    spec = text.strip().lower()
    total = 0.0
    at = 0
    while at < len(spec):
        match = _PART.match(spec, at)
        if match is None:
            raise ValueError(f"invalid duration {text!r}: use a number with s, m, h, d or w, such as 90s, 2h, 1d")
        total += float(match.group(1)) * _UNITS[match.group(2) or "s"]
        at = match.end()
    if at == 0:
        raise ValueError(f"invalid duration {text!r}: it is empty")
    return total


def human_duration(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``2h07m``, ``3d04h``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def parse_time(text: Any) -> datetime | None:
    """An ISO 8601 time from the server (history keys may carry ``#2``), or None."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.split("#", 1)[0])
    except ValueError:
        return None


def short_time(text: Any, today: datetime | None = None) -> str:
    """A server time in the client's local time: ``HH:MM:SS`` today, else ``YYYY-mm-dd HH:MM``."""
    moment = parse_time(text)
    if moment is None:
        return "-"
    if moment.tzinfo is not None:
        moment = moment.astimezone()
    now = today or datetime.now()
    if moment.date() == now.date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def paint(text: str, key: str, colour: bool) -> str:
    code = COLOURS.get(key)
    if not colour or code is None:
        return text
    return f"\x1b[{code}m{text}\x1b[0m"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], colour_column: int | None = None,
          colour: bool = False) -> list[str]:
    """Rows aligned in columns (the last one left ragged); one column may be coloured by its value."""
    rows = [list(row) for row in rows]
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]
    lines = []
    for n, row in enumerate([list(header), *rows]):
        cells = []
        for i, cell in enumerate(row):
            padded = cell if i == len(row) - 1 else cell.ljust(widths[i])
            if n > 0 and i == colour_column:
                padded = paint(cell, cell, colour) + padded[len(cell):]
            cells.append(padded)
        lines.append("  ".join(cells).rstrip())
    return lines


def one_line(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def list_rows(jobs: Mapping[str, Any], queue: str | None = None) -> list[list[str]]:
    """The rows of ``list``: queue, id, state, position, started, running command."""
    rows = []
    for queue_name in sorted(jobs):
        if queue is not None and queue_name != queue:
            continue
        entries = jobs[queue_name] or {}

        def order(item: tuple[str, Any]) -> tuple[int, int, str]:
            job_id, entry = item
            position = entry.get("queue_position")
            running = 0 if entry.get("state") == "running" else 1
            return (running, int(position) if str(position).isdigit() else 0, str(entry.get("time_queued", "")))

        for job_id, entry in sorted(entries.items(), key=order):
            commands = entry.get("commands") or []
            command = entry.get("current_cmd") or (commands[0] if commands else "")
            rows.append([
                queue_name,
                job_id,
                str(entry.get("state", "?")),
                str(entry.get("queue_position", "-")),
                short_time(entry.get("time_started")),
                one_line(str(command)),
            ])
    return rows


def record_duration(record: Mapping[str, Any]) -> float | None:
    details = record.get("process_details") or {}
    started = parse_time(details.get("time_started"))
    finished = parse_time(details.get("time_finished"))
    if started is None or finished is None:
        return None
    return max(0.0, (finished - started).total_seconds())


def _history_order(key: str) -> tuple[float, int]:
    """History keys by time; of equal times, ``#2`` finished after the plain one."""
    moment = parse_time(key)
    _, _, n = key.partition("#")
    return (moment.timestamp() if moment else 0.0, int(n) if n.isdigit() else 1)


def logs_rows(records: Mapping[str, Any]) -> list[list[str]]:
    """The rows of ``logs``, newest first: finished, id, queue, outcome (exit code), duration, first command."""
    rows = []
    for key in sorted(records, key=_history_order, reverse=True):
        record = records[key]
        if not isinstance(record, Mapping):
            continue
        details = record.get("process_details") or {}
        commands = details.get("cmd_list") or []
        duration = record_duration(record)
        word = outcome(record)
        rows.append([
            short_time(key),
            str(record.get("process_id", "?")),
            str(record.get("queue", "-")),
            word if word == "ok" else f"{word}({exit_code(record)})",
            human_duration(duration) if duration is not None else "-",
            one_line(str(commands[0])) if commands else "",
        ])
    return rows


def record_lines(record: Mapping[str, Any]) -> list[str]:
    """A finished job in full: what it was, how it ended, and each command with its exit code and output."""
    details = record.get("process_details") or {}
    duration = record_duration(record)
    lines = [
        f"job           {record.get('process_id', '?')}",
        f"queue         {record.get('queue', '-')}",
        f"outcome       {outcome(record)}" + (f" (exit code {exit_code(record)})" if record.get("state", "finished")
                                                 == "finished" else ""),
        f"started       {details.get('time_started', '-')}",
        f"finished      {details.get('time_finished', '-')}",
        f"duration      {human_duration(duration) if duration is not None else '-'}",
    ]
    if record.get("signal"):
        lines.append(f"signal        {record['signal']}")
    if record.get("submitted_by"):
        lines.append(f"submitted by  {record['submitted_by']}")
    if record.get("killed_by"):
        lines.append(f"killed by     {record['killed_by']}")
    shown: set[str] = set()
    for command in details.get("cmd_list") or []:
        if command in shown:
            continue
        shown.add(command)
        code = details.get(f"return_codes/{command}")
        lines.append("")
        lines.append(f"$ {command}" + (f"  (exit {code})" if code is not None else "  (not run)"))
        output = details.get(command)
        if isinstance(output, str) and output:
            lines.extend(output.rstrip("\n").split("\n"))
    return lines


def event_lines(args: Mapping[str, Any], new_output: str, clock: str, colour: bool) -> list[str]:
    """One event for ``watch``: time, id, state, queue, then its new output indented."""
    state = str(args.get("state", "?"))
    details = args.get("process_details") or {}
    head = [clock, str(args.get("process_id", "?")), paint(state, state, colour), str(args.get("queue", "-"))]
    if state == "finished":
        word = outcome(args)
        head.append(paint(word, word, colour) + f" exit={exit_code(args)}")
    elif state == "running" and details.get("current_cmd"):
        head.append(one_line(str(details["current_cmd"])))
    lines = ["  ".join(head)]
    if new_output:
        lines.extend("    " + line for line in new_output.rstrip("\n").split("\n"))
    return lines
