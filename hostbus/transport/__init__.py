"""Transports: one small interface (``base``) with interchangeable backends.

- ``memory``: an in-process broker for unit tests (no network, same semantics).
- ``amqp091``: pika over AMQP 0-9-1.
- ``amqp10``: python-qpid-proton over AMQP 1.0 (addresses per broker in ``addresses``).

``connect(url)`` picks the backend from the URL scheme (``url`` parses it).
"""

from __future__ import annotations

from typing import Any

from hostbus.errors import ConfigError
from hostbus.transport.base import Delivery, Properties, Transport
from hostbus.transport.url import parse_url

__all__ = ["Delivery", "Properties", "Transport", "connect"]


def connect(url: str, **options: Any) -> Transport:
    """Build (not start) the transport for ``url``. Every component builds its
    transport here, so a new protocol is one more branch, not an edit everywhere."""
    parsed = parse_url(url)
    if parsed.scheme == "memory":
        raise ConfigError("memory:// transports are built directly: MemoryTransport(broker)")
    if parsed.scheme in ("amqp10", "amqps10"):
        try:
            from hostbus.transport.amqp10 import ProtonTransport
        except ModuleNotFoundError:
            raise ConfigError("amqp10:// needs python-qpid-proton: pip install "
                              "'hostbus[amqp10]'") from None
        return ProtonTransport(url, **options)
    from hostbus.transport.amqp091 import PikaTransport

    return PikaTransport(url, **options)
