"""
The server's listeners: an endpoint string made into an endpoint (a bad one
stops the server in one line), and a listener service whose port can be
asked for.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
)

from .transports.limits import calm_accept


def tls_endpoint(spec: str, cert: str, key: str) -> str:
    """A ``tcp:`` endpoint string made into the ``ssl:`` one with the same port and options."""
    if not spec.startswith("tcp:"):
        return spec
    return f"ssl:{spec[4:]}:privateKey={quoteStringArgument(key)}:certKey={quoteStringArgument(cert)}"


def endpoint(reactor: IReactorCore, option: str, spec: str, tls_option: bool = False) -> IStreamServerEndpoint:
    """``serverFromString``, its errors made into one line naming ``--option`` (``SystemExit``)."""
    try:
        return serverFromString(reactor, spec)
    except ImportError as e:
        # TLS is a normal dependency; a broken install still gets its fix named.
        which = "--tls-cert" if tls_option else f"--{option} {spec!r}"
        raise SystemExit(f"sysadm-dispatch: {which} needs the {e.name or 'missing'} module ({e}): "
                         "install it with pip install 'twisted[tls]' in the server's environment") from None
    except Exception as e:  # any reason (an unreadable TLS key, say) is reported in one line
        raise SystemExit(f"sysadm-dispatch: --{option} {spec!r}: {e or type(e).__name__}") from None


class ListenerService(StreamServerEndpointService):
    """A listener whose bound port can be asked for (useful with port 0)."""

    def __init__(self, name: str, endpoint: IStreamServerEndpoint, factory: IProtocolFactory, spec: str,
                 clock: IReactorTime) -> None:
        super().__init__(endpoint, factory)
        self.clock = clock
        self.setName(name)
        self.spec = spec
        self._listening: list[Deferred[IListeningPort]] = []
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # A listener that cannot bind stops the server at start, in one line:
        # a server listening on nothing would look up to a service manager.
        self._raiseSynchronously = True
        try:
            super().privilegedStartService()
        except Exception as e:
            reason = getattr(e, "socketError", None) or e
            where = f"--{self.name} {self.spec!r}" if self.spec else f"the {self.name} listener"
            raise SystemExit(f"sysadm-dispatch: {where}: cannot listen: {reason}") from None
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        calm_accept(port, self.clock)
        for d in self._listening:
            d.callback(port)
        self._listening.clear()
        return port

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once bound."""
        d: Deferred[IListeningPort] = Deferred()
        if self.port is not None:
            d.callback(self.port)
        else:
            self._listening.append(d)
        return d
