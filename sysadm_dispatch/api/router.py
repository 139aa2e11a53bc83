"""
The router both transports share: envelopes in, replies out.

A transport hands each request to ``Router.handle_bytes`` (or
``handle_request`` when it has already parsed it) together with the
``Session`` of the connection, and gets back a Deferred reply envelope
(``None`` for ``auth_clear``).  Handlers raise ``RPCError``; anything else
is a bug, logged with its traceback and answered 500 without it.  The wire
protocol is described in docs/protocol.rst.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..auth.blocking import AddressBlocked
from ..auth.login import Authenticator, LoginBusy
from ..auth.users import LoginFailed, User
from ..core.dispatcher import Dispatcher, Unavailable
from ..core.spec import InvalidJob
from ..store.history import BadQuery, flat_record, parse_read_logs, read_logs_reply

log = Logger()

MAX_DEPTH = 32
MAX_STRING_CHARS = 65536


class RPCError(Exception):
    """An error reply: an HTTP-style code and one sentence saying what was wrong."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    @property
    def message(self) -> str:
        return HTTPStatus(self.code).phrase


class Subscriber(Protocol):
    """What a transport that can push events offers the router."""

    def subscribe(self, name: str) -> None: ...

    def unsubscribe(self, name: str) -> None: ...


@dataclass
class Session:
    """
    Who is on the other end of one connection (or one HTTP request).
    ``events`` is set by transports that can push events.
    """

    peer: str
    user: User | None = None
    token: str | None = None
    events: Subscriber | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Logins under way on this session: requests that follow one on the
    #: same connection must wait for it, to run as the user it logs in.
    logging_in: int = 0
    #: ``rest`` or ``websocket``: what the metrics count logins by.
    transport: str = ""


