"""Broker administration through RabbitMQ's management HTTP API.

Used by ``hostbus broker setup`` / ``enroll`` and by the test fixture that gives each
test run its own vhost. The HTTP API rather than ``rabbitmqctl`` because it works from
the console's machine (no shell on the broker, no Erlang cookie), each call is one HTTP
request (milliseconds, where each ``rabbitmqctl`` run starts an Erlang VM: about
half a second here), and the whole topology is imported from one definitions file in one call.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from hostbus import names, topology
from hostbus.errors import BrokerRefused, ConnectionFailed

DEFAULT_ADMIN_URL = "http://guest:guest@127.0.0.1:15672"

IDENTITY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # like host ids: no dots


@dataclass(frozen=True)
class Grant:
    """One identity's rights in a vhost: RabbitMQ's three regexes over exchange and queue
    names, and topic permissions, per exchange, over routing keys: (write, read). A
    topic exchange with no entry does not restrict routing keys. RabbitMQ checks a topic
    *write* permission on each publish and a topic *read* permission on each binding
    (queue.bind, and an AMQP 1.0 source that binds), against the binding key's text.
    Verified by tests/integration/test_broker_security.py."""

    configure: str
    write: str
    read: str
    topics: dict[str, tuple[str, str]] = field(default_factory=dict)


BROKER_NAMED = r"amq\.gen-.*"  # server-named queues; what AMQP 1.0 sources get
KINDS = ("agent", "console", "app", "service")
# The shared queues a service may be given: one word after hostbus. (hostbus.provision);
# host, reply and subscription queues have more words and belong to their identities.
SERVICE_QUEUE_RE = re.compile(r"hostbus\.[a-z][a-z0-9_]{0,62}")
# An event pattern a service may be allowed to subscribe to (its binding key, exactly).
EVENT_PATTERN_RE = re.compile(r"[a-z0-9_*#-]{1,63}(\.[a-z0-9_*#-]{1,63}){0,7}")
# A quorum queue delivers a message at most x-delivery-limit + 1 times (a consumer that
# dies holding it counts, on 3.x and 4.x alike), then dead-letters it to hostbus.dead
# with x-death reason "delivery_limit": a request that kills its agent stops coming back
# after six tries instead of for ever (3.x's default) or being dropped without a trace at
# 4.x's default limit of 20, which applies when no dead-letter exchange is set. Expired
# requests (their `expiration`) are dead-lettered there too, with reason "expired". The
# provisioning queue has the same settings (broker_config/definitions.json).
QUORUM_HOST_QUEUE = {"x-queue-type": "quorum", "x-delivery-limit": 5,
                     "x-dead-letter-exchange": names.DEAD_EXCHANGE}


def own_replies(n: str) -> str:
    """The reply routing keys (and binding keys) of the identity whose escaped name is
    ``n``: hostbus.reply.NAME.<anything>. The user name has no dots and the first three
    words are fixed, so no wildcard can widen a binding past them: ``hostbus.reply.NAME.#``
    still only matches NAME's replies."""
    return rf"^hostbus\.reply\.{n}\."


