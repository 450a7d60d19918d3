"""End-to-end request signatures (Ed25519) and the replay guard.

A signature covers the exact body bytes and everything that routes or identifies the
message (exchange, routing key, message_id, type, user_id, reply_to, correlation_id),
so none of them can be changed in transit, by the broker or anyone with access to it.
The key that must verify a request is the one the agent trusts for the request's
broker-validated ``user_id``: a key is bound to an identity.

Key files: ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub`` (one line:
``hostbus-ed25519 <base64 of the 32-byte key> NAME``).
"""

from __future__ import annotations

import base64
import os
import sqlite3
import threading
import time
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hostbus.errors import ConfigError, ErrorCode, RemoteError
from hostbus.transport.base import Properties

SIG_HEADER = "x-hostbus-sig"
PUB_PREFIX = "hostbus-ed25519"


def signing_input(exchange: str, routing_key: str, props: Properties, body: bytes) -> bytes:
    fields = [exchange, routing_key, props.message_id or "", props.type or "",
              props.user_id or "", props.reply_to or "", props.correlation_id or ""]
    header = "\n".join(fields).encode()
    return b"hostbus-sig-v1\n" + header + b"\n" + len(body).to_bytes(8, "big") + body


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
        """Adds the signature header to ``props`` (user_id must already be set)."""
        signature = self.key.sign(signing_input(exchange, routing_key, props, body))
        encoded = base64.b64encode(signature).decode()
        props.headers = {**(props.headers or {}), SIG_HEADER: encoded}


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
    """Checks request signatures against the keys an agent trusts (one per identity)."""

    def __init__(self, trusted: dict[str, Ed25519PublicKey]) -> None:
        self.trusted = trusted

    @classmethod
    def from_folder(cls, folder: str | Path) -> Verifier:
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"trusted keys folder {folder} does not exist")
        trusted = dict(read_public_key(p) for p in sorted(folder.glob("*.pub")))
        return cls(trusted)

    def verify(self, exchange: str, routing_key: str, props: Properties, body: bytes) -> str:
        """The signer's name, or a ``bad_signature`` error that says what is wrong."""
        user = props.user_id
        if not user:
            raise RemoteError(ErrorCode.BAD_SIGNATURE, "the request has no user_id, so no "
                              "key can vouch for it; set user_id to your broker user")
        key = self.trusted.get(user)
        if key is None:
            raise RemoteError(ErrorCode.BAD_SIGNATURE,
                              f"this agent trusts no key for {user!r}; add {user}.pub to its "
                              "trusted keys folder")
        raw = (props.headers or {}).get(SIG_HEADER)
        if not raw:
            raise RemoteError(ErrorCode.BAD_SIGNATURE,
                              f"the request is not signed; sign it with {user}'s key "
                              "([security] signing_key in the console's config)")
        try:
            text = raw if isinstance(raw, str | bytes) else b""
            signature = base64.b64decode(text, validate=True)
            key.verify(signature, signing_input(exchange, routing_key, props, body))
        except (InvalidSignature, ValueError):
            raise RemoteError(ErrorCode.BAD_SIGNATURE,
                              f"the signature does not match {user}'s trusted key (the "
                              "message was changed, or signed with another key)") from None
        return user


class ReplayGuard:
    """Remembers request ids until their deadline (plus skew) has passed, and the reply
    each one got. A repeat is refused as ``replayed`` and carries the earlier reply, so
    a caller retrying after a lost reply learns the outcome without the action running
    twice. With ``path`` the memory is a SQLite file and survives a restart."""

    def __init__(self, skew_s: float = 30.0, max_ahead_s: float = 600.0,
                 path: str | Path | None = None) -> None:
        self.skew_s = skew_s
        self.max_ahead_s = max_ahead_s
        self._seen: dict[str, float] = {}
        self._replies: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0
        self._db: sqlite3.Connection | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, "
                             "expires REAL NOT NULL, reply BLOB)")
            now = time.time()
            self._db.execute("DELETE FROM seen WHERE expires <= ?", (now,))
            for mid, expires, reply in self._db.execute("SELECT id, expires, reply FROM seen"):
                self._seen[mid] = expires
                if reply is not None:
                    self._replies[mid] = reply

    def check(self, message_id: str, deadline_epoch: float) -> None:
        now = time.time()
        if deadline_epoch > now + self.max_ahead_s + self.skew_s:
            raise RemoteError(ErrorCode.BAD_MESSAGE,
                              f"the deadline is more than {self.max_ahead_s:g} s ahead; a "
                              "request may only be valid for a short window")
        with self._lock:
            if now >= self._next_prune:
                self._prune(now)
            if message_id in self._seen:
                earlier = self._replies.get(message_id)
                details = {"earlier_reply": orjson.loads(earlier)} if earlier else {}
                raise RemoteError(ErrorCode.REPLAYED,
                                  f"request {message_id} was already received"
                                  + ("; its reply is in details.earlier_reply" if earlier
                                     else " and is still being handled")
                                  + ". Send a new message_id to repeat the action", details)
            expires = deadline_epoch + self.skew_s
            self._seen[message_id] = expires
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO seen (id, expires) VALUES (?, ?)",
                                 (message_id, expires))

    def remember_reply(self, message_id: str, reply_body: bytes) -> None:
        with self._lock:
            if message_id not in self._seen:
                return
            self._replies[message_id] = reply_body
            if self._db is not None:
                self._db.execute("UPDATE seen SET reply = ? WHERE id = ?",
                                 (reply_body, message_id))

    def _prune(self, now: float) -> None:
        self._seen = {k: v for k, v in self._seen.items() if v > now}
        self._replies = {k: v for k, v in self._replies.items() if k in self._seen}
        if self._db is not None:
            self._db.execute("DELETE FROM seen WHERE expires <= ?", (now,))
        self._next_prune = now + 10