def _not_text(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (so cannot be encoded as UTF-8), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _path(trail: tuple[Any, ...]) -> str:
    """``("args", "jobs", 0, "env")`` as ``args.jobs[0].env``."""
    out = ""
    for step in trail:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            shown = step[:64] if _not_text(step) is None else ascii(step[:64])
            out += f".{shown}" if out else shown
    return out or "the message"


def _check_shape(value: Any, max_depth: int, max_string: int | None) -> None:
    """
    Raise ``RPCError(400)`` naming the field if ``value`` nests deeper than
    ``max_depth``, holds a longer string, a string that is not Unicode text
    (a lone surrogate), or an object with a key given twice.
    """
    if _faulty(value, max_depth, max_string):
        _report(value, max_depth, max_string)


def _faulty(value: Any, max_depth: int, max_string: int | None) -> bool:
    """Whether ``_report`` will find something: a quick walk, that keeps no paths."""
    limit = max_string if max_string is not None else -1
    stack = [(value, 1)]
    while stack:  # iteratively: no recursion on hostile input
        item, depth = stack.pop()
        if depth > max_depth:
            return True
        if isinstance(item, dict):
            if isinstance(item, _Repeated):
                return True
            for key in item:
                if (limit >= 0 and len(key) > limit) or (not key.isascii() and _not_text(key) is not None):
                    return True
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and (
            (limit >= 0 and len(item) > limit) or (not item.isascii() and _not_text(item) is not None)
        ):
            return True
    return False


def _report(value: Any, max_depth: int, max_string: int | None, text: bool = True) -> None:
    """Raise the ``RPCError(400)`` for what ``_faulty`` found, naming where it is."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 1, ())]
    while stack:  # iteratively: no recursion on hostile input
        item, depth, trail = stack.pop()
        if depth > max_depth:
            raise RPCError(400, f"the message nests deeper than {max_depth} levels")
        if isinstance(item, dict):
            if isinstance(item, _Repeated):
                raise RPCError(400, f"{_path(trail)}: the key {_shown(item.repeated)} is given twice in one object")
            for key in item:
                _check_string(key, max_string, text, trail, key=True)
            stack.extend((v, depth + 1, (*trail, k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, depth + 1, (*trail, i)) for i, v in enumerate(item))
        elif isinstance(item, str):
            _check_string(item, max_string, text, trail)


def _shown(key: str) -> str:
    return repr(key[:64]) if _not_text(key) is None else ascii(key[:64])


def _check_string(value: str, limit: int | None, text: bool, trail: tuple[Any, ...], key: bool = False) -> None:
    where = f"a key of {_path(trail)}" if key else _path(trail)
    if limit is not None and len(value) > limit:
        raise RPCError(400, f"{where}: a string of {len(value)} characters, more than the limit of {limit}")
    if text:
        at = _not_text(value)
        if at is not None:
            raise RPCError(400, f"{where}: the string is not valid Unicode text (a lone surrogate "
                                f"{ascii(value[at])[1:-1]} at character {at})")


class _Repeated(dict[str, Any]):
    """An object in which a key was given twice: refused by ``_check_shape``."""

    repeated = ""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        obj = _Repeated(obj)
        obj.repeated = repeated
        _flags.repeated = True
    return obj


#: What a parse noticed that needs the walk of ``_check_shape`` to report.
_flags = threading.local()
#: A JSON escape that may stand for a lone surrogate (valid UTF-8 text holds
#: none, so only an escape can make one).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_object)


def parse_json(data: bytes, max_depth: int = MAX_DEPTH, max_string: int | None = MAX_STRING_CHARS) -> tuple[Any, bool]:
    """
    Parse a UTF-8 JSON message without judging its contents; raises
    ``RPCError(400)`` saying why not.  Returns the value and whether
    ``check_message`` must look at it: only if the text could hold a
    string or a nesting over the limits, a lone surrogate or a repeated key
    (counting brackets and looking for escapes is much cheaper than a walk).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RPCError(400, f"the message is not valid UTF-8 (byte {e.start})") from None
    _flags.repeated = False
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise RPCError(400, f"the message nests deeper than {max_depth} levels") from None
    except ValueError as e:
        raise RPCError(400, f"the message is not valid JSON ({e})") from None
    suspect = (
        _flags.repeated
        or (max_string is not None and len(text) > max_string)
        or text.count("{") + text.count("[") >= max_depth
        or _SURROGATE_ESCAPE.search(text) is not None
    )
    return value, bool(suspect)


def check_message(value: Any, suspect: bool, max_depth: int = MAX_DEPTH,
                  max_string: int | None = MAX_STRING_CHARS) -> None:
    """
    Raise ``RPCError(400)`` naming the field if a parsed message nests too
    deeply, holds too long a string, text that is not Unicode or a key
    given twice; ``suspect`` is what ``parse_json`` said.
    """
    if suspect:
        _check_shape(value, max_depth, max_string)


def decode_json(data: bytes, max_depth: int = MAX_DEPTH, max_string: int | None = MAX_STRING_CHARS) -> Any:
    """Parse and check a UTF-8 JSON message; raises ``RPCError(400)`` saying why not."""
    value, suspect = parse_json(data, max_depth, max_string)
    check_message(value, suspect, max_depth, max_string)
    return value


def settled(d: Deferred[Any]) -> tuple[bool, Any]:
    """
    ``(True, result)`` when ``d`` has fired with a plain result: not a
    failure, and not waiting on another Deferred.  Lets a transport answer
    at once what was answered at once.
    """
    if d.called and not d.paused and not isinstance(d.result, Failure | Deferred):
        return True, d.result
    return False, None


def reply(namespace: str, request_id: str, args: Any) -> dict[str, Any]:
    return {"namespace": namespace, "name": "response", "id": request_id, "args": args}


def error_reply(namespace: str, request_id: str, e: RPCError) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "name": "error",
        "id": request_id,
        "args": {"code": e.code, "message": e.message, "detail": e.detail},
    }


Handler = Callable[[Session, Any], Any]