def grant_for(kind: str, name: str, *, queues: tuple[str, ...] = (),
              events: tuple[str, ...] = (), provision: bool = False) -> Grant:
    """The rights of identity ``name`` of ``kind``. For a service: ``queues``, the
    shared queues it serves besides its own host queue (hostbus.provision); ``events``,
    the event patterns it may subscribe to, exactly (the provisioner:
    virt.*.domain.lifecycle); ``provision``: it may post provisioning requests (the
    reactor, for rules whose action provisions)."""
    n = re.escape(name)
    events_as_self = rf"^[a-z][a-z0-9_]*\.{n}\."  # <agent>.NAME.<event>
    if kind == "agent":
        # No configure right; reads only its own queues (host and agent); writes events
        # (for its own host only, by topic permission) and replies (to whatever reply_to
        # said: a refused reply would close the agent's channel, so reply keys are not
        # restricted).
        return Grant(configure="^$", write=r"^hostbus\.(event|reply)$",
                     read=rf"^hostbus\.host\.{n}(\.agent)?$",
                     topics={names.EVENT_EXCHANGE: (events_as_self, ".*")})
    if kind == "console":
        # Requests and provisioning; its own reply and subscription queues (declare,
        # bind, read); events to read, and its own replies only (the binding key is
        # checked). Over AMQP 1.0 on RabbitMQ 3.x a reply or event source is a queue the
        # broker makes and names amq.gen-* (not exclusive: another identity that learnt
        # its random name could read it; the names are not listed to consoles, and the
        # queues expire by policy). Over 0-9-1 the broker names reply and subscription
        # queues so too, exclusive. Clients cannot name a queue amq.*. On RabbitMQ 4
        # hostbus names its own.
        own = rf"(hostbus\.(reply|sub)\.{n}\..*|{BROKER_NAMED})"
        return Grant(configure=rf"^{own}$",
                     write=rf"^(hostbus\.(request|provision)|{own})$",
                     read=rf"^(hostbus\.(reply|event)|{own})$",
                     topics={names.EVENT_EXCHANGE: ("^$", ".*"),
                             names.REPLY_EXCHANGE: ("^$", own_replies(n))})
    if kind == "app":
        # Provisioning requests and its own reply queue, nothing else.
        own = rf"(hostbus\.reply\.{n}\..*|{BROKER_NAMED})"
        return Grant(configure=rf"^{own}$", write=rf"^(hostbus\.provision|{own})$",
                     read=rf"^(hostbus\.reply|{own})$",
                     topics={names.EVENT_EXCHANGE: ("^$", ".*"),
                             names.REPLY_EXCHANGE: ("^$", own_replies(n))})
    if kind == "service":
        # A console-side service (the provisioner): serves its own host queues (its
        # service agents, and its built-in agent's) and the shared queues named for it;
        # calls agents with its own reply queues; reads the events of the patterns
        # given only; publishes events as itself, and replies. No provisioning requests
        # of its own, unless given (the reactor's rules may ask for VMs).
        for queue in queues:
            if not SERVICE_QUEUE_RE.fullmatch(queue):
                raise ValueError(f"invalid service queue {queue!r}: a shared queue "
                                 "hostbus.WORD, like hostbus.provision (host, reply and "
                                 "subscription queues belong to their own identities)")
        for pattern in events:
            if not EVENT_PATTERN_RE.fullmatch(pattern):
                raise ValueError(f"invalid event pattern {pattern!r}: words of a-z 0-9 _ - "
                                 "or * or #, separated by dots (virt.*.domain.lifecycle)")
        # Its active queue too, where an administrator made one (enroll-service
        # --active): every instance consumes it, and the broker delivers to one.
        served = "|".join(re.escape(q) for q in (names.host_queue(name),
                                                 names.agent_queue(name),
                                                 names.active_queue(name), *queues))
        readable = "|".join(re.escape(p) for p in events)
        # Its own subscription queues only where it may subscribe (RabbitMQ 4 over AMQP
        # 1.0 names them hostbus.sub.NAME.*; elsewhere the broker names them amq.gen-*).
        mine = "(reply|sub)" if events else "reply"
        own = rf"(hostbus\.{mine}\.{n}\..*|{BROKER_NAMED})"
        posts = "|provision" if provision else ""
        return Grant(configure=rf"^{own}$",
                     write=rf"^(hostbus\.(request|event|reply{posts})|{own})$",
                     read=rf"^({served}|hostbus\.reply|{own}"
                          + (r"|hostbus\.event" if events else "") + ")$",
                     topics={names.EVENT_EXCHANGE: (events_as_self,
                                                    rf"^({readable})$" if events else "^$"),
                             names.REPLY_EXCHANGE: (".*", own_replies(n))})
    raise ValueError(f"unknown identity kind {kind!r}: {', '.join(KINDS)}")


class IdentityConflict(ValueError):
    """The name is taken by a broker user enrolling would break."""


def password_hash(password: str) -> str:
    """RabbitMQ's salted SHA-256 password hash (its default hashing module), as a
    definitions import takes it: base64(salt + sha256(salt + password)), 4-byte salt."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _tags(user: dict[str, Any]) -> list[str]:
    """A user's tags: a list, or (RabbitMQ 3.x) one comma-separated string."""
    tags = user.get("tags") or []
    return [t.strip() for t in (tags.split(",") if isinstance(tags, str) else tags) if t]


def _kind(user: dict[str, Any]) -> str | None:
    """The hostbus identity kind of a broker user (its hostbus-KIND tag), if any."""
    kinds = [t.removeprefix("hostbus-") for t in _tags(user) if t.startswith("hostbus-")]
    return kinds[0] if kinds else None


def _described(queue: dict[str, Any]) -> bool:
    """Whether the broker's statistics have caught up with a queue: its owner (when it
    is exclusive) and its consumers (when it has any) are named."""
    consumers = queue.get("consumers")
    readers = [(c.get("channel_details") or {}).get("user")
               for c in queue.get("consumer_details") or []]
    return (consumers is not None and len(readers) >= consumers and all(readers)
            and (not queue.get("exclusive") or bool(queue.get("owner_pid_details"))))


def _reply_key_owner(key: str) -> str | None:
    """USER of a reply key or queue name hostbus.reply.USER.<anything>."""
    words = key.split(".")
    if len(words) >= 4 and words[:2] == ["hostbus", "reply"] and IDENTITY_RE.fullmatch(words[2]):
        return words[2]
    return None


