"""
The ``sysadm-dispatch`` console script: the client's subcommands (run,
follow, list, kill, logs, watch: see ``client/`` and docs/cli.rst), shell
completion, and user administration:

    sysadm-dispatch user add NAME --role full|read [--users FILE]
    sysadm-dispatch user remove NAME [--users FILE]
    sysadm-dispatch user list [--users FILE]

A new password is read from standard input when it is not a terminal (the
first line), and otherwise prompted for twice.

Modules are imported by the subcommand that needs them, so the client does
not load the server's authentication code, nor ``user`` the client's.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import TYPE_CHECKING

from .client.main import add_commands, handle

if TYPE_CHECKING:
    from .auth.users import UserEntry

#: The roles of ``auth.ROLES`` (a test checks they agree).
ROLES = ("full", "read")


def _users_path(args: argparse.Namespace) -> str:
    from .auth.users import default_state_dir

    return args.users or os.path.join(default_state_dir(), "users")


def _read_password() -> str:
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise SystemExit("sysadm-dispatch: the passwords do not match")
    if not password:
        raise SystemExit("sysadm-dispatch: the password must not be empty")
    return password


def _load(path: str, must_exist: bool) -> dict[str, UserEntry]:
    from .auth.users import UsersFileError, read_users

    if not os.path.exists(path):
        if must_exist:
            raise SystemExit(f"sysadm-dispatch: no users file at {path}")
        return {}
    try:
        return read_users(path)
    except (OSError, UsersFileError) as e:
        raise SystemExit(f"sysadm-dispatch: {e}") from None


def user_add(args: argparse.Namespace) -> int:
    from .auth.users import UserEntry, hash_password, valid_name, write_users

    if not valid_name(args.name):
        raise SystemExit(f"sysadm-dispatch: {args.name!r} is not a valid user name "
                         "(letters, digits, _ . @ -; at most 64 characters)")
    path = _users_path(args)
    users = _load(path, must_exist=False)
    if args.name in users and not args.replace:
        raise SystemExit(f"sysadm-dispatch: user {args.name!r} exists already (use --replace to change it)")
    users[args.name] = UserEntry(args.name, args.role, hash_password(_read_password()))
    write_users(path, users)
    print(f"user {args.name} ({args.role}) saved in {path}")
    return 0


def user_remove(args: argparse.Namespace) -> int:
    from .auth.users import write_users

    path = _users_path(args)
    users = _load(path, must_exist=True)
    if args.name not in users:
        raise SystemExit(f"sysadm-dispatch: no user {args.name!r} in {path}")
    del users[args.name]
    write_users(path, users)
    print(f"user {args.name} removed from {path}")
    return 0


def user_list(args: argparse.Namespace) -> int:
    for entry in _load(_users_path(args), must_exist=True).values():
        print(f"{entry.name}\t{entry.role}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="sysadm-dispatch",
        description="Run jobs on a sysadm-dispatch server and follow them; administer its users.",
        epilog="Settings and exit codes: docs/cli.rst. Each subcommand's options: SUBCOMMAND --help.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    add_commands(commands, handle)
    completion = commands.add_parser("completion", help="print a shell completion script (bash or zsh)",
                                     description="Print a completion script: "
                                                 "eval \"$(sysadm-dispatch completion bash)\"")
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(func=print_completion)
    user = commands.add_parser("user", help="manage the users file")
    actions = user.add_subparsers(dest="action", required=True)

    def users_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--users", metavar="FILE", help="users file [default: <state-dir>/users, as the server]")

    add = actions.add_parser("add", help="add a user (password from stdin, or prompted)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--replace", action="store_true", help="change an existing user")
    users_option(add)
    add.set_defaults(func=user_add)
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    users_option(remove)
    remove.set_defaults(func=user_remove)
    listing = actions.add_parser("list", help="list users and roles")
    users_option(listing)
    listing.set_defaults(func=user_list)
    return top


def print_completion(args: argparse.Namespace) -> int:
    from .client.completion import script

    sys.stdout.write(script(parser(), args.shell))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
