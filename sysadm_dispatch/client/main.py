"""
The client's subcommands on the ``sysadm-dispatch`` console script: their
arguments, and running one under ``task.react``.

Only argparse and the standard library are imported until a command runs,
so ``--help`` and the ``user`` commands stay quick.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..reactors import IClientReactor

COMMANDS = ("run", "follow", "list", "kill", "logs", "watch", "hosts")


class Usage(Exception):
    """A bad argument value, reported as argparse reports one (exit 2)."""


def _duration(text: str) -> float:
    from .format import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _timeout(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: it must be more than 0 seconds")
    return seconds


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"invalid limit {text!r}: a whole number from 1 to 1000")
    return value


def _env(text: str) -> str:
    if not text.partition("=")[0]:
        raise argparse.ArgumentTypeError(f"invalid --env {text!r}: use NAME=VALUE")
    return text


def connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection (see docs/cli.rst for the order they are looked up in)")
    group.add_argument("--url", metavar="URL",
                       help="server WebSocket, ws:// or wss:// [env SYSADM_DISPATCH_URL; default ws://127.0.0.1:12150]")
    group.add_argument("--user", metavar="NAME", help="log in as NAME [env SYSADM_DISPATCH_USER; default admin]")
    group.add_argument("--password-file", metavar="FILE",
                       help="read the password from FILE's first line [else env SYSADM_DISPATCH_PASSWORD]")
    group.add_argument("--cafile", metavar="FILE", help="trust the CA certificate(s) in FILE for wss://")
    group.add_argument("--insecure", action="store_true", help="do not verify the server's certificate (wss://)")
    fleet = common.add_argument_group("fleet (through a WAMP router, see docs/fleet.rst)")
    fleet.add_argument("--router", metavar="URL", help="the fleet's WAMP router, ws:// or wss:// "
                                                       "[env SYSADM_DISPATCH_ROUTER]")
    fleet.add_argument("--router-user", metavar="NAME", help="join the router as this principal "
                                                             "[env SYSADM_DISPATCH_ROUTER_USER]")
    fleet.add_argument("--router-ticket-file", metavar="FILE", help="the principal's ticket, on FILE's first line "
                                                                    "[else env SYSADM_DISPATCH_ROUTER_TICKET]")
    fleet.add_argument("--router-secret-file", metavar="FILE",
                       help="the principal's WAMP-CRA secret, on FILE's first line [else env "
                            "SYSADM_DISPATCH_ROUTER_SECRET]")
    fleet.add_argument("--host", metavar="NAME", action="append", default=[],
                       help="act on this host of the fleet (repeatable)")
    fleet.add_argument("--all", action="store_true", help="act on every host online on the router")
    return common


def add_commands(commands: Any, handler: Callable[[argparse.Namespace], int]) -> None:
    """Add the client's subcommands to the console script's subparsers."""
    common = [connection_options()]

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=description, parents=common)
        p.set_defaults(func=handler, client_command=name)
        return p

    def follow_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kill-on-interrupt", action="store_true",
                       help="Ctrl-C kills the job without asking (otherwise: asks on a terminal, else detaches)")
        p.add_argument("--json", action="store_true", help="print the job's events as JSON lines")

    run = add("run", "run a job and follow its output", "Run a job: one or more commands, run in order until one "
              "fails. Follows its output and exits with its exit code, unless --detach.")
    run.add_argument("commands", nargs="+", metavar="COMMAND",
                     help="one command of the chain, as one argument (quote it: 'ls -l /tmp')")
    run.add_argument("--id", metavar="ID", help="job id [default: cli-<host>-<time>-<random>]")
    run.add_argument("--queue", metavar="QUEUE", help="queue to run in [default: no_queue]")
    run.add_argument("--cwd", metavar="DIR", help="working directory of the commands, on the server")
    run.add_argument("--env", metavar="NAME=VALUE", action="append", type=_env, default=[],
                     help="add a variable to the commands' environment (repeatable)")
    run.add_argument("--timeout", metavar="DURATION", type=_timeout,
                     help="stop the job after this long: 90, 90s, 15m, 2h (exit 124)")
    run.add_argument("--detach", action="store_true", help="print the job id once accepted and exit 0")
    follow_options(run)

    follow = add("follow", "follow a job's output until it ends",
                 "Follow a pending or running job's output from now on, or print a finished job's log. "
                 "Exits with the job's exit code.")
    follow.add_argument("job_id", metavar="ID")
    follow_options(follow)

    listing = add("list", "list pending and running jobs", "List pending and running jobs.")
    listing.add_argument("--queue", metavar="QUEUE", help="only this queue")
    listing.add_argument("--json", action="store_true", help="print the server's jobs object")

    kill = add("kill", "kill jobs", "Kill pending or running jobs. Exits 1 when any id was not found.")
    kill.add_argument("job_ids", nargs="+", metavar="ID")
    kill.add_argument("--json", action="store_true", help="print the killed and not-found ids as JSON")

    logs = add("logs", "finished jobs from the history",
               "Finished jobs, newest first; --id shows one job's whole record.")
    logs.add_argument("--since", metavar="DURATION", type=_duration, help="finished at most this long ago: 2h, 1d")
    logs.add_argument("--until", metavar="DURATION", type=_duration, help="finished at least this long ago")
    logs.add_argument("--id", metavar="ID", help="print this job's latest record in full")
    logs.add_argument("--failed", action="store_true", help="only jobs that did not succeed")
    logs.add_argument("--limit", metavar="N", type=_limit, help="at most N records (1-1000) [server default: 100]")
    logs.add_argument("--json", action="store_true", help="print the server's records as JSON")

    watch = add("watch", "print every job event as it happens", "Print every job event as it happens, "
                "until interrupted.")
    watch.add_argument("--json", action="store_true", help="one JSON object per event and line")

    hosts = add("hosts", "list the hosts online on the router", "List the fleet's hosts online on the router "
                "(needs --router).")
    hosts.add_argument("--json", action="store_true", help="print the hosts as JSON")


def prompt_password(message: str) -> str:
    import getpass

    try:
        return getpass.getpass(message)
    except EOFError:
        sys.stderr.write("\n")
        return ""


def server_state_dir() -> str:
    """The server's default state directory, as the server itself computes it."""
    from ..auth.users import default_state_dir

    return default_state_dir()


