"""Broker URLs: ``amqp[s]://`` (AMQP 0-9-1) and ``amqp[s]10://`` (AMQP 1.0), with TLS
files in the query; several comma-separated URLs are the nodes of one cluster."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from hostbus.errors import ConfigError, ConnectionFailed


def broker_urls(url: str) -> list[BrokerURL]:
    """The URLs of a comma-separated list: the nodes of one cluster, tried in turn."""
    urls = [parse_url(u) for u in split_urls(url)]
    if len({(u.user, u.vhost) for u in urls}) > 1:
        raise ConfigError("all broker URLs must have the same user and vhost (they are "
                          "nodes of one cluster)")
    return urls



@dataclass(frozen=True, slots=True)
class BrokerURL:
    scheme: str
    host: str
    port: int
    user: str
    password: str
    vhost: str
    #: TLS (amqps): the CA that signed the broker's certificate (default: the system's),
    #: and this identity's client certificate and key.
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    @property
    def external(self) -> bool:
        """SASL EXTERNAL: the client certificate is the credential (no password given)."""
        return self.certfile is not None and not self.password

    def redacted(self) -> str:
        return f"{self.scheme}://{self.user}@{self.host}:{self.port}/{self.vhost}"


def split_urls(urls: str) -> list[str]:
    """Several brokers (a cluster) are given as one string, separated by commas; they are
    tried in turn."""
    found = [u.strip() for u in urls.split(",") if u.strip()]
    if not found:
        raise ConfigError("the broker URL is empty; give amqp://user:pass@host:port/vhost")
    return found


TLS_KEYS = ("cafile", "certfile", "keyfile")


def parse_url(url: str) -> BrokerURL:
    """Parse ``amqp[s]://user:pass@host:port/vhost`` (the first, if several are given);
    the vhost defaults to ``hostbus``. TLS files go in the query:
    ``amqps://web01@broker:5671/hostbus?cafile=ca.pem&certfile=web01.pem&keyfile=web01.key``
    (a client certificate and no password means SASL EXTERNAL: the broker takes the
    user from the certificate's common name, which must equal the user given)."""
    parts = urlsplit(split_urls(url)[0])
    if parts.scheme not in ("amqp", "amqps", "amqp10", "amqps10", "memory"):
        raise ConfigError(
            f"broker URL {url!r} has scheme {parts.scheme!r}; use amqp:// or amqps:// "
            "(AMQP 0-9-1), amqp10:// or amqps10:// (AMQP 1.0)"
        )
    tls_scheme = parts.scheme in ("amqps", "amqps10")
    default_port = 5671 if tls_scheme else 5672
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.path == "/":
        # amqp://host/ reads as the empty vhost (the AMQP URI spec) or RabbitMQ's "/"
        # to different people; hostbus's default would be a third answer: say which.
        raise ConfigError(
            f"broker URL {parts.scheme}://{parts.hostname or ''}/ ends in an empty vhost "
            "path (a lone '/'): write /hostbus for "
            "hostbus's vhost (the default when there is no path at all), or /%2F for "
            "RabbitMQ's default vhost '/'")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r}: {exc}") from None
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(TLS_KEYS))
    if unknown:
        raise ConfigError(f"broker URL option {unknown[0]!r} is unknown; known: "
                          f"{', '.join(TLS_KEYS)}")
    tls = {k: query[k][-1] for k in TLS_KEYS if k in query}
    if tls and not tls_scheme:
        raise ConfigError(f"broker URL gives {', '.join(tls)} but its scheme is "
                          f"{parts.scheme}://; use amqps:// (or amqps10://) for TLS")
    if ("certfile" in tls) != ("keyfile" in tls):
        raise ConfigError("broker URL: give certfile and keyfile together (the client "
                          "certificate and its key)")
    for key, file in tls.items():
        if not Path(file).is_file():
            raise ConfigError(f"broker URL {key}={file}: no such file")
    has_cert = "certfile" in tls
    return BrokerURL(
        scheme=parts.scheme,
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username or "guest"),
        # With a client certificate and no password the certificate is the credential.
        password=unquote(parts.password or ("" if has_cert else "guest")),
        vhost=unquote(path) or "hostbus",
        cafile=tls.get("cafile"), certfile=tls.get("certfile"), keyfile=tls.get("keyfile"),
    )


def check_resolvable(url: str) -> None:
    """Raise ``ConnectionFailed`` naming the host and the fix when no broker node's host
    name resolves (a typo in the URL): said at once, not as a connect timeout or a
    reconnect loop. Callers that must wait for DNS at boot (agents) do not call this."""
    nodes = broker_urls(url)
    failures: list[str] = []
    for node in nodes:
        try:
            socket.getaddrinfo(node.host, node.port, type=socket.SOCK_STREAM)
            return
        except (socket.gaierror, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
            failures.append(f"{node.host!r} ({reason})")
    raise ConnectionFailed(
        f"{nodes[0].redacted()}: cannot resolve the broker's host name "
        f"{' nor '.join(failures)}: check the host in the broker URL (--url, "
        "HOSTBUS_BROKER_URL or [broker] url), or the machine's DNS")
