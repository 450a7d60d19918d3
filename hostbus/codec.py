"""Bytes <-> JSON for message bodies: UTF-8 JSON objects only, bounded in size.

orjson is used because it is strict (rejects invalid UTF-8, lone surrogates, NaN) and
several times faster than the standard library on the request path.
"""

from __future__ import annotations

from typing import Any

import orjson

from hostbus.errors import ErrorCode, RemoteError

CONTENT_TYPE = "application/json"


def media_type(content_type: str | None) -> str:
    """The media type without parameters: ``application/json; x=y`` -> ``application/json``
    (hostbus carries its signature as a content_type parameter; see hostbus.security.signing)."""
    return (content_type or "").partition(";")[0].strip().lower()


def encode(obj: Any) -> bytes:
    return orjson.dumps(obj)


def decode_object(body: bytes, *, max_bytes: int | None = None, what: str = "body") -> dict:
    """Decode one JSON object; anything else is a wire error the sender can act on."""
    if max_bytes is not None and len(body) > max_bytes:
        raise RemoteError(
            ErrorCode.TOO_LARGE,
            f"{what} is {len(body)} bytes; this agent accepts at most {max_bytes}",
            {"size": len(body), "limit": max_bytes},
        )
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RemoteError(
            ErrorCode.BAD_MESSAGE, f"{what} is not valid UTF-8 JSON: {exc}"
        ) from None
    if not isinstance(obj, dict):
        raise RemoteError(
            ErrorCode.BAD_MESSAGE, f"{what} must be a JSON object, got {type(obj).__name__}"
        )
    return obj