class BrokerAdmin:
    def __init__(self, admin_url: str = DEFAULT_ADMIN_URL, *, timeout: float = 10.0) -> None:
        parts = urlsplit(admin_url)
        if parts.scheme not in ("http", "https"):
            raise ConnectionFailed(
                f"admin URL {admin_url!r} must be http(s)://user:pass@host:15672"
            )
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}"
        user = unquote(parts.username or "guest")
        password = unquote(parts.password or "guest")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.user = user
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None, *,
              timeout: float | None = None, reason: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", self._auth)
        if reason:
            req.add_header("X-Reason", reason)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except TimeoutError:
            raise BrokerRefused(
                f"{method} {path}: the management API did not answer within "
                f"{timeout or self.timeout:g} s (a busy or overloaded broker)"
            ) from None
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            if exc.code == 401:
                raise ConnectionFailed(
                    f"management API at {self.base} refused user {self.user!r}: "
                    "check the admin URL's credentials (an administrator is needed)"
                ) from None
            raise BrokerRefused(f"{method} {path} failed: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(getattr(exc, "reason", None), socket.gaierror):
                host = urllib.parse.urlsplit(self.base).hostname
                raise ConnectionFailed(
                    f"cannot resolve the management API's host name {host!r} "
                    f"({exc.reason.strerror}): check the admin URL (--admin-url, "
                    "HOSTBUS_CONSOLE_ADMIN_URL or [console] admin_url)") from None
            raise ConnectionFailed(
                f"cannot reach the RabbitMQ management API at {self.base} ({exc}). "
                "Enable it with `rabbitmq-plugins enable rabbitmq_management` "
                "(./run.sh does this) or pass --admin-url."
            ) from None
        return json.loads(raw) if raw else None

    def _exists(self, method: str, path: str, *, timeout: float | None = None,
                reason: str | None = None) -> bool:
        """Run a call for which 404 is an answer ("not there"), not an error.
        ``reason``: what a closed connection is told (X-Reason)."""
        try:
            self._call(method, path, timeout=timeout, reason=reason)
        except BrokerRefused as exc:
            if "HTTP 404" in str(exc):
                return False
            raise
        return True

    def _get(self, path: str) -> Any:
        """GET, with None for 404 (not there)."""
        try:
            return self._call("GET", path)
        except BrokerRefused as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    @staticmethod
    def _q(name: str) -> str:
        return quote(name, safe="")

    # -- vhosts --
    def create_vhost(self, vhost: str) -> None:
        self._call("PUT", f"/api/vhosts/{self._q(vhost)}", {})
        self._call(
            "PUT", f"/api/permissions/{self._q(vhost)}/{self._q(self.user)}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    def delete_vhost(self, vhost: str) -> None:
        self._exists("DELETE", f"/api/vhosts/{self._q(vhost)}", timeout=120)

    def version(self) -> str:
        """The broker's RabbitMQ version."""
        return str(self._call("GET", "/api/overview")["rabbitmq_version"])

    def bound_to(self, vhost: str, exchange: str, routing_key: str) -> list[str]:
        """The queues bound to ``exchange`` with exactly ``routing_key``."""
        found = self._call("GET", f"/api/exchanges/{self._q(vhost)}/{self._q(exchange)}"
                                  "/bindings/source")
        return [b["destination"] for b in found if b["routing_key"] == routing_key
                and b["destination_type"] == "queue"]

    def vhost_exists(self, vhost: str) -> bool:
        return self._exists("GET", f"/api/vhosts/{self._q(vhost)}")

    def connections(self, vhost: str) -> list[dict[str, Any]]:
        """The clients connected to ``vhost``, as the management plugin lists them
        (``user``, ``protocol``, ``name`` ...). An AMQP 1.0 client is listed once per
        session."""
        found = self._call("GET", f"/api/vhosts/{self._q(vhost)}/connections")
        return list(found or [])

    # -- topology --
    def setup(self, vhost: str) -> dict[str, Any]:
        """Create the vhost and import the hostbus topology; bring an older install up
        to date (``regrant``, ``migrate_replies``). Idempotent."""
        self.create_vhost(vhost)
        updated = self.regrant(vhost)  # first: the new reply exchange checks them at once
        migrated = self.migrate_replies(vhost)
        defs = topology.definitions()
        self._call("POST", f"/api/definitions/{self._q(vhost)}", defs)
        counts: dict[str, Any] = {k: len(defs.get(k, []))
                                  for k in ("exchanges", "queues", "bindings", "policies")}
        return {**counts, "identities": updated, **migrated}

    def migrate_replies(self, vhost: str) -> dict[str, Any]:
        """Make hostbus.reply a topic exchange where it is still the direct exchange of
        older versions. An exchange's type cannot change in place: it is deleted, with
        every binding to it, and made again at once. Then each binding comes back that
        the new rules allow: of a reply queue its owner reads (named
        hostbus.reply.USER.*, or consumed by USER) to USER's own replies, or of a user
        that is no hostbus identity (topic permissions do not limit those anyway).
        Bindings to another identity's replies are dropped and listed. A console's reply
        queue over AMQP 0-9-1 is private to its connection, so nobody else may bind it:
        that connection is closed instead, and a hostbus console reconnects by itself
        (within a second) and binds a new one, under the new rules; a call it has in
        flight then fails at once (connection lost). A reply published in the
        milliseconds the exchange is missing is lost (its agent's channel is closed,
        404, and it opens another). Who reads a queue not named after its identity (an
        AMQP 1.0 console's amq.gen-* on RabbitMQ 3.x) is known only from the broker's
        statistics, which may not list its consumer yet: ``_described_queues`` waits
        for them, and raises before anything is changed where they never say. Returns
        what was done: nothing where the exchange is already a topic exchange or does
        not exist yet."""
        v, ex = self._q(vhost), self._q(names.REPLY_EXCHANGE)
        where = f"/api/exchanges/{v}/{ex}"
        exchange = self._get(where)
        if exchange is None or exchange["type"] == "topic":
            return {}
        bindings = self._call("GET", f"{where}/bindings/source")
        kinds = {u["name"]: _kind(u) for u in self._call("GET", "/api/users")}
        bound = {b["destination"] for b in bindings if b["destination_type"] == "queue"}
        queues = self._described_queues(
            vhost, bound, {q for q in bound if _reply_key_owner(q) is None})
        keep, dropped, close = [], [], set()
        for b in bindings:
            queue, key = queues.get(b["destination"], {}), b["routing_key"]
            if b["destination_type"] == "queue" and queue.get("exclusive"):
                close.add((queue.get("owner_pid_details") or {}).get("name"))
                continue  # bound again by its own client, once reconnected
            readers = {c.get("channel_details", {}).get("user")
                       for c in queue.get("consumer_details") or []}
            reader = _reply_key_owner(b["destination"]) or (
                readers.pop() if len(readers) == 1 else None)
            if b["destination_type"] == "queue" and reader is not None and (
                    reader == _reply_key_owner(key) or not kinds.get(reader)):
                keep.append(b)
            else:
                dropped.append(f"{b['destination_type']} {b['destination']} (read by "
                               f"{reader or 'an unknown user'}) bound with {key!r}")
        self._call("DELETE", where)
        self._call("PUT", where, {"type": "topic", "durable": True, "auto_delete": False,
                                  "internal": False, "arguments": {}})
        for b in keep:
            self._call("POST", f"/api/bindings/{v}/e/{ex}/q/{self._q(b['destination'])}",
                       {"routing_key": b["routing_key"], "arguments": b.get("arguments") or {}})
        closed = [name for name in sorted(n for n in close if n) if self._exists(
            "DELETE", f"/api/connections/{self._q(name)}",
            reason="hostbus.reply became a topic exchange: reconnect")]
        return {"reply_exchange_migrated": True, "reply_bindings_kept": len(keep),
                "reply_bindings_dropped": dropped, "connections_closed": len(closed)}

    #: How long a queue whose reader only its consumers tell must show none before it is
    #: taken for read by nobody: two of the broker's statistics intervals (5 s by
    #: default). Its first statistics may predate its consumer (seen on RabbitMQ 3.10: an
    #: AMQP 1.0 console's reply queue listed with 0 consumers and no consumer details
    #: for half a second after its link opened; longer on a busy broker).
    STATS_SETTLE_S = 10.0
    #: How long to wait for the statistics to describe the queues at all.
    STATS_DEADLINE_S = 15.0

    def _described_queues(self, vhost: str, wanted: set[str],
                          by_consumers: set[str] | None = None) -> dict[str, Any]:
        """The broker's facts about ``wanted`` queues, by name, once its statistics
        describe them all: who owns and who consumes a queue is known only from them,
        up to their interval (5 s by default) after it was made. A queue of
        ``by_consumers`` (its name does not say whose it is) that shows no consumer is
        described only once it has shown none for ``STATS_SETTLE_S``: its binding would
        be dropped for want of a reader, and a live console's replies lost with it.
        Asked again, backing off; raises ``BrokerRefused`` (before anything is changed)
        when the statistics still do not say who reads one of ``by_consumers`` after
        ``STATS_DEADLINE_S``."""
        by_consumers = by_consumers or set()
        delay, deadline = 0.25, time.monotonic() + self.STATS_DEADLINE_S
        unread_since: dict[str, float] = {}  # by_consumers queues: first seen with none
        while True:  # (only a single queue's answer names its owner and consumers)
            found = {name: self._get(f"/api/queues/{self._q(vhost)}/{self._q(name)}")
                     for name in sorted(wanted)}
            found = {name: q for name, q in found.items() if q is not None}
            now = time.monotonic()
            pending = []
            for name, queue in found.items():
                if not _described(queue):
                    pending.append(name)
                elif name in by_consumers and not queue.get("consumer_details") \
                        and not queue.get("exclusive"):
                    if now - unread_since.setdefault(name, now) < self.STATS_SETTLE_S:
                        pending.append(name)
                else:
                    unread_since.pop(name, None)
            if not pending:
                return found
            if now > deadline:
                if not by_consumers.intersection(pending):
                    # Named for their owner: kept or dropped by name; an exclusive one
                    # whose owner is never named (AMQP 1.0 on RabbitMQ 4) is not kept,
                    # and its client binds a new one when it reconnects.
                    return found
                raise BrokerRefused(
                    f"the broker's statistics do not say who reads {', '.join(pending)} "
                    f"(bound to {names.REPLY_EXCHANGE}) after {self.STATS_DEADLINE_S:.0f} s: "
                    "nothing was changed; run `hostbus broker setup` again")
            time.sleep(delay)
            delay = min(2.0, delay * 2)

    def enroll_host(self, vhost: str, host_id: str, agents: list[str], *,
                    queue_type: str = "classic") -> list[str]:
        """Create a host's durable queues and their bindings (``topology.host_queues``).
        Idempotent; returns the routing keys. ``queue_type`` "quorum" replicates the
        queues over a cluster's nodes, so the host's requests survive the loss of a node
        (broker_config/cluster/README.md). Enrolling a host again moves bindings to
        where the topology wants them and gives an existing agent user of that name the
        rights the topology needs (its password stays)."""
        if queue_type not in ("classic", "quorum"):
            raise ValueError(f"queue type {queue_type!r}: classic or quorum")
        ex = names.REQUEST_EXCHANGE
        if not self._exists("GET", f"/api/exchanges/{self._q(vhost)}/{self._q(ex)}"):
            raise BrokerRefused(
                f"vhost {vhost!r} has no exchange {ex!r}: run `hostbus broker setup` first")
        keys = []
        for queue, bindings in topology.host_queues(host_id, agents).items():
            try:
                self._call("PUT", f"/api/queues/{self._q(vhost)}/{self._q(queue)}",
                           {"durable": True, "auto_delete": False,
                            # classic stays implicit: hosts enrolled before this option
                            # existed must stay equivalent when enrolled again
                            "arguments": QUORUM_HOST_QUEUE if queue_type == "quorum"
                            else {}})
            except BrokerRefused as exc:
                if queue_type != "quorum" or "inequivalent" not in str(exc):
                    raise
                raise BrokerRefused(
                    f"{queue} exists with other settings than hostbus gives a quorum host "
                    f"queue now ({QUORUM_HOST_QUEUE}): without them RabbitMQ 4 drops a "
                    "request after 20 deliveries without a trace. Delete the queue "
                    f"(`rabbitmqctl delete_queue -p {vhost} {queue}`, its waiting requests "
                    "go with it) and enroll the host again") from None
            wanted = [key for _, key in bindings]
            keys += wanted
            existing = {
                (b["source"], b["routing_key"])
                for b in self._call(
                    "GET", f"/api/queues/{self._q(vhost)}/{self._q(queue)}/bindings")
            }
            for exchange, key in bindings:
                if (exchange, key) in existing:
                    continue
                self._call(
                    "POST",
                    f"/api/bindings/{self._q(vhost)}/e/{self._q(exchange)}/q/{self._q(queue)}",
                    {"routing_key": key, "arguments": {}},
                )
            # Agents no longer enabled stop receiving requests; the built-in agent's keys
            # leave the host queue of an earlier enrollment for the agent queue.
            for source, key in existing:
                if source == ex and key not in wanted:
                    self._call(
                        "DELETE",
                        f"/api/bindings/{self._q(vhost)}/e/{self._q(source)}/q/"
                        f"{self._q(queue)}/{self._q(key)}",
                    )
        self._refresh_agent_grant(vhost, host_id)
        return keys

    def enroll_service(self, vhost: str, name: str, agents: list[str],
                       queues: tuple[str, ...], *, queue_type: str = "classic",
                       events: tuple[str, ...] = ()) -> list[str]:
        """A console-side service's own host queue and bindings, as for a host (its
        built-in agent and its service agents), after checking that the shared queues
        it is to serve exist. Returns the routing keys. Its user: ``create_identity``
        with kind "service" and the same ``queues`` and ``events``."""
        grant_for("service", name, queues=queues, events=events)  # checked before anything
        for queue in queues:
            if self._get(f"/api/queues/{self._q(vhost)}/{self._q(queue)}") is None:
                raise BrokerRefused(f"vhost {vhost!r} has no queue {queue!r}: run `hostbus "
                                    "broker setup` first (it makes hostbus.provision)")
        return self.enroll_host(vhost, name, agents, queue_type=queue_type)

    def _refresh_agent_grant(self, vhost: str, host_id: str) -> None:
        """An agent user enrolled by an earlier release may read only the host queue:
        give it today's rights (the agent queue too) without touching its password."""
        try:
            user = self._call("GET", f"/api/users/{self._q(host_id)}")
        except BrokerRefused as exc:
            if "HTTP 404" in str(exc):
                return
            raise
        if "hostbus-agent" not in str(user.get("tags", "")):
            return
        if not self._exists("GET", f"/api/permissions/{self._q(vhost)}/{self._q(host_id)}"):
            return  # enrolled in another vhost only: not ours to extend
        grant = grant_for("agent", host_id)
        self._call("PUT", f"/api/permissions/{self._q(vhost)}/{self._q(host_id)}",
                   {"configure": grant.configure, "write": grant.write, "read": grant.read})

    def enroll_many(self, vhost: str, hosts: Sequence[tuple[str, Sequence[str]]], *,
                    passwords: Mapping[str, str] | None = None, queue_type: str = "classic",
                    chunk: int = 500,
                    progress: Callable[[int, int], None] | None = None) -> None:
        """Enroll many hosts (``(host_id, agents)`` pairs) through definitions imports
        of ``chunk`` hosts each, instead of several HTTP calls a host: their queues and
        bindings and, with ``passwords`` (host -> password), each one's agent user with
        the same rights ``enroll_host`` gives (the password travels as RabbitMQ's salted
        SHA-256 hash). New hosts are the point: an import only adds, so an enrolled
        host that should lose an agent's bindings is enrolled again on its own.
        ``progress(done, total)`` after each import. Names were validated by the caller;
        users are checked first (``check_many_free``), so nothing is made when one
        conflicts."""
        if queue_type not in ("classic", "quorum"):
            raise ValueError(f"queue type {queue_type!r}: classic or quorum")
        if passwords:
            self.check_many_free(vhost, list(passwords))
        arguments = QUORUM_HOST_QUEUE if queue_type == "quorum" else {}
        for start in range(0, len(hosts), chunk):
            part = hosts[start:start + chunk]
            queues, bindings = [], []
            users, permissions, topics = [], [], []
            for host_id, agents in part:
                for queue, pairs in topology.host_queues(host_id, list(agents)).items():
                    queues.append({"name": queue, "vhost": vhost, "durable": True,
                                   "auto_delete": False, "arguments": arguments})
                    bindings += [{"source": exchange, "vhost": vhost, "destination": queue,
                                  "destination_type": "queue", "routing_key": key,
                                  "arguments": {}}
                                 for exchange, key in pairs]
                if passwords and host_id in passwords:
                    grant = grant_for("agent", host_id)
                    users.append({"name": host_id, "tags": "hostbus-agent",
                                  "hashing_algorithm": "rabbit_password_hashing_sha256",
                                  "password_hash": password_hash(passwords[host_id])})
                    permissions.append({"user": host_id, "vhost": vhost,
                                        "configure": grant.configure, "write": grant.write,
                                        "read": grant.read})
                    topics += [{"user": host_id, "vhost": vhost, "exchange": exchange,
                                "write": write, "read": read}
                               for exchange, (write, read) in grant.topics.items()]
            self._call("POST", f"/api/definitions/{self._q(vhost)}" if not users
                       else "/api/definitions",  # users are global: the whole-broker import
                       {"queues": queues, "bindings": bindings, "users": users,
                        "permissions": permissions, "topic_permissions": topics},
                       timeout=300)
            if progress is not None:
                progress(min(start + chunk, len(hosts)), len(hosts))

    def check_many_free(self, vhost: str, wanted: Sequence[str]) -> None:
        """``check_free`` for many names in two HTTP calls: raise ``IdentityConflict``
        naming (up to ten of) those that exist as another kind of user or with rights
        in another vhost."""
        wanted_set = set(wanted)
        users = {u["name"]: u for u in self._call("GET", "/api/users")
                 if u["name"] in wanted_set}
        if not users:
            return
        foreign = sorted(name for name, user in users.items() if _kind(user) is None)
        elsewhere = sorted({p["user"] for p in self._call("GET", "/api/permissions")
                            if p["user"] in users and p["vhost"] != vhost})
        if foreign:
            raise IdentityConflict(
                f"broker users that are not hostbus identities: {', '.join(foreign[:10])}"
                f"{' and more' if len(foreign) > 10 else ''} ({len(foreign)} in all). "
                "Enrolling them would reset their passwords and rights: choose other names.")
        if elsewhere:
            raise IdentityConflict(
                f"hostbus identities with rights in another vhost: {', '.join(elsewhere[:10])}"
                f"{' and more' if len(elsewhere) > 10 else ''} ({len(elsewhere)} in all). "
                "RabbitMQ users are global, "
                f"so enrolling them in {vhost!r} would break their configs there. Choose "
                "other names, or revoke them there first (`hostbus broker revoke NAME`).")

    def enroll_active_queue(self, vhost: str, service: str, patterns: list[str]) -> list[str]:
        """Make a service's active queue (``topology.active_queue``: quorum, single
        active consumer) bound to hostbus.event by exactly ``patterns`` and the tick key
        of its instances. Idempotent; returns the binding keys. Services cannot declare
        queues, so this is done at enrollment, by an administrator."""
        queue, pairs = topology.active_queue(service, patterns)
        q, queue_q = self._q(vhost), self._q(queue)
        try:
            self._call("PUT", f"/api/queues/{q}/{queue_q}",
                       {"durable": True, "auto_delete": False,
                        "arguments": topology.ACTIVE_QUEUE_ARGUMENTS})
        except BrokerRefused as exc:
            if "inequivalent" not in str(exc):
                raise
            raise BrokerRefused(
                f"{queue} exists with other settings than hostbus gives an active queue "
                f"({topology.ACTIVE_QUEUE_ARGUMENTS}). Delete it (`rabbitmqctl delete_queue "
                f"-p {vhost} {queue}`; the events waiting in it go with it) and enroll "
                "again") from None
        wanted = {key for _, key in pairs}
        bound = {b["routing_key"]: b["properties_key"]
                 for b in self._call("GET", f"/api/queues/{q}/{queue_q}/bindings")
                 if b["source"] == names.EVENT_EXCHANGE}
        ex = self._q(names.EVENT_EXCHANGE)
        for key in sorted(wanted - set(bound)):
            self._call("POST", f"/api/bindings/{q}/e/{ex}/q/{queue_q}",
                       {"routing_key": key, "arguments": {}})
        for key in sorted(set(bound) - wanted):
            self._call("DELETE", f"/api/bindings/{q}/e/{ex}/q/{queue_q}/"
                                 f"{self._q(bound[key])}")
        return [key for _, key in pairs]

    # -- named event subscriptions (hostbus.sub.USER.NAME, durable) --
    def subscriptions(self, vhost: str) -> list[dict[str, Any]]:
        """The named subscription queues in ``vhost``: ``queue``, ``patterns`` (its
        bindings to hostbus.event), ``messages`` waiting and ``consumers``."""
        q = self._q(vhost)
        found = []
        for queue in self._call("GET", f"/api/queues/{q}?columns=name,messages,consumers"):
            if not queue["name"].startswith("hostbus.sub."):
                continue
            bindings = self._call("GET", f"/api/queues/{q}/{self._q(queue['name'])}/bindings")
            found.append({"queue": queue["name"], "messages": queue.get("messages", 0),
                          "consumers": queue.get("consumers", 0),
                          "patterns": sorted(b["routing_key"] for b in bindings
                                             if b["source"] == names.EVENT_EXCHANGE)})
        return sorted(found, key=lambda s: s["queue"])

    def bind_subscription(self, vhost: str, queue: str, patterns: list[str]) -> list[str]:
        """Make ``queue`` a durable subscription bound to hostbus.event by exactly
        ``patterns``; return the patterns it had before that are no longer bound."""
        q, queue_q, ex = self._q(vhost), self._q(queue), self._q(names.EVENT_EXCHANGE)
        self._call("PUT", f"/api/queues/{q}/{queue_q}",
                   {"durable": True, "auto_delete": False, "arguments": {}})
        bound = {b["routing_key"]: b["properties_key"]
                 for b in self._call("GET", f"/api/queues/{q}/{queue_q}/bindings")
                 if b["source"] == names.EVENT_EXCHANGE}
        for pattern in patterns:
            if pattern not in bound:
                self._call("POST", f"/api/bindings/{q}/e/{ex}/q/{queue_q}",
                           {"routing_key": pattern, "arguments": {}})
        removed = sorted(set(bound) - set(patterns))
        for pattern in removed:
            self._call("DELETE", f"/api/bindings/{q}/e/{ex}/q/{queue_q}/"
                                 f"{self._q(bound[pattern])}")
        return removed

    def delete_queue(self, vhost: str, queue: str) -> bool:
        """Delete ``queue`` and what waits in it. Returns whether it existed."""
        return self._exists("DELETE", f"/api/queues/{self._q(vhost)}/{self._q(queue)}")

    def declare_event_queue(self, vhost: str, queue: str, patterns: list[str], *,
                            max_length: int) -> bool:
        """A durable queue of a service's own bound to ``hostbus.event`` by ``patterns``
        (the historian's), keeping at most ``max_length`` messages while nobody reads
        it (the oldest go first). Returns whether it was made (False: it was there)."""
        path = f"/api/queues/{self._q(vhost)}/{self._q(queue)}"
        existed = self._exists("GET", path)
        if not existed:
            self._call("PUT", path, {"durable": True, "auto_delete": False, "arguments": {
                "x-queue-type": "classic", "x-max-length": max_length,
                "x-overflow": "drop-head"}})
        for pattern in patterns:
            self._call("POST", f"/api/bindings/{self._q(vhost)}/e/"
                               f"{self._q(names.EVENT_EXCHANGE)}/q/{self._q(queue)}",
                       {"routing_key": pattern, "arguments": {}})
        return not existed

    # -- identities --
    def create_identity(self, vhost: str, kind: str, name: str,
                        password: str | None = None, *, certificate: bool = False,
                        queues: tuple[str, ...] = (), events: tuple[str, ...] = (),
                        provision: bool = False) -> str:
        """Create (or reset) the broker user ``name`` with the rights of ``kind``;
        return its password (generated unless given). With ``certificate`` the user has
        no password at all: it can only log in with a TLS client certificate whose
        common name is ``name`` (SASL EXTERNAL); "" is returned. ``queues``, ``events``
        and ``provision``: a service's (``grant_for``).

        Broker users are global, so a name that is already a user with rights in
        another vhost, or a user that is not a hostbus identity (an administrator), is
        refused with ``IdentityConflict``: resetting it would lock out whoever uses it."""
        if not IDENTITY_RE.fullmatch(name):
            raise ValueError(f"invalid identity name {name!r}: use 1-63 of a-z 0-9 _ -, "
                             "starting with a letter or digit (no dots)")
        grant = grant_for(kind, name, queues=queues, events=events, provision=provision)
        self.check_free(vhost, name)
        if certificate:
            password = ""
            user: dict[str, str] = {"password_hash": "", "tags": f"hostbus-{kind}"}
        else:
            password = password or secrets.token_urlsafe(24)
            user = {"password": password, "tags": f"hostbus-{kind}"}
        self._call("PUT", f"/api/users/{self._q(name)}", user)
        self._call("PUT", f"/api/permissions/{self._q(vhost)}/{self._q(name)}",
                   {"configure": grant.configure, "write": grant.write, "read": grant.read})
        self._set_topic_permissions(vhost, name, grant)
        return password

    def _set_topic_permissions(self, vhost: str, name: str, grant: Grant) -> None:
        """Exactly the grant's topic permissions: an exchange left out of it (an agent's
        hostbus.reply) must not keep an entry from an earlier grant."""
        where = f"/api/topic-permissions/{self._q(vhost)}/{self._q(name)}"
        if any(entry["exchange"] not in grant.topics for entry in self._get(where) or []):
            self._exists("DELETE", where)  # the API deletes them all at once
        for exchange, (write, read) in grant.topics.items():
            self._call("PUT", where, {"exchange": exchange, "write": write, "read": read})

    def check_free(self, vhost: str, name: str) -> None:
        """Raise ``IdentityConflict`` if enrolling ``name`` in ``vhost`` would break a
        user that exists (``create_identity`` checks too; callers that make queues
        first ask before)."""
        where = f"/api/users/{self._q(name)}"
        found = self._get(where)
        if found is None:
            return
        kind = _kind(found)
        if kind is None:
            raise IdentityConflict(
                f"broker user {name!r} exists and is not a hostbus identity (tags: "
                f"{', '.join(_tags(found)) or 'none'}): enrolling it would reset its "
                "password and rights and lock out whoever uses it. Choose another name.")
        elsewhere = sorted(p["vhost"] for p in self._call("GET", f"{where}/permissions")
                           if p["vhost"] != vhost)
        if elsewhere:
            listed = ", ".join(repr(v) for v in elsewhere)
            raise IdentityConflict(
                f"broker user {name!r} already exists, a hostbus {kind} with rights in "
                f"vhost {listed}. RabbitMQ users are global: enrolling {name!r} in vhost "
                f"{vhost!r} would reset its password and break its config there. Choose "
                f"another name for this vhost, or revoke it there first (`hostbus broker "
                f"revoke {name}`: it loses access everywhere).")

    def regrant(self, vhost: str) -> list[str]:
        """Give every hostbus identity with rights in ``vhost`` the topic permission on
        hostbus.reply this version grants (consoles, apps and services read only their
        own replies); return their names. Their other rights are kept as enrolled
        (`broker enroll*` again for those)."""
        with_rights = {p["user"] for p in
                       self._call("GET", f"/api/vhosts/{self._q(vhost)}/permissions")}
        done = []
        for user in self._call("GET", "/api/users"):
            kind, name = _kind(user), user["name"]
            if name not in with_rights or kind not in KINDS:
                continue
            reply = grant_for(kind, name).topics.get(names.REPLY_EXCHANGE)
            if reply is not None:  # one exchange's entry: the others stay as they are
                self._call("PUT", f"/api/topic-permissions/{self._q(vhost)}/{self._q(name)}",
                           {"exchange": names.REPLY_EXCHANGE, "write": reply[0],
                            "read": reply[1]})
                done.append(name)
        return sorted(done)

    def revoke(self, name: str) -> bool:
        """Delete the user (its connections close). Returns whether it existed."""
        return self._exists("DELETE", f"/api/users/{self._q(name)}")
