"""
Reaching a fleet: one WAMP session to the router (``--router``), a
``Connection`` per host on it, and the commands run on several hosts at
once (docs/fleet.rst, docs/cli.rst).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList

from .config import check_url, read_password_file
from .connection import ConnectionDropped, EventHandler, _reason_text
from .errors import NO_PERMISSION, OK, UNAVAILABLE, USAGE, ClientError, RemoteError
from .session import Output

if TYPE_CHECKING:
    from ..reactors import IClientReactor

REALM = "sysadm"
_HOST = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class RouterTarget:
    """A router and the principal to join it as: by ticket or by WAMP-CRA secret."""

    url: str
    authid: str
    ticket: str | None = None
    secret: str | None = None
    realm: str = REALM


def resolve_router(args: argparse.Namespace, env: Mapping[str, str], config: Mapping[str, str]) -> RouterTarget | None:
    """The router to use (flags, then environment, then the config file), or None for a direct connection."""
    url = args.router or env.get("SYSADM_DISPATCH_ROUTER") or config.get("router")
    if not url:
        if args.host or args.all:
            raise ClientError(USAGE, "--host and --all need a router: --router URL or SYSADM_DISPATCH_ROUTER")
        return None
    check_url(url)
    authid = args.router_user or env.get("SYSADM_DISPATCH_ROUTER_USER") or config.get("router_user")
    if not authid:
        raise ClientError(USAGE, "a router needs a principal: --router-user NAME or SYSADM_DISPATCH_ROUTER_USER")
    ticket = secret = None
    if args.router_ticket_file:
        ticket = read_password_file(args.router_ticket_file)
    elif args.router_secret_file:
        secret = read_password_file(args.router_secret_file)
    elif env.get("SYSADM_DISPATCH_ROUTER_TICKET"):
        ticket = env["SYSADM_DISPATCH_ROUTER_TICKET"]
    elif env.get("SYSADM_DISPATCH_ROUTER_SECRET"):
        secret = env["SYSADM_DISPATCH_ROUTER_SECRET"]
    elif config.get("router_ticket_file"):
        ticket = read_password_file(os.path.expanduser(config["router_ticket_file"]))
    elif config.get("router_secret_file"):
        secret = read_password_file(os.path.expanduser(config["router_secret_file"]))
    else:
        raise ClientError(USAGE, "a router needs a ticket or a WAMP-CRA secret: --router-ticket-file, "
                                 "--router-secret-file, SYSADM_DISPATCH_ROUTER_TICKET or SYSADM_DISPATCH_ROUTER_SECRET")
    for host in args.host or []:
        if not _HOST.match(host):
            raise ClientError(USAGE, f"--host {host!r}: a host name has letters, digits, '-' and '_'")
    return RouterTarget(url, authid, ticket, secret)


class RouterLink:
    """One joined session to the router, shared by the host connections on it."""

    def __init__(self, reactor: IClientReactor, target: RouterTarget) -> None:
        self.reactor = reactor
        self.target = target
        self.session: Any = None
        self._lost: list[Deferred[str]] = []
        self._closing = False
        self._done: Deferred[Any] | None = None

    async def join(self) -> None:
        from autobahn.twisted.component import Component

        target = self.target
        auth = ({"ticket": {"authid": target.authid, "ticket": target.ticket}} if target.ticket is not None
                else {"wampcra": {"authid": target.authid, "secret": target.secret}})
        component = Component(transports=[{"url": target.url, "max_retries": 0}], realm=target.realm,
                              authentication=auth)
        joined: Deferred[Any] = Deferred()
        problems: list[str] = []

        def on_join(session: Any, details: Any) -> None:
            if not joined.called:
                joined.callback(session)

        def on_leave(session: Any, details: Any) -> None:
            reason = getattr(details, "message", None) or getattr(details, "reason", None) or "left"
            problems.append(str(reason))
            if not joined.called:
                code = NO_PERMISSION if "auth" in str(details).lower() or "principal" in str(reason) else UNAVAILABLE
                joined.errback(ClientError(code, f"the router {target.url} refused {target.authid}: {reason}"))
            elif not self._closing:
                for d in self._lost:
                    if not d.called:
                        d.callback(f"the router connection ended: {reason}")

        def on_failure(component: Any, error: Any) -> None:
            problems.append(_reason_text(error))

        component.on("join", on_join)
        component.on("leave", on_leave)
        component.on("connectfailure", on_failure)
        self._done = component.start(self.reactor)

        def ended(result: Any) -> Any:
            if not joined.called:
                why = "; ".join(problems) or "the connection failed"
                joined.errback(ClientError(UNAVAILABLE, f"cannot join the router {target.url}: {why}"))
            return None

        self._done.addBoth(ended)
        timeout = self.reactor.callLater(15, lambda: None if joined.called else joined.errback(
            ClientError(UNAVAILABLE, f"cannot join the router {target.url}: no answer within 15 seconds")))
        try:
            self.session = await joined
        finally:
            if timeout.active():
                timeout.cancel()

    def when_lost(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self._lost.append(d)
        return d

    async def hosts(self) -> list[dict[str, Any]]:
        from autobahn.wamp.exception import ApplicationError

        """The hosts online: their sessions' authid, with the session id and where they joined from."""
        ids = await self.session.call("wamp.session.list", ["agent"])
        found = []
        for session_id in ids or []:
            try:
                info = await self.session.call("wamp.session.get", session_id)
            except ApplicationError as e:
                if e.error == "wamp.error.no_such_session":
                    continue  # it left meanwhile
                raise
            if info.get("authrole") == "agent":
                extra = info.get("authextra") or {}
                found.append({"host": info.get("authid"), "session": session_id,
                              "peer": extra.get("x_cb_peer") if isinstance(extra, dict) else None})
        return sorted(found, key=lambda h: str(h["host"]))

    async def close(self) -> None:
        self._closing = True
        if self.session is not None and self.session.is_attached():
            self.session.leave()
        if self._done is not None and not self._done.called:
            await self._done


