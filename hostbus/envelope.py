"""The four message kinds (requests, replies, events and provisioning requests):
building them and reading them back.

Reading is strict and ordered cheapest-first (size, properties, JSON, schema, deadline)
so hostile input is refused early; every refusal is a ``RemoteError`` with a documented
code and a message that names the field and the fix.
"""

from __future__ import annotations

import copy
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hostbus import codec, names
from hostbus.errors import ErrorCode, RemoteError
from hostbus.schema import envelope_validator
from hostbus.transport.base import Delivery, Properties

REQUEST_TYPE = "hostbus.request/1"
REPLY_TYPE = "hostbus.reply/1"
EVENT_TYPE = "hostbus.event/1"
PROVISION_TYPE = "hostbus.provision/1"


# Replies and events get their message ids from a Mersenne Twister seeded once from the
# OS: same uuid4 format, no system call each. os.urandom costs 12 us a call on this VM,
# a quarter of an event's publish (profiled). Request ids stay os.urandom-backed
# uuid4s: they are replay-protection keys and should not be guessable.
_ids = random.Random()


def fast_uuid4() -> str:
    n = _ids.getrandbits(128)
    n = (n & ~(0xF << 76)) | (0x4 << 76)  # version 4
    n = (n & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now_rfc3339(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RemoteError(
            ErrorCode.BAD_MESSAGE, f"{what} {text!r} is not an RFC 3339 time"
        ) from None
    if moment.tzinfo is None:
        raise RemoteError(
            ErrorCode.BAD_MESSAGE, f"{what} {text!r} has no time zone; append 'Z' for UTC"
        )
    return moment


# ------------------------------------------------------------------------ requests
@dataclass(slots=True)
class Request:
    agent: str
    method: str
    args: dict[str, Any]
    target: dict[str, Any]
    deadline: datetime
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    reply_to: str | None = None
    user_id: str | None = None  # set by the broker-validated property on receipt

    @property
    def host(self) -> str | None:
        return self.target.get("host")

    @property
    def broadcast_filter(self) -> dict[str, Any] | None:
        return self.target.get("filter", {}) if self.target.get("all") else None

    def routing_key(self) -> str:
        return names.request_key(self.agent, self.host)

    def encode(self) -> tuple[bytes, Properties]:
        body = codec.encode({
            "v": 1, "agent": self.agent, "method": self.method, "args": self.args,
            "target": self.target, "deadline": now_rfc3339(self.deadline),
        })
        ttl_ms = max(1, int((self.deadline - datetime.now(UTC)).total_seconds() * 1000))
        props = Properties(
            message_id=self.message_id, reply_to=self.reply_to,
            content_type=codec.CONTENT_TYPE, type=REQUEST_TYPE,
            timestamp=int(time.time()), expiration=str(ttl_ms),
        )
        return body, props


def new_request(
    agent: str, method: str, args: dict[str, Any] | None = None, *,
    host: str | None = None, filter: dict[str, Any] | None = None,
    timeout: float = 10.0, reply_to: str | None = None,
) -> Request:
    """A request to one host (``host``) or a broadcast (``host=None``, optional filter)."""
    target: dict[str, Any] = {"host": host} if host is not None else {"all": True}
    if host is None and filter:
        target["filter"] = filter
    return Request(
        agent=agent, method=method, args=dict(args or {}), target=target,
        deadline=datetime.now(UTC) + timedelta(seconds=timeout), reply_to=reply_to,
    )


def usable_reply_to(props: Properties) -> str | None:
    """The reply_to property if it is a name we may route to; otherwise None."""
    rt = props.reply_to
    if isinstance(rt, str) and names.REPLY_TO_RE.fullmatch(rt):
        return rt
    return None


# A type property that a protocol bridge left behind: RabbitMQ 3.10 drops `type` between
# AMQP 0-9-1 and 1.0, or sets it to "binary" (docs/amqp10-interop.md). Where a message
# arrives already says its kind (requests reach host queues only), and its body must
# still pass that kind's envelope schema; signatures cover the kind expected.
BRIDGED_TYPES = (None, "", "binary")


def check_properties(props: Properties, kind: str, what: str) -> None:
    """content_type and type for a message of ``kind``, or a ``bad_message`` error."""
    if codec.media_type(props.content_type) != codec.CONTENT_TYPE:
        raise RemoteError(
            ErrorCode.BAD_MESSAGE,
            f"content_type is {props.content_type!r}; {what} must be sent as "
            f"{codec.CONTENT_TYPE!r}",
        )
    if props.type != kind and props.type not in BRIDGED_TYPES:
        raise RemoteError(
            ErrorCode.BAD_MESSAGE,
            f"type property is {props.type!r}; {what} must carry type {kind!r}",
        )


#: message_id, reply_to, correlation_id and content_type are at most this many bytes on
#: both protocols (AMQP 0-9-1's short strings). AMQP 1.0 allows longer ones, and RabbitMQ
#: 3.10 cannot hand those to a 0-9-1 consumer; a receiver refuses them before it logs,
#: remembers or audits anything of them.
MAX_PROPERTY_BYTES = 255


def bounded(value: object, limit: int = MAX_PROPERTY_BYTES) -> str | None:
    """``value`` if it is a string of at most ``limit`` UTF-8 bytes, else None: what
    may be logged or used as a key when the message is refused."""
    if isinstance(value, str) and len(value) <= limit and len(value.encode()) <= limit:
        return value
    return None


def check_identity(props: Properties, what: str) -> tuple[str, str]:
    """(message_id, user_id) of a request or provisioning message, or ``bad_message``.
    user_id is the sender's broker user: the broker refuses a message whose user_id is
    not the sender's, and without it a request would run as nobody in particular."""
    for name in ("message_id", "reply_to", "correlation_id", "content_type"):
        value = getattr(props, name)
        if value is not None and bounded(value) is None:
            shown = (f"{len(value.encode())} bytes long" if isinstance(value, str)
                     else f"a {type(value).__name__}, not a string")
            raise RemoteError(ErrorCode.BAD_MESSAGE,
                              f"the {name} property is {shown}; {what} carry it as a string "
                              f"of at most {MAX_PROPERTY_BYTES} bytes")
    if not props.message_id:
        raise RemoteError(ErrorCode.BAD_MESSAGE, "message_id property is missing; set a uuid4")
    user = props.user_id
    if not isinstance(user, str) or not user:
        raise RemoteError(ErrorCode.BAD_MESSAGE,
                          f"user_id property is missing; {what} must carry the sender's "
                          "broker user name as user_id (the broker checks it)")
    return props.message_id, user


def parse_request(delivery: Delivery, *, max_bytes: int) -> Request:
    props = delivery.properties
    if len(delivery.body) > max_bytes:
        codec.decode_object(delivery.body, max_bytes=max_bytes)  # raises too_large
    message_id, user = check_identity(props, "requests")
    check_properties(props, REQUEST_TYPE, "requests")
    body = codec.decode_object(delivery.body, max_bytes=max_bytes)
    envelope_validator("request").validate(body)
    return Request(
        agent=body["agent"], method=body["method"], args=body["args"], target=body["target"],
        deadline=parse_rfc3339(body["deadline"], "deadline"), message_id=message_id,
        reply_to=usable_reply_to(props), user_id=user,
    )


# ------------------------------------------------------------------------- replies
@dataclass(slots=True)
class Reply:
    host: str
    agent: str
    status: str  # ok | error | pending
    method: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    elapsed_ms: float | None = None
    correlation_id: str | None = None
    user_id: str | None = None
    #: Console side: the reply failed signature checks and this error stands in for it.
    rejected: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error_code(self) -> str | None:
        return self.error["code"] if self.error else None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"v": 1, "host": self.host, "agent": self.agent,
                                "status": self.status}
        if self.method is not None:
            body["method"] = self.method
        if self.result is not None:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error
        if self.elapsed_ms is not None:
            body["elapsed_ms"] = round(self.elapsed_ms, 3)
        return body

    def encode(self) -> tuple[bytes, Properties]:
        props = Properties(
            message_id=fast_uuid4(), correlation_id=self.correlation_id,
            content_type=codec.CONTENT_TYPE, type=REPLY_TYPE,
        )
        return codec.encode(self.to_body()), props


def error_reply(
    host: str, agent: str, method: str | None, err: RemoteError,
    correlation_id: str | None, elapsed_ms: float | None = None,
) -> Reply:
    return Reply(host=host, agent=agent, method=method, status="error", error=err.to_wire(),
                 correlation_id=correlation_id, elapsed_ms=elapsed_ms)


def parse_reply(delivery: Delivery) -> Reply:
    body = codec.decode_object(delivery.body, what="reply body")
    return _reply(body, delivery.properties.correlation_id, delivery.properties.user_id)


def _reply(body: dict[str, Any], correlation_id: str | None, user_id: str | None) -> Reply:
    envelope_validator("reply").validate(body)
    return Reply(
        host=body["host"], agent=body["agent"], status=body["status"],
        method=body.get("method"), result=body.get("result"), error=body.get("error"),
        elapsed_ms=body.get("elapsed_ms"), correlation_id=correlation_id, user_id=user_id,
    )


def earlier_reply(reply: Reply) -> Reply | None:
    """What a ``replayed`` answer to a request says of the request's outcome.

    An agent answers ``replayed`` when a request reaches it a second time: the broker
    redelivers what was unacknowledged when the agent's connection dropped. The action
    ran (or runs) once. The outcome is the reply the first copy got, which the answer
    carries in ``details.earlier_reply`` once there is one (returned, with the answer's
    correlation id and sender); None while the first copy is still being handled
    (``details.in_progress``: its own reply is still to come) or if what is carried is
    not a reply from the same host. Any other reply, including a ``replayed`` that
    speaks of something else (an approval decided twice), is returned as it is."""
    for _ in range(4):  # agents of earlier releases could nest a replayed answer
        details = (reply.error or {}).get("details") or {}
        if reply.error_code != ErrorCode.REPLAYED.value or not (
                "earlier_reply" in details or details.get("in_progress") is True):
            return reply
        earlier = details.get("earlier_reply")
        if not isinstance(earlier, dict) or earlier.get("host") != reply.host:
            return None
        try:
            reply = _reply(dict(earlier), reply.correlation_id, reply.user_id)
        except RemoteError:
            return None
    return None


# -------------------------------------------------------------------------- events
@dataclass(slots=True)
class Event:
    host: str
    agent: str
    event: str
    data: dict[str, Any]
    seq: int
    epoch: str
    time: str = field(default_factory=now_rfc3339)
    user_id: str | None = None

    def routing_key(self) -> str:
        return names.event_key(self.agent, self.host, self.event)

    @property
    def full_name(self) -> str:
        return f"{self.agent}.{self.event}"

    def to_body(self) -> dict[str, Any]:
        return {"v": 1, "host": self.host, "agent": self.agent, "event": self.event,
                "time": self.time, "seq": self.seq, "epoch": self.epoch, "data": self.data}

    def encode(self) -> tuple[bytes, Properties]:
        props = Properties(
            message_id=fast_uuid4(), content_type=codec.CONTENT_TYPE, type=EVENT_TYPE,
            timestamp=int(time.time()),
        )
        return codec.encode(self.to_body()), props


def parse_event(delivery: Delivery) -> Event:
    body = codec.decode_object(delivery.body, what="event body")
    envelope_validator("event").validate(body)
    return Event(
        host=body["host"], agent=body["agent"], event=body["event"], data=body["data"],
        seq=body["seq"], epoch=body["epoch"], time=body["time"],
        user_id=delivery.properties.user_id,
    )


# -------------------------------------------------------------------- provisioning
#: Provisioning bodies are small documents; a larger one is refused before parsing.
PROVISION_MAX_BYTES = 64 * 1024


@dataclass(slots=True)
class Provision:
    """A provisioning request: the body as the schema defines it, and the properties
    that identify it (the message id is the request id and the idempotency key)."""

    body: dict[str, Any]
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    reply_to: str | None = None
    user_id: str | None = None

    def encode(self) -> tuple[bytes, Properties]:
        props = Properties(message_id=self.request_id, reply_to=self.reply_to,
                           content_type=codec.CONTENT_TYPE, type=PROVISION_TYPE,
                           timestamp=int(time.time()))
        return codec.encode(self.body), props


def new_provision(body: dict[str, Any], *, request_id: str | None = None,
                  reply_to: str | None = None) -> Provision:
    """A checked provisioning request (raises ``RemoteError`` if ``body`` does not fit
    the schema). ``body`` is kept as given: defaults are the provisioner's business."""
    envelope_validator("provision").validate(copy.deepcopy(body))
    return Provision(body, request_id or str(uuid.uuid4()), reply_to)


def parse_provision(delivery: Delivery) -> Provision:
    props = delivery.properties
    if not props.message_id:
        raise RemoteError(ErrorCode.BAD_MESSAGE, "message_id is missing: set a uuid4; it "
                          "is the request id and the idempotency key")
    request_id, user = check_identity(props, "provisioning requests")
    check_properties(props, PROVISION_TYPE, "provisioning requests")
    body = codec.decode_object(delivery.body, max_bytes=PROVISION_MAX_BYTES)
    if body.get("name") and body.get("count", 1) != 1:  # before the schema says it
        raise RemoteError(ErrorCode.BAD_MESSAGE,  # less clearly
                          "name is for one VM; use name_prefix for count > 1")
    if body.get("action") == "release" and ("request_id" in body) == ("vms" in body):
        raise RemoteError(ErrorCode.BAD_MESSAGE, "a release names either request_id (every "
                          "VM of that request) or vms (VM names), not both nor neither")
    envelope_validator("provision").validate(body)
    return Provision(body, request_id, usable_reply_to(props), user)
