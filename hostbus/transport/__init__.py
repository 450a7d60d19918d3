"""Transports: one small interface (``base``) with interchangeable backends.

- ``memory``: an in-process broker for unit tests (no network, same semantics).
- ``amqp091``: pika over AMQP 0-9-1.

``connect(url)`` picks the backend from the URL scheme.
"""

from hostbus.transport.base import Delivery, Properties, Transport, connect

__all__ = ["Delivery", "Properties", "Transport", "connect"]
