"""The error hierarchy and the closed set of wire error codes.

Library errors (pika, psutil, OS) are translated into these at the edge so callers
handle one hierarchy. ``ErrorCode`` is the closed set carried in reply bodies; it is
mirrored by ``schemas/envelope/reply.v1.json`` and documented in ``docs/errors.md``
(a contract test keeps the three in step).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_MESSAGE = "bad_message"  # not a hostbus request: bytes, JSON, properties or fields
    TOO_LARGE = "too_large"  # body over the agent's configured size limit
    INVALID_ARGS = "invalid_args"  # arguments do not match the method's schema
    UNKNOWN_AGENT = "unknown_agent"  # no such agent enabled on this host
    UNKNOWN_METHOD = "unknown_method"  # the agent has no such method (or object class)
    UNSUPPORTED = "unsupported"  # the method exists but this host cannot do it
    NOT_FOUND = "not_found"  # the object named in the arguments does not exist
    CONFLICT = "conflict"  # the object is not in a state that allows the action
    UNAUTHORIZED = "unauthorized"  # the policy denied the caller
    APPROVAL_REQUIRED = "approval_required"  # the policy wants a second person
    EXPIRED = "expired"  # the request's deadline passed before it could run
    REPLAYED = "replayed"  # the request id was seen before
    BAD_SIGNATURE = "bad_signature"  # missing, malformed or untrusted signature
    FAILED = "failed"  # the action was attempted and failed
    TIMEOUT = "timeout"  # console side: no reply in time; agent side: ran past deadline
    INTERNAL = "internal"  # a bug in the agent; the details say where


class HostbusError(Exception):
    """Root of every error hostbus raises on purpose."""


class ConfigError(HostbusError):
    """A configuration file or value is wrong; the message names the key and the fix."""


class ConnectionFailed(HostbusError):
    """The broker could not be reached or refused us; the message says which and why."""


class ConnectionLost(HostbusError):
    """The connection dropped while an operation waited on it; it is being restored.
    What was sent may or may not have arrived: retry with the same ids."""


class BrokerRefused(HostbusError):
    """The broker refused an operation (access refused, not found, precondition)."""


class BrokerBlocked(BrokerRefused):
    """The broker is not taking publishes for now (a resource alarm: memory or disk);
    the connection stays open and nothing was sent."""


class TransportClosed(HostbusError):
    """The transport was closed while an operation was waiting on it."""


class SchemaError(HostbusError):
    """A schema file is malformed, or an agent's code disagrees with its schema."""


class RemoteError(HostbusError):
    """An error carried on the wire: raised by agent methods, returned to callers."""

    def __init__(
        self, code: ErrorCode | str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details or {}

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.details:
            wire["details"] = self.details
        return wire

    def __repr__(self) -> str:
        return f"RemoteError({self.code.value!r}, {self.message!r})"