#: Requests that need no authenticated user.
PUBLIC = {("rpc", "auth"), ("rpc", "auth_token"), ("rpc", "auth_clear"), ("rpc", "identify")}
#: (namespace, name) -> what a read user may do with it, for ``query``.
CLASSES = {"rpc/dispatcher": ("read/write", "read")}


class Router:
    """The table ``(namespace, name) -> handler`` and the envelope rules around it."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        auth: Authenticator,
        *,
        max_message_bytes: int = 1 << 20,
        max_depth: int = MAX_DEPTH,
        max_string_chars: int = MAX_STRING_CHARS,
    ) -> None:
        self.dispatcher = dispatcher
        self.auth = auth
        self.max_message_bytes = max_message_bytes
        self.max_depth = max_depth
        self.max_string_chars = max_string_chars
        self.hostname = socket.gethostname()
        self.handlers: dict[tuple[str, str], Handler] = {
            ("rpc", "auth"): self.auth_login,
            ("rpc", "auth_token"): self.auth_token,
            ("rpc", "auth_clear"): self.auth_clear,
            ("rpc", "identify"): self.identify,
            ("rpc", "query"): self.query,
            ("rpc", "dispatcher"): self.dispatcher_request,
            ("rpc", "logs"): self.logs_request,
            ("events", "subscribe"): self.subscribe,
            ("events", "unsubscribe"): self.unsubscribe,
        }

    # Entry points for transports.

    def decode(self, data: bytes) -> Any:
        """Parse a message within this router's depth and string limits; raises ``RPCError(400)``."""
        return decode_json(data, self.max_depth, self.max_string_chars)

    def check_address(self, session: Session) -> None:
        """``RPCError(403)`` while the session's address is blocked after failed logins."""
        try:
            self.auth.guard.check(session.peer)
        except AddressBlocked as e:
            raise RPCError(403, str(e)) from None

    def _refusal(self, session: Session, namespace: str, request_id: str, e: RPCError) -> Deferred[Any]:
        """An early error reply; a blocked address gets its 403 instead, whatever it sent."""
        try:
            self.check_address(session)
        except RPCError as blocked:
            e = blocked
        return _done(error_reply(namespace, request_id, e))

    def handle_bytes(self, session: Session, data: bytes) -> Deferred[dict[str, Any] | None]:
        """One whole message from a client; fires with the reply envelope or ``None``."""
        if len(data) > self.max_message_bytes:
            e = RPCError(413, f"the message is {len(data)} bytes, more than the limit of {self.max_message_bytes}")
            return self._refusal(session, "rpc", "", e)
        try:
            message, suspect = parse_json(data, self.max_depth, self.max_string_chars)
        except RPCError as e:
            return self._refusal(session, "rpc", "", e)
        if suspect:
            try:
                check_message(message, suspect, self.max_depth, self.max_string_chars)
            except RPCError as e:
                # Parsed: the reply keeps the request's id, for clients that match replies by it.
                namespace, request_id = self._echo(message)
                return self._refusal(session, namespace, request_id, e)
        return self.handle_message(session, message)

    def _echo(self, message: Any) -> tuple[str, str]:
        """The namespace and id a reply to ``message`` carries, as far as they can be read from it."""
        if not isinstance(message, dict):
            return "rpc", ""
        namespace = message.get("namespace")
        request_id = message.get("id", "")
        if isinstance(message, _Repeated) and message.repeated == "id":
            request_id = ""  # which one?
        elif isinstance(request_id, int | float) and not isinstance(request_id, bool):
            request_id = json.dumps(request_id)[:256]
        elif not isinstance(request_id, str) or len(request_id) > self.max_string_chars:
            request_id = ""
        elif _not_text(request_id) is not None:
            request_id = ""
        return namespace if namespace in ("rpc", "events") else "rpc", request_id

    def handle_message(self, session: Session, message: Any) -> Deferred[dict[str, Any] | None]:
        if not isinstance(message, dict):
            return self._refusal(session, "rpc", "", RPCError(400, "the message must be a JSON object"))
        request_id = message.get("id", "")
        if not isinstance(request_id, str):
            # Echo what can be echoed: ids are strings on this protocol.
            request_id = json.dumps(request_id)[:256] if isinstance(request_id, int | float) else ""
        namespace = message.get("namespace")
        name = message.get("name")
        echo = namespace if namespace in ("rpc", "events") else "rpc"
        if not isinstance(namespace, str) or not isinstance(name, str):
            missing = "namespace" if not isinstance(namespace, str) else "name"
            return self._refusal(session, echo, request_id, RPCError(400, f"{missing} must be a string"))
        return self.handle_request(session, namespace, name, request_id, message.get("args"))

    def handle_request(
        self, session: Session, namespace: str, name: str, request_id: str, args: Any
    ) -> Deferred[dict[str, Any] | None]:
        echo = namespace if namespace in ("rpc", "events") else "rpc"

        def ok(result: Any) -> dict[str, Any] | None:
            if (namespace, name) == ("rpc", "auth_clear"):
                return None
            return reply(echo, request_id, result)

        def failed(f: Failure) -> dict[str, Any]:
            if f.check(RPCError):
                return error_reply(echo, request_id, cast(RPCError, f.value))
            log.failure("bug while handling {namespace}/{name}", f, namespace=namespace, name=name)
            return error_reply(echo, request_id, RPCError(500, "internal error; the server log has the details"))

        # Most handlers answer at once: only those that wait pay for Deferreds.
        try:
            result = self._dispatch(session, namespace, name, args)
        except Exception:
            return succeed(failed(Failure()))
        if isinstance(result, Deferred):
            return result.addCallbacks(ok, failed)
        return succeed(ok(result))

    def _dispatch(self, session: Session, namespace: str, name: str, args: Any) -> Any:
        """The handler's result: a value, or a Deferred of one.  Raises ``RPCError``."""
        key = (namespace, name)
        # Before anything else, and so before any password or token is looked
        # at.  (auth_clear keeps its rule of no reply; it only forgets a token.)
        if key != ("rpc", "auth_clear"):
            try:
                self.check_address(session)
            except RPCError:
                if key == ("rpc", "auth"):
                    self.auth.count_login(session.transport, "blocked")
                raise
        if key not in PUBLIC:
            self._require_user(session)
        handler = self.handlers.get(key)
        if handler is None:
            raise RPCError(404, f"unknown request {namespace}/{name}")
        return handler(session, args)

    def _require_user(self, session: Session) -> User:
        if session.token is not None:
            try:
                session.user = self.auth.use_token(session.token)
            except LoginFailed:
                session.user = None
                session.token = None
                raise RPCError(401, "the session's token has expired or was revoked; log in again") from None
        if session.user is None:
            raise RPCError(401, "not authenticated: log in with rpc/auth first")
        return session.user

    def _require_full(self, session: Session, what: str, args: Any = None) -> None:
        user = self._require_user(session)
        if not user.may_write:
            # The audit trail: who tried what, from where.
            log.info("refused: user {username} from {peer} has read-only access and may not {what}: {jobs}",
                     username=user.name, peer=session.peer, what=what, jobs=_job_ids(args))
            raise RPCError(403, f"user {user.name!r} has read-only access and may not {what}")

    # Authentication.

    @inlineCallbacks
    def auth_login(self, session: Session, args: Any) -> Any:
        if not isinstance(args, dict):
            raise RPCError(400, "auth: args must be an object with username and password")
        username, password = args.get("username"), args.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise RPCError(400, "auth: username and password must be strings")
        _require_text("auth", username=username, password=password)
        session.logging_in += 1
        try:
            user = yield self.auth.login(username, password, session.peer, transport=session.transport)
        except AddressBlocked as e:
            raise RPCError(403, str(e)) from None
        except LoginBusy as e:
            log.info("refused a login for {username!r} from {peer}: {why}", username=username[:64],
                     peer=session.peer, why=str(e))
            raise RPCError(503, str(e)) from None
        except LoginFailed:
            log.info("failed login for {username!r} from {peer}", username=username[:64], peer=session.peer)
            raise RPCError(401, "bad username or password") from None
        finally:
            session.logging_in -= 1
        if session.token is not None:
            self.auth.revoke_token(session.token)
        session.user = user
        session.token = self.auth.issue_token(user)
        log.info("user {username} logged in from {peer}", username=user.name, peer=session.peer)
        return [session.token, int(self.auth.token_ttl)]

    def auth_token(self, session: Session, args: Any) -> Any:
        token = args.get("token") if isinstance(args, dict) else None
        if not isinstance(token, str):
            raise RPCError(400, "auth_token: args must be an object with a string token")
        _require_text("auth_token", token=token)
        try:
            user = self.auth.use_token(token)
        except LoginFailed:
            raise RPCError(401, "unknown or expired token") from None
        session.user = user
        session.token = token
        return [token, int(self.auth.token_ttl)]

    def auth_clear(self, session: Session, args: Any) -> None:
        if session.token is not None:
            self.auth.revoke_token(session.token)
        session.token = None
        session.user = None

    def identify(self, session: Session, args: Any) -> Any:
        return {"type": "server", "hostname": self.hostname}

    def query(self, session: Session, args: Any) -> Any:
        user = self._require_user(session)
        return {
            "rpc/dispatcher": "read/write" if user.may_write else "read",
            "rpc/logs": "read",
        }

    # The dispatcher.

    def dispatcher_request(self, session: Session, args: Any) -> Any:
        if not isinstance(args, dict):
            raise RPCError(400, "dispatcher: args must be an object with an action")
        action = args.get("action")
        if action == "list":
            if not self.dispatcher.recovered:
                # Just started: the jobs kept in the store are being taken up.
                return self.dispatcher.when_recovered().addCallback(lambda _: {"jobs": self.dispatcher.list_jobs()})
            return {"jobs": self.dispatcher.list_jobs()}
        if action == "run":
            return self._run(session, args)
        if action == "kill":
            return self._kill(session, args)
        if action is None:
            raise RPCError(400, "dispatcher: action is missing (list, run or kill)")
        raise RPCError(400, f"dispatcher: unknown action {str(action)[:64]!r} (list, run or kill)")

    def _run(self, session: Session, args: dict[str, Any]) -> Any:
        self._require_full(session, "run jobs", args)
        user = session.user
        try:
            specs = self.dispatcher.parse_run(args, user.name if user else None)
            submitted = self.dispatcher.submit(specs)
        except InvalidJob as e:
            raise RPCError(400, str(e)) from None
        except Unavailable as e:
            raise RPCError(503, str(e)) from None

        # The reply waits until the jobs are recorded (with a store).
        def started(jobs: list[Any]) -> Any:
            # One line per request says who asked for what: the audit trail.
            user = session.user
            log.info("user {username} from {peer} queued {jobs!r}", username=user.name if user else "?",
                     peer=session.peer, jobs={j.id: [j.queue, *j.spec.commands] for j in jobs})
            return {"started": [job.id for job in jobs]}

        return submitted.addCallbacks(started, _refused)

    def _kill(self, session: Session, args: dict[str, Any]) -> Any:
        self._require_full(session, "kill jobs", args)
        job_id = args.get("job_id")
        if isinstance(job_id, str):
            ids = [job_id]
        elif isinstance(job_id, list) and job_id and all(isinstance(i, str) for i in job_id):
            ids = job_id
        else:
            raise RPCError(400, "kill: job_id must be a string or a non-empty list of strings")
        _require_text("kill", job_id="".join(ids))
        user = session.user
        d = self.dispatcher.kill(ids, user.name if user else None)
        return d.addCallback(lambda result: {"killed": {"jobs": result[0], "not_found": result[1]}})

    # The history.

    def logs_request(self, session: Session, args: Any) -> Any:
        """``rpc/logs`` (any role): ``read_logs`` and ``job``; see docs/protocol.rst."""
        if not isinstance(args, dict):
            raise RPCError(400, "logs: args must be an object with an action")
        action = args.get("action")
        try:
            if action == "read_logs":
                query = parse_read_logs(args, self.dispatcher.reactor.seconds())
                d = self.dispatcher.read_history(query.start, query.end, query.limit)
                return d.addCallbacks(lambda page: read_logs_reply(query, *page), _refused)
            if action == "job":
                return self._last_record(args.get("job_id"))
        except BadQuery as e:
            raise RPCError(400, str(e)) from None
        except Unavailable as e:
            raise RPCError(503, str(e)) from None
        if action is None:
            raise RPCError(400, "logs: action is missing (read_logs or job)")
        raise RPCError(400, f"logs: unknown action {str(action)[:64]!r} (read_logs or job)")

    def _last_record(self, job_id: Any) -> Deferred[Any]:
        if not isinstance(job_id, str) or not job_id:
            raise RPCError(400, "logs: job_id must be a non-empty string")
        _require_text("logs", job_id=job_id)

        def found(record: dict[str, Any] | None) -> dict[str, Any]:
            if record is None:
                raise RPCError(404, f"no job {job_id[:256]!r}: none is pending or running, and none in the history")
            return flat_record(record)

        return self.dispatcher.last_record(job_id).addCallbacks(found, _refused)

    # Events.

    def _event_names(self, session: Session, args: Any, verb: str) -> list[str]:
        if session.events is None:
            raise RPCError(400, f"events/{verb} needs a WebSocket connection; this transport cannot push events")
        if isinstance(args, str):
            names = [args]
        elif isinstance(args, list) and all(isinstance(a, str) for a in args):
            names = list(args)
        else:
            raise RPCError(400, f"events/{verb}: args must be an event name or a list of names")
        known = [n for n in names if n in self.dispatcher.events.names]
        if not known:
            known_names = ", ".join(self.dispatcher.events.names)
            raise RPCError(400, f"events/{verb}: no known event named (known: {known_names})")
        return known

    def subscribe(self, session: Session, args: Any) -> Any:
        names = self._event_names(session, args, "subscribe")
        assert session.events is not None
        for name in names:
            session.events.subscribe(name)
        return {"subscribe": names[0] if len(names) == 1 else names}

    def unsubscribe(self, session: Session, args: Any) -> Any:
        names = self._event_names(session, args, "unsubscribe")
        assert session.events is not None
        for name in names:
            session.events.unsubscribe(name)
        return {"unsubscribe": names[0] if len(names) == 1 else names}


def _job_ids(args: Any) -> str:
    """The job ids a ``run`` or ``kill`` names, for the log (not their commands or environment)."""
    if not isinstance(args, dict):
        return "?"
    if "job_id" in args:
        ids = args["job_id"]
    elif isinstance(args.get("jobs"), list):
        ids = [job.get("id", f"jobs[{n}]") if isinstance(job, dict) else "?" for n, job in enumerate(args["jobs"])]
    else:
        ids = [key for key in args if key != "action"]
    return ascii(ids)[:200]


def _require_text(what: str, **fields: str) -> None:
    """For callers that bypass ``decode_json`` (which refuses such strings anywhere in a message)."""
    for name, value in fields.items():
        if _not_text(value) is not None:
            raise RPCError(400, f"{what}: {name} is not valid Unicode text (it holds a lone surrogate)")


def _refused(f: Failure) -> Failure:
    """Dispatcher refusals that arrive late (with a store) as error replies."""
    if f.check(InvalidJob):
        return Failure(RPCError(400, f.getErrorMessage()))
    if f.check(Unavailable):
        return Failure(RPCError(503, f.getErrorMessage()))
    return f


def _done(value: Any) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.callback(value)
    return d
