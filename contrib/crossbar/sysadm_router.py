"""
The router side of a sysadm-dispatch fleet: a component Crossbar.io runs in
its router worker (see config.json and README.rst beside this file).

It provides two procedures to the router itself:

``fleet.router.authenticate``
    The dynamic authenticator for ticket and WAMP-CRA logins: principals
    come from a JSON file (``principals`` in the component's ``extra``,
    relative to the node directory), read again whenever it changes.
``fleet.router.authorize``
    The dynamic authorizer of every role: a host (role ``agent``) may
    register and publish only under ``sysadm.<its own authid>.``; an
    ``operator`` or ``viewer`` may call any host's ``sysadm.<host>.rpc``
    (the caller disclosed, so the host knows its role) and the session
    meta procedures, and subscribe to hosts' events.  Nothing else is
    allowed.

This file needs only Autobahn and Twisted, as found in Crossbar's own
environment; it is not part of the sysadm_dispatch package.
"""

import hmac
import json
import os
import re

from autobahn.twisted.wamp import ApplicationSession
from autobahn.wamp.exception import ApplicationError
from twisted.internet.defer import inlineCallbacks

AUTHENTICATE = "fleet.router.authenticate"
AUTHORIZE = "fleet.router.authorize"
AGENT = "agent"
CLIENT_ROLES = ("operator", "viewer")
ROLES = (AGENT, *CLIENT_ROLES)

HOST = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RPC = re.compile(r"^sysadm\.[A-Za-z0-9_-]{1,64}\.rpc$")
#: A host's events, or every host's (the wildcard subscription ``sysadm..events``).
EVENTS = re.compile(r"^sysadm\.[A-Za-z0-9_-]{0,64}\.events$")
META = ("wamp.session.list", "wamp.session.get", "wamp.session.count")


class PrincipalsError(Exception):
    pass


def load_principals(path):
    """``{authid: {"role", "ticket" or "secret"}}`` from ``path``; ``PrincipalsError`` saying what is wrong."""
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise PrincipalsError(f"{path} may be read or written by others: chmod 600 it")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError as e:
            raise PrincipalsError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PrincipalsError(f"{path}: an object of authid -> principal is expected")
    for authid, principal in data.items():
        if not isinstance(principal, dict) or principal.get("role") not in ROLES:
            raise PrincipalsError(f"{path}: {authid!r} needs a role, one of {', '.join(ROLES)}")
        if principal["role"] == AGENT and not HOST.match(authid):
            raise PrincipalsError(f"{path}: the host {authid!r} must be named with letters, digits, - and _")
        secrets = [key for key in ("ticket", "secret") if isinstance(principal.get(key), str) and principal[key]]
        if len(secrets) != 1:
            raise PrincipalsError(f"{path}: {authid!r} needs one of ticket (for ticket logins) or secret (WAMP-CRA)")
    return data


def authorize(session, uri, action, options=None):
    """The decision for one action of one session (a plain function: the tests call it too)."""
    role = session.get("authrole")
    authid = session.get("authid") or ""
    if role == AGENT:
        allowed = action in ("register", "publish") and HOST.match(authid) is not None and \
            uri.startswith(f"sysadm.{authid}.")
        # Never cached: the router caches a decision for the whole role, and
        # this one depends on the session's authid.
        return {"allow": allowed, "disclose": False, "cache": False}
    if role in CLIENT_ROLES:
        if action == "call":
            allowed = RPC.match(uri) is not None or uri in META
            # Disclosed: the host decides what the caller may do by its role.
            return {"allow": allowed, "disclose": allowed, "cache": True}
        if action == "subscribe":
            return {"allow": EVENTS.match(uri) is not None, "disclose": False, "cache": True}
    return {"allow": False, "disclose": False, "cache": True}


class FleetRouter(ApplicationSession):
    """Registers the authenticator and the authorizer on the realm."""

    def __init__(self, config=None):
        super().__init__(config)
        extra = (config.extra if config is not None else None) or {}
        path = extra.get("principals", "principals.json")
        cbdir = extra.get("cbdir") or os.environ.get("CROSSBAR_DIR") or os.getcwd()
        self.principals_path = os.path.join(cbdir, path)
        self._principals = {}
        self._stamp = None

    def principals(self):
        """The principals, read again when the file changed; on a bad file, the last good ones."""
        try:
            st = os.stat(self.principals_path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._stamp:
                self._principals = load_principals(self.principals_path)
                self._stamp = stamp
        except (OSError, PrincipalsError) as e:
            self.log.error("cannot use the principals file: {error}", error=e)
        return self._principals

    @inlineCallbacks
    def onJoin(self, details):
        self.principals()
        yield self.register(self.authenticate, AUTHENTICATE)
        yield self.register(self.authorize, AUTHORIZE)
        self.log.info("sysadm fleet authenticator and authorizer ready ({n} principals)", n=len(self._principals))

    def authenticate(self, realm, authid, details):
        principal = self.principals().get(authid)
        method = details.get("authmethod")
        if principal is None:
            raise ApplicationError("fleet.error.no_such_principal", f"no principal {authid!r}")
        if method == "ticket" and "ticket" in principal:
            given = details.get("ticket") or ""
            if hmac.compare_digest(given.encode(), principal["ticket"].encode()):
                return {"role": principal["role"]}
            raise ApplicationError("fleet.error.bad_ticket", f"wrong ticket for {authid!r}")
        if method == "wampcra" and "secret" in principal:
            return {"role": principal["role"], "secret": principal["secret"]}
        raise ApplicationError("fleet.error.wrong_method", f"{authid!r} may not log in by {method}")

    def authorize(self, session, uri, action, options=None):
        return authorize(session, uri, action, options)
