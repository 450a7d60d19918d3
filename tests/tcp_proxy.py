"""A TCP proxy on loopback between a client and the broker, for tests that need a
connection to drop (or go silent) while the broker stays up: ``cut()`` closes every
connection through it (new ones are let through unless it ``refuse``s them),
``blackhole()`` makes it swallow what
clients send, so their last words never reach the broker."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._swallow = False
        self._refuse = False
        self.swallowed = 0  # bytes from clients dropped while a blackhole
        self._swallowed_cond = threading.Condition(self._lock)
        self._closed = False
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    @classmethod
    def to(cls, url: str) -> TcpProxy:
        """A proxy to the broker of a hostbus URL."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5672)

    def url(self, url: str) -> str:
        """``url`` with its broker replaced by this proxy."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{auth}@127.0.0.1:{self.port}"))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            if self._refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self._swallow:
                    with self._lock:
                        self.swallowed += len(data)
                        self._swallowed_cond.notify_all()
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def blackhole(self, on: bool = True) -> None:
        """From now on, drop what clients send (the broker hears nothing more)."""
        with self._lock:
            self._swallow = on
            self.swallowed = 0

    def wait_swallowed(self, at_least: int = 1, timeout: float = 30) -> bool:
        with self._lock:
            return self._swallowed_cond.wait_for(lambda: self.swallowed >= at_least, timeout)

    def refuse(self, on: bool = True) -> None:
        """From now on, close new connections at once (the broker seems gone); with
        ``cut()``, a client is offline until ``refuse(False)``."""
        self._refuse = on

    def cut(self) -> None:
        """Close every connection through the proxy, both ways; new ones pass."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
            self._swallow = False
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()
        self.cut()
