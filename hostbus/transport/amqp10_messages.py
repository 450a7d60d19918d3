"""AMQP 1.0 messages for the proton transport: hostbus properties and bodies to proton
Messages and back, and the one field RabbitMQ 3.10 mangles on the way from 0-9-1.

RabbitMQ passes a 0-9-1 publish's ``user_id`` to AMQP 1.0 receivers as a string where
AMQP 1.0 says binary, and proton's Message decoder drops it without a word; a mixed
fleet would lose the broker-checked caller. ``text_user_id`` reads it from the raw frame.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from cproton import PN_OVERFLOW, pn_message_encode
from proton import Data, Described, Message, ProtonException

from hostbus.transport.addresses import RabbitMQv1
from hostbus.transport.base import Properties

log = logging.getLogger("hostbus.transport.amqp10")

_scratch = threading.local()  # one reusable proton Message per publishing thread

# Room for the header, properties and application properties around the body.
_ENVELOPE_ROOM = 512


class _SizedMessage(Message):  # type: ignore[misc]
    """proton's ``encode`` starts from a 16-byte buffer and doubles it on each overflow:
    six encodes for a 300-byte event (yappi, 20,000 emits). This one starts from an
    estimate, so one encode does."""

    size_hint = 0

    def encode(self) -> bytearray:
        self._pre_encode()
        size = self.size_hint or 16
        while True:
            err, data = pn_message_encode(self._msg, size)
            if err != PN_OVERFLOW:
                self._check(err)
                return data
            size *= 2


def encode_message(props: Properties, body: bytes, persistent: bool, address: str,
                   subject: str) -> bytes:
    """The message as AMQP 1.0 bytes, encoded on the caller's thread: the I/O thread
    only streams them (encoding there was a fifth of its time, profiled)."""
    msg = getattr(_scratch, "msg", None)
    if msg is None:
        msg = _scratch.msg = _SizedMessage()
    else:
        msg.clear()
    msg.size_hint = len(body) + _ENVELOPE_ROOM
    msg.inferred = True
    msg.body = body  # one Data section: 0-9-1 peers get the bytes
    msg.id = props.message_id
    msg.correlation_id = props.correlation_id
    msg.reply_to = props.reply_to
    msg.content_type = props.content_type
    if props.user_id:
        msg.user_id = props.user_id.encode()
    msg.durable = persistent
    if props.timestamp:
        msg.creation_time = float(props.timestamp)
    app = dict(props.headers or {})
    if props.type:
        app["type"] = props.type  # no 1.0 field for it; see docs/amqp10-interop.md
    msg.properties = app or None
    msg.address, msg.subject = address, subject  # receivers learn the route
    return msg.encode()


def body_bytes(body: Any) -> tuple[bytes, str | None]:
    """The body's bytes, and the kind of AMQP value it was when it was not one Data
    section (bytes), as hostbus bodies must be."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), None
    if body is None:
        return b"", None
    # An AmqpValue (a string, a map ...): a 0-9-1 receiver gets its AMQP encoding, so this
    # one does too. It is not JSON, and the receiver refuses it as a bad message.
    data = Data()
    try:
        data.put_object(body)
        encoded = data.encode()
    except (ProtonException, TypeError, KeyError, ValueError):
        encoded = b""
    return encoded, type(body).__name__


def from_message(msg: Message) -> tuple[bytes, Properties]:
    app = dict(msg.properties or {})
    kind = app.pop("type", None)
    user = msg.user_id.decode(errors="replace") if msg.user_id else None
    stamp = int(msg.creation_time) if msg.creation_time else None
    body, value_kind = body_bytes(msg.body)
    if value_kind is not None:
        log.warning("message %s has an AMQP value body (%s), not a Data section of JSON "
                    "bytes: it will be refused", msg.id, value_kind)
    props = Properties(
        message_id=str(msg.id) if msg.id is not None else None,
        correlation_id=str(msg.correlation_id) if msg.correlation_id is not None else None,
        reply_to=RabbitMQv1.reply_to_name(msg.reply_to), content_type=msg.content_type,
        type=kind if isinstance(kind, str) else None, user_id=user, timestamp=stamp,
        headers={str(k): v for k, v in app.items()})
    return body, props


_PROPERTIES = 0x73  # descriptor of the AMQP 1.0 properties section
# Constructors of the sections before it (header, annotations: lists and maps) -> the
# width of their size field, so they can be stepped over without decoding them.
_SIZED = {0xC0: 1, 0xC1: 1, 0xD0: 4, 0xD1: 4}
# message-id encodings -> (bytes before the value, width of a length field, fixed size)
_ID_FORMS = {0x40: (1, 0, 0), 0x44: (1, 0, 0), 0x53: (1, 0, 1), 0x80: (1, 0, 8),
             0x98: (1, 0, 16), 0xA0: (1, 1, 0), 0xA1: (1, 1, 0), 0xA3: (1, 1, 0),
             0xB0: (1, 4, 0), 0xB1: (1, 4, 0), 0xB3: (1, 4, 0)}


def text_user_id(raw: bytes) -> str | None:
    """The user_id of an encoded message when it was sent as a string, not binary (how
    RabbitMQ 3.10 forwards a 0-9-1 publish): proton's Message drops that form. Walks
    the frame's first sections by hand (a full decode cost a tenth of a subscriber's
    time); anything unexpected goes to proton's decoder instead."""
    try:
        pos = 0
        while raw[pos] == 0x00 and raw[pos + 1] == 0x53:
            code, pos = raw[pos + 2], pos + 3
            ctor = raw[pos]
            if code == _PROPERTIES:
                return _user_field(raw, pos)
            if ctor == 0x45:  # an empty list
                pos += 1
                continue
            width = _SIZED[ctor]
            pos += 1 + width + int.from_bytes(raw[pos + 1:pos + 1 + width], "big")
    except (IndexError, KeyError, ValueError):
        pass
    return decoded_user_id(raw)


def _user_field(raw: bytes, pos: int) -> str | None:
    ctor = raw[pos]
    if ctor == 0x45:
        return None
    width = {0xC0: 1, 0xD0: 4}[ctor]
    count = int.from_bytes(raw[pos + 1 + width:pos + 1 + 2 * width], "big")
    if count < 2:
        return None
    pos += 1 + 2 * width
    lead, length_width, fixed = _ID_FORMS[raw[pos]]  # step over message-id
    size = int.from_bytes(raw[pos + 1:pos + 1 + length_width], "big") if length_width \
        else fixed
    pos += lead + length_width + size
    ctor = raw[pos]
    if ctor == 0x40:
        return None
    width = {0xA0: 1, 0xA1: 1, 0xB0: 4, 0xB1: 4}[ctor]
    size = int.from_bytes(raw[pos + 1:pos + 1 + width], "big")
    user = bytes(raw[pos + 1 + width:pos + 1 + width + size])
    if len(user) != size:
        raise ValueError("truncated user_id")
    return user.decode() or None


def decoded_user_id(raw: bytes) -> str | None:
    data, pos = Data(), 0
    while pos < len(raw):
        data.clear()
        try:
            used = data.decode(raw[pos:])
            data.rewind()
            data.next()
            section = data.get_object()
        except Exception:  # proton's decoder on hostile bytes: ValueError, DataException ...
            return None
        if used <= 0:
            return None
        pos += used
        if isinstance(section, Described) and section.descriptor == _PROPERTIES:
            fields = section.value
            user = fields[1] if isinstance(fields, list) and len(fields) > 1 else None
            return user if isinstance(user, str) and user else None
    return None
