"""The client's subcommands; each returns its exit code (docs/cli.rst)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from twisted.internet.defer import Deferred

from . import format as fmt
from .connection import Connection, ConnectionDropped
from .errors import DROPPED, INTERRUPTED, NOT_FOUND, OK, ClientError, RemoteError
from .jobs import OutputTracker, exit_code, new_job_id
from .session import LineReader, Session


def follow_again(job_id: str) -> str:
    return f"sysadm-dispatch follow {job_id}"


class Follower:
    """
    Prints one job's events as they come and fires ``done`` with its
    finished record; Ctrl-C kills it or detaches (docs/cli.rst, "Ctrl-C").
    """

    def __init__(self, session: Session, connection: Connection, job_id: str, as_json: bool,
                 kill_on_interrupt: bool) -> None:
        self.session = session
        self.output = session.output
        self.connection = connection
        self.job_id = job_id
        self.as_json = as_json
        self.kill_on_interrupt = kill_on_interrupt
        self.tracker = OutputTracker(job_id)
        self.done: Deferred[dict[str, Any]] = Deferred()
        self.buffered: list[dict[str, Any]] | None = []
        self.asking: LineReader | None = None
        self.killing = False
        connection.on_event(self.event)
        connection.when_lost().addCallback(self.lost)
        session.on_interrupt = self.interrupted

    def event(self, args: dict[str, Any]) -> None:
        if args.get("process_id") != self.job_id or self.done.called:
            return
        if self.buffered is not None:
            self.buffered.append(args)
            return
        self.show(args)

    def start(self, tracker: OutputTracker | None = None) -> None:
        """Print from now on, starting with the events that came before."""
        if tracker is not None:
            self.tracker = tracker
        buffered, self.buffered = self.buffered or [], None
        for args in buffered:
            if not self.done.called:
                self.show(args)

    def finished_before(self) -> dict[str, Any] | None:
        return next((args for args in self.buffered or [] if args.get("state") == "finished"), None)

    def show(self, args: dict[str, Any]) -> None:
        if self.as_json:
            self.output.json(args)
        else:
            for piece in self.tracker.feed(args):
                if piece.header:
                    self.output.err(fmt.paint(piece.text, "header", self.output.err_colour))
                else:
                    self.output.out(piece.text)
        if args.get("state") == "finished":
            if self.asking is not None:
                self.asking.stop()
            self.done.callback(args)

    def lost(self, reason: str) -> None:
        if not self.done.called:
            self.done.errback(ClientError(
                DROPPED, f"the connection to the server dropped ({reason}); the job may still be running. "
                         f"Follow it again: {follow_again(self.job_id)}"))

    # Ctrl-C.

    def interrupted(self) -> None:
        if self.done.called:
            return
        if self.asking is not None or self.killing:
            # A second Ctrl-C: leave.
            if self.asking is not None:
                self.asking.stop()
            self.detach()
        elif self.kill_on_interrupt:
            self.kill()
        elif self.session.terminal:
            self.ask()
        else:
            self.detach()

    def ask(self) -> None:
        self.output.err("")
        self.output.err(f"Kill job {self.job_id}? [y/N] (Ctrl-C again to detach) ")
        self.output.hold()
        self.asking = LineReader(self.session.reactor, self.answered)
        self.asking.start()

    def answered(self, line: str | None) -> None:
        self.asking = None
        self.output.release()
        if self.done.called:
            return
        if line is not None and line.strip().lower() in ("y", "yes"):
            self.kill()
        elif line is not None:
            self.detach()

    def kill(self) -> None:
        self.killing = True
        self.output.err(f"killing job {self.job_id} (Ctrl-C again to stop waiting)")
        d = self.connection.call("dispatcher", {"action": "kill", "job_id": [self.job_id]})

        def failed(failure: Any) -> None:
            if not self.done.called and failure.check(ClientError):
                self.done.errback(failure.value)

        d.addErrback(failed)

    def detach(self) -> None:
        if self.done.called:
            return
        self.output.release()
        self.done.errback(ClientError(
            INTERRUPTED, f"detached; job {self.job_id} goes on. Follow it again: {follow_again(self.job_id)}"))


async def run(session: Session, connection: Connection, args: argparse.Namespace) -> int:
    job_id = args.id or new_job_id()
    job: dict[str, Any] = {"id": job_id, "commands": list(args.commands)}
    for key in ("queue", "cwd", "timeout"):
        if getattr(args, key) is not None:
            job[key] = getattr(args, key)
    if args.env:
        job["env"] = args.env
    follower = None
    if not args.detach:
        follower = Follower(session, connection, job_id, args.json, args.kill_on_interrupt)
        await connection.call("subscribe", ["dispatcher"], namespace="events")
    reply = await connection.call("dispatcher", {"action": "run", "jobs": [job]})
    if follower is None:
        if args.json:
            session.output.json(reply)
        else:
            session.output.line(job_id)
        return OK
    follower.start()
    record = await follower.done
    return exit_code(record)


async def follow(session: Session, connection: Connection, args: argparse.Namespace) -> int:
    job_id = args.job_id
    follower = Follower(session, connection, job_id, args.json, args.kill_on_interrupt)
    await connection.call("subscribe", ["dispatcher"], namespace="events")
    reply = await connection.call("dispatcher", {"action": "list"}) or {}
    jobs = reply.get("jobs") if isinstance(reply, dict) else None
    entry = next((queue[job_id] for queue in (jobs or {}).values()
                  if isinstance(queue, dict) and job_id in queue), None)
    if entry is None:
        record = follower.finished_before()
        if record is None:
            try:
                record = await connection.call("logs", {"action": "job", "job_id": job_id})
            except RemoteError as e:
                if e.status == 404:
                    raise ClientError(NOT_FOUND, f"no job {job_id}: it is not pending, not running, "
                                                 "and has no history") from None
                raise
        if not session_quiet(args):
            session.output.err(f"job {job_id} has finished; its log:")
        follower.buffered = None
        follower.show(dict(record, state="finished"))
        return exit_code(record)
    commands = entry.get("commands") or []
    current = entry.get("current_cmd")
    attached_at = commands.index(current) if current in commands else 0
    if not session_quiet(args):
        if entry.get("state") == "running":
            session.output.err(f"following job {job_id} (running since {fmt.short_time(entry.get('time_started'))}"
                               f"{', now ' + repr(current) if current else ''}): output from now on")
        else:
            position = entry.get("queue_position")
            where = f" at position {position}" if position else ""
            session.output.err(f"following job {job_id} (pending in {entry.get('queue', '?')}{where})")
    follower.start(OutputTracker(job_id, attached_at=attached_at))
    record = await follower.done
    return exit_code(record)


def session_quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


async def list_jobs(session: Session, connection: Connection, args: argparse.Namespace) -> int:
    jobs = await connection.call("dispatcher", {"action": "list"}) or {}
    jobs = jobs.get("jobs", {}) if isinstance(jobs, dict) else {}
    if args.queue is not None:
        jobs = {name: entries for name, entries in jobs.items() if name == args.queue}
    if args.json:
        session.output.json(jobs)
        return OK
    rows = fmt.list_rows(jobs)
    if not rows:
        session.output.err("no pending or running jobs" + (f" in {args.queue}" if args.queue else ""))
        return OK
    header = ["QUEUE", "ID", "STATE", "POS", "STARTED", "COMMAND"]
    for line in fmt.table(header, rows, colour_column=2, colour=session.output.colour):
        session.output.line(line)
    return OK


async def kill(session: Session, connection: Connection, args: argparse.Namespace) -> int:
    reply = await connection.call("dispatcher", {"action": "kill", "job_id": list(args.job_ids)})
    killed = (reply or {}).get("killed") or {}
    done = [str(j) for j in killed.get("jobs") or []]
    missing = killed.get("not_found")
    if not isinstance(missing, list):
        missing = [j for j in args.job_ids if j not in done]
    if args.json:
        session.output.json({"jobs": done, "not_found": missing})
    else:
        for job_id in done:
            session.output.line(f"killed {job_id}")
        for job_id in missing:
            session.output.err(f"sysadm-dispatch: no pending or running job {job_id}")
    return NOT_FOUND if missing else OK


async def logs(session: Session, connection: Connection, args: argparse.Namespace) -> int:
    if args.id is not None:
        try:
            record = await connection.call("logs", {"action": "job", "job_id": args.id})
        except RemoteError as e:
            if e.status == 404:
                raise ClientError(NOT_FOUND, f"no history for job {args.id}") from None
            raise
        if args.json:
            session.output.json(record)
        else:
            for line in fmt.record_lines(record):
                session.output.line(line)
        return OK
    request: dict[str, Any] = {"action": "read_logs", "logs": "dispatcher"}
    if args.since is not None or args.until is not None:
        request["time_format"] = "relative_second"
        if args.since is not None:
            request["start_time"] = str(-args.since)
        if args.until is not None:
            request["end_time"] = str(-args.until)
    if args.limit is not None:
        request["limit"] = args.limit
    reply = await connection.call("logs", request) or {}
    records = reply.get("dispatcher") or {}
    if args.failed:
        records = {key: r for key, r in records.items() if isinstance(r, dict) and r.get("success") != "true"}
    if args.json:
        session.output.json({"dispatcher": records, **({"truncated": True} if reply.get("truncated") else {})})
        return OK
    rows = fmt.logs_rows(records)
    if rows:
        header = ["FINISHED", "ID", "QUEUE", "OUTCOME", "TOOK", "COMMAND"]
        for line in fmt.table(header, rows, colour_column=3, colour=session.output.colour):
            session.output.line(line)
    else:
        session.output.err("no finished jobs in that period")
    if reply.get("truncated"):
        session.output.err("more jobs finished in that period: raise --limit, or use --until for earlier ones")
    return OK


async def watch(session: Session, connection: Connection, args: argparse.Namespace) -> int:
    trackers: dict[str, OutputTracker] = {}
    ended: Deferred[int] = Deferred()

    def event(message: dict[str, Any]) -> None:
        if args.json:
            session.output.json(message)
            return
        job_id = str(message.get("process_id", "?"))
        tracker = trackers.setdefault(job_id, OutputTracker(job_id, headers=False))
        text = "".join(piece.text for piece in tracker.feed(message) if not piece.header)
        if message.get("state") == "finished":
            trackers.pop(job_id, None)
        clock = time.strftime("%H:%M:%S")
        for line in fmt.event_lines(message, text, clock, session.output.colour):
            session.output.line(line)

    def lost(reason: str) -> None:
        if not ended.called:
            ended.errback(ConnectionDropped(reason))

    def interrupted() -> None:
        if not ended.called:
            ended.callback(OK)

    connection.on_event(event)
    connection.when_lost().addCallback(lost)
    session.on_interrupt = interrupted
    await connection.call("subscribe", ["dispatcher"], namespace="events")
    session.output.err("watching every job's events (Ctrl-C to stop)")
    return await ended