class HostConnection:
    """``Connection`` to one host through the router."""

    def __init__(self, link: RouterLink, host: str) -> None:
        self.link = link
        self.host = host
        self._handlers: list[EventHandler] = []
        self._subscribed = False

    def call(self, name: str, args: Any, namespace: str = "rpc") -> Deferred[Any]:
        return Deferred.fromCoroutine(self._call(name, args, namespace))

    async def _call(self, name: str, args: Any, namespace: str) -> Any:
        from autobahn.wamp.exception import ApplicationError, TransportLost

        session = self.link.session
        if namespace == "events" and name == "subscribe":
            if not self._subscribed:
                self._subscribed = True
                await session.subscribe(self._event, f"sysadm.{self.host}.events")
            return {"subscribe": "dispatcher"}
        try:
            return await session.call(f"sysadm.{self.host}.rpc", {"namespace": namespace, "name": name, "args": args})
        except ApplicationError as e:
            if e.error == "sysadm.error":
                raise RemoteError(int(e.kwargs.get("code") or 500), str(e.kwargs.get("message", "error")),
                                  str(e.kwargs.get("detail", ""))) from None
            if e.error == "wamp.error.no_such_procedure":
                raise ClientError(UNAVAILABLE, f"host {self.host} is not online on the router") from None
            if e.error == "wamp.error.not_authorized":
                raise ClientError(NO_PERMISSION, f"the router does not let {self.link.target.authid} call "
                                                 f"{self.host}") from None
            raise ClientError(UNAVAILABLE, f"host {self.host}: {e.error_message()}") from None
        except TransportLost:
            raise ConnectionDropped("the router connection ended") from None

    def _event(self, args: Any = None, *rest: Any, **kwargs: Any) -> None:
        if isinstance(args, dict):
            for handler in list(self._handlers):
                handler(args)

    def on_event(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def when_lost(self) -> Deferred[str]:
        return self.link.when_lost()

    def close(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d


class PrefixedOutput(Output):
    """What one host's command writes, each line of standard output prefixed with the host."""

    def __init__(self, parent: Output, host: str, width: int) -> None:
        self.parent = parent
        self.prefix = f"{host:<{width}} | "
        self.colour = parent.colour
        self.err_colour = parent.err_colour
        self.broken = False
        self.held = None
        self._partial = ""

    def out(self, text: str) -> None:
        text = self._partial + text
        lines = text.split("\n")
        self._partial = lines.pop()
        if lines:
            self.parent.out("".join(f"{self.prefix}{line}\n" for line in lines))

    def flush(self) -> None:
        if self._partial:
            partial, self._partial = self._partial, ""
            self.parent.out(f"{self.prefix}{partial}\n")

    def err(self, text: str) -> None:
        self.parent.err(f"{self.prefix}{text}")

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


Command = Callable[[Any, Any, argparse.Namespace], Awaitable[int]]


async def chosen_hosts(link: RouterLink, args: argparse.Namespace) -> list[str]:
    if args.all:
        hosts = [str(h["host"]) for h in await link.hosts()]
        if not hosts:
            raise ClientError(UNAVAILABLE, "no host is online on the router")
        return hosts
    return list(dict.fromkeys(args.host))


async def on_hosts(session: Any, link: RouterLink, hosts: list[str], command: Command,
                   args: argparse.Namespace) -> int:
    """``command`` on every host at once, each with its output prefixed; the worst exit code."""
    from .session import Session

    width = max(len(h) for h in hosts)
    codes: dict[str, int] = {}

    async def one(host: str) -> None:
        output = PrefixedOutput(session.output, host, width)
        own = Session(session.reactor, output, terminal=False)
        try:
            codes[host] = await command(own, HostConnection(link, host), args)
        except ClientError as e:
            output.flush()
            output.err(f"sysadm-dispatch: {e.message}")
            codes[host] = e.code
        output.flush()

    await DeferredList([Deferred.fromCoroutine(one(h)) for h in hosts], consumeErrors=True)
    return max(codes.values(), default=OK)


async def list_hosts(session: Any, link: RouterLink, args: argparse.Namespace) -> int:
    from . import format as fmt

    hosts = await link.hosts()
    if getattr(args, "json", False):
        session.output.json(hosts)
        return OK
    if not hosts:
        session.output.err("no host is online on the router")
        return OK
    rows = [[str(h["host"]), str(h["peer"] or "")] for h in hosts]
    for line in fmt.table(["HOST", "FROM"], rows, colour_column=None, colour=False):
        session.output.line(line)
    return OK


async def list_all(session: Any, link: RouterLink, hosts: list[str], args: argparse.Namespace) -> int:
    """``list`` merged over hosts, with a host column."""
    from . import format as fmt

    replies: dict[str, Any] = {}
    worst = OK

    async def one(host: str) -> None:
        nonlocal worst
        try:
            reply = await HostConnection(link, host).call("dispatcher", {"action": "list"})
            jobs = reply.get("jobs", {}) if isinstance(reply, dict) else {}
            if args.queue is not None:
                jobs = {name: entries for name, entries in jobs.items() if name == args.queue}
            replies[host] = jobs
        except ClientError as e:
            session.output.err(f"sysadm-dispatch: {host}: {e.message}")
            worst = max(worst, e.code)

    await DeferredList([Deferred.fromCoroutine(one(h)) for h in hosts], consumeErrors=True)
    if args.json:
        session.output.json({host: replies[host] for host in hosts if host in replies})
        return worst
    rows = [[host, *row] for host in hosts if host in replies for row in fmt.list_rows(replies[host])]
    if not rows:
        session.output.err("no pending or running jobs" + (f" in {args.queue}" if args.queue else ""))
        return worst
    header = ["HOST", "QUEUE", "ID", "STATE", "POS", "STARTED", "COMMAND"]
    for line in fmt.table(header, rows, colour_column=3, colour=session.output.colour):
        session.output.line(line)
    return worst
