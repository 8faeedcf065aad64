"""Connections made only to addresses the URL policy approved, within one download's wall-clock deadline."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from active_learning.images.urls import ImageError, Origin, canonical_host

if TYPE_CHECKING:
    from active_learning.images.urls import UrlPolicy


class Deadline:
    """The wall-clock budget of one download. When it passes, every socket opened for the download is shut
    down, which wakes whatever read or handshake is blocked on it: a dripping server cannot stretch it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._fired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    @property
    def expired(self) -> bool:
        return self._fired or time.monotonic() >= self._at

    def remaining(self) -> float:
        return max(0.0, self._at - time.monotonic())

    def track(self, sock: socket.socket) -> None:
        """Watch ``sock`` through a duplicate descriptor (TLS wrapping detaches the original object)."""
        with self._lock:
            try:
                self._sockets.append(sock.dup())
            except OSError:
                sock.close()  # unwatched, it could outlast the deadline
                raise
            if self._fired:
                _shut(self._sockets[-1])

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def _expire(self) -> None:
        with self._lock:
            self._fired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the other side


_active = threading.local()
"""The policy and deadline of the download running on this thread, for the connections it opens."""


@contextmanager
def active_download(policy: "UrlPolicy", deadline: Deadline) -> Iterator[None]:
    """Connections opened on this thread inside the block obey ``policy`` and ``deadline``."""
    _active.policy, _active.deadline = policy, deadline
    try:
        yield
    finally:
        _active.policy = _active.deadline = None


class _GuardedConnection:
    """Mixed into urllib3's connections: connects only to addresses ``UrlPolicy.addresses`` approved, within
    the download's deadline, and hands the socket to the deadline."""

    scheme = "http"

    def _new_conn(self) -> socket.socket:
        policy, deadline = getattr(_active, "policy", None), getattr(_active, "deadline", None)
        if policy is None or deadline is None:
            raise ImageError("image connection attempted outside a download")
        origin = Origin(self.scheme, canonical_host(self.host, self.host), self.port)
        addresses = policy.addresses(origin, deadline.remaining())
        error: Exception = ConnectTimeoutError(self, f"connection to {self.host} timed out")
        for address in addresses:
            if deadline.expired:
                break
            try:
                sock = urllib3_connection.create_connection((address, self.port), deadline.remaining(),
                                                            source_address=self.source_address,
                                                            socket_options=self.socket_options)
            except socket.timeout:
                error = ConnectTimeoutError(self, f"connection to {self.host} timed out")
            except OSError as exc:
                error = NewConnectionError(self, f"failed to connect: {exc}")
            else:
                deadline.track(sock)
                return sock
        raise error


class _GuardedHTTPConnection(_GuardedConnection, HTTPConnection):
    scheme = "http"


class _GuardedHTTPSConnection(_GuardedConnection, HTTPSConnection):
    scheme = "https"


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """requests' adapter, with every connection made by ``_GuardedConnection``."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
