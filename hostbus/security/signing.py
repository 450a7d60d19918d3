"""End-to-end signatures (Ed25519) on requests, approvals, replies and events.

A signature covers the exact body bytes and everything that routes or identifies the
message (exchange, routing key, message_id, kind, user_id, reply_to, correlation_id),
so none of them can be changed in transit, by the broker or anyone with access to it.
The key that must verify a message is the one trusted for its broker-validated
``user_id``: a key is bound to an identity.

The signature travels as a ``content_type`` parameter,
``application/json; hostbus-sig=<unpadded base64url>``, because content_type is the one
free-form property RabbitMQ 3.10 carries both ways between AMQP 0-9-1 and 1.0 (headers
and ``type`` are dropped; docs/amqp10-interop.md). For the same reason the kind that is
signed is the one the receiver expects where the message arrived, not the ``type``
property, which a bridge may have dropped.

Key files: ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub`` (one line:
``hostbus-ed25519 <base64 of the 32-byte key> NAME``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hostbus import names
from hostbus.envelope import EVENT_TYPE, REPLY_TYPE, REQUEST_TYPE
from hostbus.errors import ConfigError, ErrorCode, RemoteError
from hostbus.transport.base import Properties

SIG_PARAM = "hostbus-sig"
PUB_PREFIX = "hostbus-ed25519"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]{1,200}")


# The exchange each kind travels through. An AMQP 1.0 consumer of a 0-9-1 publish is not
# told the exchange (RabbitMQ 3.10 passes only the routing key, as the subject); the
# queue it read from is bound to this exchange only.
_EXCHANGE_OF = {REQUEST_TYPE: names.REQUEST_EXCHANGE, REPLY_TYPE: names.REPLY_EXCHANGE,
                EVENT_TYPE: names.EVENT_EXCHANGE}


def signing_input(exchange: str, routing_key: str, props: Properties, body: bytes,
                  kind: str) -> bytes:
    """Raises ``ValueError`` for a field that is not a string without line feeds: the
    fields are separated by line feeds, and a field holding one could be re-split into
    other fields with the same signature."""
    fields = [exchange or _EXCHANGE_OF.get(kind, ""), routing_key, props.message_id or "",
              kind, props.user_id or "", props.reply_to or "", props.correlation_id or ""]
    for field in fields:
        if not isinstance(field, str) or "\n" in field:
            raise ValueError(f"a signed field is {field!r:.60}: it must be text without "
                             "line feeds")
    header = "\n".join(fields).encode()
    return b"hostbus-sig-v1\n" + header + b"\n" + len(body).to_bytes(8, "big") + body


def request_digest(exchange: str, routing_key: str, props: Properties, body: bytes,
                   kind: str) -> str:
    """What an approval is bound to: everything the requester's signature covers."""
    return "sha256:" + hashlib.sha256(signing_input(exchange, routing_key, props, body,
                                                    kind)).hexdigest()


def signature_of(props: Properties) -> str | None:
    """The ``hostbus-sig`` parameter of content_type, if there is one."""
    _, _, params = (props.content_type or "").partition(";")
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == SIG_PARAM:
            return value.strip('"')
    return None


class Signer:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key

    @classmethod
    def load(cls, path: str | Path) -> Signer:
        try:
            data = Path(path).read_bytes()
            key = serialization.load_pem_private_key(data, password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the signing key {path}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key (make one: hostbus keys generate)")
        return cls(key)

    def sign(self, exchange: str, routing_key: str, props: Properties, body: bytes) -> None:
        """Adds the signature to ``props.content_type``, for the kind ``props.type``
        names (user_id must already be set)."""
        kind = props.type or ""
        signature = self.key.sign(signing_input(exchange, routing_key, props, body, kind))
        encoded = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        base = (props.content_type or "").partition(";")[0]
        props.content_type = f"{base}; {SIG_PARAM}={encoded}"


def generate(name: str, folder: str | Path) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    key_path, pub_path = folder / f"{name}.key", folder / f"{name}.pub"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    pub_path.write_text(f"{PUB_PREFIX} {base64.b64encode(raw).decode()} {name}\n")
    return key_path, pub_path


def read_public_key(path: str | Path) -> tuple[str, Ed25519PublicKey]:
    try:
        prefix, data, name = Path(path).read_text().split()[:3]
        if prefix != PUB_PREFIX:
            raise ValueError(f"it does not start with {PUB_PREFIX}")
        return name, Ed25519PublicKey.from_public_bytes(base64.b64decode(data))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the public key {path}: {exc}") from None


class Verifier:
    """Checks signatures against trusted keys, one per identity: agents check requests
    and approvals against console and approver keys; consoles check replies and events
    against agent keys."""

    def __init__(self, trusted: dict[str, Ed25519PublicKey]) -> None:
        self.trusted = trusted

    @classmethod
    def from_folder(cls, folder: str | Path) -> Verifier:
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"trusted keys folder {folder} does not exist")
        trusted = dict(read_public_key(p) for p in sorted(folder.glob("*.pub")))
        return cls(trusted)

    def verify(self, exchange: str, routing_key: str, props: Properties, body: bytes, *,
               kind: str, what: str = "request", who: str = "this agent") -> str:
        """The signer's name, or a ``bad_signature`` error that says what is wrong.
        ``kind`` is the type the receiver expects where the message arrived."""
        user = props.user_id
        if not user:
            raise RemoteError(ErrorCode.BAD_SIGNATURE, f"the {what} has no user_id, so no "
                              "key can vouch for it; set user_id to your broker user")
        key = self.trusted.get(user)
        if key is None:
            raise RemoteError(ErrorCode.BAD_SIGNATURE,
                              f"{who} trusts no key for {user!r}; add {user}.pub to its "
                              "trusted keys folder")
        raw = signature_of(props)
        if not raw:
            raise RemoteError(ErrorCode.BAD_SIGNATURE,
                              f"the {what} is not signed; sign it with {user}'s key "
                              "([security] signing_key in the sender's config)")
        try:
            signed = signing_input(exchange, routing_key, props, body, kind)
        except ValueError as exc:
            raise RemoteError(ErrorCode.BAD_SIGNATURE, f"the {what} cannot be verified: "
                              f"{exc}") from None
        try:
            if not _BASE64URL.fullmatch(raw):
                raise ValueError("not unpadded base64url")
            signature = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            key.verify(signature, signed)
        except (InvalidSignature, ValueError):
            raise RemoteError(ErrorCode.BAD_SIGNATURE,
                              f"the {what}'s signature does not match {user}'s trusted key "
                              "(the message was changed, or signed with another key)") from None
        return user
