"""
The users and who they are: the users file, password hashing, roles, the
state directory where the file lives.

Users file: one user per line, ``name:role:hash``, where role is ``full``
(may run and kill) or ``read`` (may look), and hash is a salted scrypt hash.
Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import hmac
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from zope.interface import Interface, implementer

FULL = "full"
READ = "read"
ROLES = (FULL, READ)

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1}


class IUser(Interface):
    """The avatar interface: an authenticated user."""


@implementer(IUser)
@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def may_write(self) -> bool:
        return self.role == FULL


class LoginFailed(Exception):
    """Bad credentials, or an unknown or expired token."""


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def hash_password(password: str) -> str:
    """A salted scrypt hash in the form ``scrypt$n$r$p$salt$hash``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Check a password against a hash from ``hash_password``; slow on purpose."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected),
            maxmem=128 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def map_big_blocks(threshold: int = 4 << 20) -> None:
    """
    With glibc, serve every allocation of ``threshold`` bytes or more by a
    mapping of its own, given back to the system when freed.  A password
    check (scrypt) allocates 16 MiB; by default glibc raises its threshold
    to the size of the first such block freed, serves the next ones from the
    heap of the thread that asks, and that heap keeps them for good, in each
    thread that ever checked a password.  (Output buffers, 1 MiB at most,
    stay below this threshold: mapping them would cost their speed.)
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, threshold)
    # Fixing one threshold fixes the other at its small default (128 KiB),
    # and the heap would then shrink and grow again around every 1 MiB read
    # of output: keep what glibc would have kept.
    mallopt(m_trim_threshold, 2 * threshold)


class UsersFileError(Exception):
    pass


@dataclass(frozen=True)
class UserEntry:
    name: str
    role: str
    password_hash: str


def read_users(path: str) -> dict[str, UserEntry]:
    """Parse a users file; raises ``UsersFileError`` naming the bad line."""
    users: dict[str, UserEntry] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":")
            if len(parts) != 3 or not valid_name(parts[0]) or parts[1] not in ROLES:
                raise UsersFileError(f"{path}, line {number}: expected name:role:hash with role full or read")
            users[parts[0]] = UserEntry(*parts)
    return users


def write_users(path: str, users: Mapping[str, UserEntry]) -> None:
    """Replace the users file atomically, readable by its owner only."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# sysadm-dispatch users: name:role:hash (role is full or read)\n")
            for entry in users.values():
                f.write(f"{entry.name}:{entry.role}:{entry.password_hash}\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def ensure_users_file(users_path: str, password_path: str) -> str | None:
    """
    On first run, create the users file with one full user ``admin`` and a
    random password, written to ``password_path`` (mode 0600).  Returns the
    password file's path when it did so.
    """
    if os.path.exists(users_path):
        return None
    password = secrets.token_urlsafe(18)
    # The password file first: should writing it fail, the next start tries
    # again instead of finding a users file whose password nobody knows.
    fd = os.open(password_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.chmod(password_path, 0o600)
    write_users(users_path, {"admin": UserEntry("admin", FULL, hash_password(password))})
    return password_path


def check_private(path: str) -> None:
    """Refuse a file or directory that others may write to (or own, and so chmod)."""
    st = os.stat(path)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsersFileError(f"{path} is writable by group or others; fix with chmod go-w")
    if st.st_uid not in (0, os.geteuid()):
        raise UsersFileError(f"{path} belongs to uid {st.st_uid}, neither root nor the server's user; fix with chown")


def read_private_users(path: str) -> dict[str, UserEntry]:
    """``read_users``, refusing a file that others could have written."""
    check_private(path)
    return read_users(path)


#: The state directory of a server run as root (as a system service).
SYSTEM_STATE_DIR = "/var/lib/sysadm-dispatch"


def default_state_dir() -> str:
    """
    Where the server keeps its state when not told, and where the ``user``
    commands and the client look for it: ``$STATE_DIRECTORY`` (set by
    systemd's ``StateDirectory=``; its first entry), else
    ``$XDG_STATE_HOME/sysadm-dispatch``, else, for root,
    ``/var/lib/sysadm-dispatch``, and for anyone else
    ``~/.local/state/sysadm-dispatch``.
    """
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return os.path.join(xdg, "sysadm-dispatch")
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    return os.path.join(os.path.expanduser("~"), ".local", "state", "sysadm-dispatch")