def handle(args: argparse.Namespace) -> int:
    """Run one client subcommand; its exit code (docs/cli.rst)."""
    from .errors import SOFTWARE, USAGE, ClientError

    try:
        return _handle(args)
    except ClientError as e:
        sys.stderr.write(f"sysadm-dispatch: {e.message}\n")
        return e.code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except ValueError as e:
        sys.stderr.write(f"sysadm-dispatch: {e}\n")
        return USAGE
    except Exception as e:  # a bug: one line, not a traceback
        sys.stderr.write(f"sysadm-dispatch: internal error: {type(e).__name__}: {e}\n")
        return SOFTWARE


def _router(args: argparse.Namespace) -> Any:
    from .config import config_path, read_config
    from .fleet import resolve_router

    env = os.environ
    return resolve_router(args, env, read_config(env.get("SYSADM_DISPATCH_CONFIG") or config_path(env)))


def _handle(args: argparse.Namespace) -> int:
    from .config import resolve
    from .errors import USAGE, ClientError
    from .jobs import env_pairs

    if getattr(args, "env", None):
        args.env = env_pairs(args.env)
    router = _router(args)
    if router is not None:
        return _react(args, router)
    if args.client_command == "hosts":
        raise ClientError(USAGE, "hosts needs a router: --router URL or SYSADM_DISPATCH_ROUTER")
    interactive = sys.stdin.isatty()
    target = resolve(
        url=args.url, user=args.user, password_file=args.password_file, cafile=args.cafile,
        insecure=args.insecure, env=os.environ, state_dir=server_state_dir,
        prompt=prompt_password if interactive else None,
    )
    if target.insecure and target.secure:
        sys.stderr.write("sysadm-dispatch: warning: --insecure: the server's certificate is not verified\n")
    return _react(args, target)


def _react(args: argparse.Namespace, target: Any) -> int:
    from twisted.internet import task

    from .session import Output

    output = Output()
    code: list[int] = [70]

    async def main(reactor: IClientReactor) -> None:
        code[0] = await _main(reactor, args, target, output)

    try:
        task.react(lambda reactor: _ensure(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 70
    return code[0]


def _ensure(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


async def _main(reactor: IClientReactor, args: argparse.Namespace, target: Any, output: Any) -> int:
    from twisted.internet.defer import Deferred

    from . import commands
    from .connection import connect
    from .errors import SOFTWARE, USAGE, ClientError
    from .session import Session

    links: list[Any] = []
    session = Session(reactor, output, terminal=sys.stdin.isatty() and sys.stderr.isatty())
    session.install_interrupt()
    command = {
        "run": commands.run, "follow": commands.follow, "list": commands.list_jobs,
        "kill": commands.kill, "logs": commands.logs, "watch": commands.watch, "hosts": commands.list_jobs,
    }[args.client_command]

    async def work() -> int:
        from .fleet import RouterTarget

        if isinstance(target, RouterTarget):
            return await fleet_work(target)
        session.connection = await connect(reactor, target)
        return await command(session, session.connection, args)

    async def fleet_work(target: Any) -> int:
        from . import fleet

        link = fleet.RouterLink(reactor, target)
        links.append(link)
        await link.join()
        if args.client_command == "hosts":
            return await fleet.list_hosts(session, link, args)
        if not args.host and not args.all:
            raise ClientError(USAGE, f"{args.client_command} through a router needs --host NAME or --all")
        hosts = await fleet.chosen_hosts(link, args)
        if len(hosts) == 1 and not args.all:
            session.connection = fleet.HostConnection(link, hosts[0])
            return await command(session, session.connection, args)
        if args.client_command == "list":
            return await fleet.list_all(session, link, hosts, args)
        return await fleet.on_hosts(session, link, hosts, command, args)

    d = Deferred.fromCoroutine(work())
    d.addCallbacks(session.finish, session.fail)
    try:
        code = await session.finished
    except Exception as e:  # a bug: one line, not a traceback
        output.err(f"sysadm-dispatch: internal error: {type(e).__name__}: {e}")
        code = SOFTWARE
    if session.connection is not None:
        await session.connection.close()
    for link in links:
        await link.close()
    return code
