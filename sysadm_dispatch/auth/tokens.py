"""Tokens: what a client presents after logging in, with sliding expiry."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from .users import LoginFailed, User


@dataclass
class _Token:
    user: User
    expires: float


def _token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenStore:
    """
    Random tokens with sliding expiry, shared by every transport.

    Only a SHA-256 digest of each token is kept, and looked up by digest:
    how long a lookup takes can at most tell an attacker about the digest
    of what they sent, which says nothing about any real token (finding a
    token from its digest is a preimage attack on SHA-256), and the table
    in memory holds nothing a client could present.
    """

    def __init__(self, reactor: IReactorTime, ttl: float) -> None:
        self.reactor = reactor
        self.ttl = ttl
        self._tokens: dict[bytes, _Token] = {}
        self._next_sweep = 0.0

    def issue(self, user: User) -> str:
        token = secrets.token_urlsafe(32)  # 256 random bits
        self._tokens[_token_key(token)] = _Token(user, self.reactor.seconds() + self.ttl)
        self._sweep()
        return token

    def use(self, token: str) -> User:
        """The token's user; renews the token.  Raises ``LoginFailed``."""
        now = self.reactor.seconds()
        key = _token_key(token)
        entry = self._tokens.get(key)
        if entry is None or entry.expires <= now:
            self._tokens.pop(key, None)
            raise LoginFailed("unknown or expired token")
        entry.expires = now + self.ttl
        return entry.user

    def valid(self, token: str) -> bool:
        """Whether ``token`` would be accepted now (without renewing it)."""
        entry = self._tokens.get(_token_key(token))
        return entry is not None and entry.expires > self.reactor.seconds()

    def revoke(self, token: str) -> None:
        self._tokens.pop(_token_key(token), None)

    def revoke_user(self, name: str) -> None:
        for token in [t for t, e in self._tokens.items() if e.user.name == name]:
            del self._tokens[token]

    def __len__(self) -> int:
        return len(self._tokens)

    def _sweep(self) -> None:
        now = self.reactor.seconds()
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(self.ttl, 60.0)
        for token in [t for t, e in self._tokens.items() if e.expires <= now]:
            del self._tokens[token]
