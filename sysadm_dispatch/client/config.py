"""
Where to connect and as whom, resolved in this order: command-line flags,
environment, the config file, local defaults (docs/cli.rst, "Connecting").

Everything here is pure but for reading files and asking for a password,
and both are passed in, so tests drive it without a terminal.
"""

from __future__ import annotations

import configparser
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import NO_PERMISSION, USAGE, ClientError

DEFAULT_URL = "ws://127.0.0.1:12150"
DEFAULT_USER = "admin"
CONFIG_KEYS = ("url", "user", "password", "password_file", "cafile", "insecure",
               "router", "router_user", "router_ticket_file", "router_secret_file")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Target:
    """A server to talk to and the login to use."""

    url: str
    user: str
    password: str
    cafile: str | None = None
    insecure: bool = False

    @property
    def secure(self) -> bool:
        return self.url.startswith("wss://")


def config_path(env: Mapping[str, str]) -> str:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "sysadm-dispatch", "client.conf")


def read_config(path: str) -> dict[str, str]:
    """
    The config file's settings (``{}`` when there is none).  Keys may stand
    before any section or in a ``[client]`` section.  A file that names a
    password must be readable by its owner only.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ClientError(USAGE, f"cannot read the config file {path}: {e}") from None
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string("[client]\n" + text, source=path)
    except configparser.Error as e:
        raise ClientError(USAGE, f"the config file {path} is not valid: {' '.join(str(e).split())}") from None
    sections = [s for s in parser.sections() if s != "client"]
    if sections:
        raise ClientError(USAGE, f"the config file {path} has an unknown section [{sections[0]}] (only [client])")
    values = dict(parser["client"])
    unknown = sorted(set(values) - set(CONFIG_KEYS))
    if unknown:
        raise ClientError(USAGE, f"the config file {path} has an unknown key {unknown[0]!r} "
                                 f"(known: {', '.join(CONFIG_KEYS)})")
    if ("password" in values or "password_file" in values) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ClientError(NO_PERMISSION, f"the config file {path} names a password but others may read it; "
                                         f"refusing it (chmod 600 {path})")
    return values


def check_url(url: str) -> str:
    """``url`` if it is a ``ws://`` or ``wss://`` URL with a host, else a usage error."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as e:
        raise ClientError(USAGE, f"invalid URL {url!r}: {e}") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ClientError(USAGE, f"invalid URL {url!r}: it must start with ws:// or wss:// and name a host")
    return url


def read_password_file(path: str) -> str:
    """The first line of ``path``, without its line end."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise ClientError(NO_PERMISSION, f"cannot read the password file {path}: {e}") from None
    password = line.rstrip("\r\n")
    if not password:
        raise ClientError(NO_PERMISSION, f"the password file {path} is empty")
    return password


def is_loopback(url: str) -> bool:
    return urlsplit(url).hostname in LOOPBACK


def truthy(value: str, what: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off", ""):
        return False
    raise ClientError(USAGE, f"{what} must be true or false, not {value!r}")


def resolve(
    *,
    url: str | None,
    user: str | None,
    password_file: str | None,
    cafile: str | None,
    insecure: bool,
    env: Mapping[str, str],
    state_dir: Callable[[], str],
    prompt: Callable[[str], str] | None,
) -> Target:
    """
    The ``Target`` for these flags and this environment.  ``state_dir``
    gives the server's default state directory (for the local default
    login); ``prompt`` asks for a password, and is None when there is no
    terminal to ask on.
    """
    config = read_config(env.get("SYSADM_DISPATCH_CONFIG") or config_path(env))
    chosen_url = check_url(url or env.get("SYSADM_DISPATCH_URL") or config.get("url") or DEFAULT_URL)
    configured_user = user or env.get("SYSADM_DISPATCH_USER") or config.get("user")
    chosen_user = configured_user or DEFAULT_USER
    chosen_cafile = cafile or env.get("SYSADM_DISPATCH_CAFILE") or config.get("cafile")
    chosen_insecure = insecure or truthy(config.get("insecure", ""), "insecure in the config file")
    if password_file:
        password = read_password_file(password_file)
    elif env.get("SYSADM_DISPATCH_PASSWORD"):
        password = env["SYSADM_DISPATCH_PASSWORD"]
    elif config.get("password"):
        password = config["password"]
    elif config.get("password_file"):
        password = read_password_file(config["password_file"])
    else:
        password = local_password(chosen_user, chosen_url, state_dir) or ""
        if not password:
            if prompt is None:
                raise ClientError(NO_PERMISSION, f"no password for {chosen_user} and no terminal to ask on: "
                                                 "set SYSADM_DISPATCH_PASSWORD or use --password-file")
            password = prompt(f"Password for {chosen_user} at {chosen_url}: ")
            if not password:
                raise ClientError(NO_PERMISSION, "no password given")
    return Target(chosen_url, chosen_user, password, chosen_cafile, chosen_insecure)


def local_password(user: str, url: str, state_dir: Callable[[], str]) -> str | None:
    """The server's own ``admin-password``, for ``admin`` on this machine, if the caller may read it."""
    if user != DEFAULT_USER or not is_loopback(url):
        return None
    try:
        with open(os.path.join(state_dir(), "admin-password"), encoding="utf-8") as f:
            return f.readline().strip() or None
    except (OSError, UnicodeDecodeError):
        return None
