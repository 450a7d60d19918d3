"""Broker administration through RabbitMQ's management HTTP API.

Used by ``hostbus broker setup`` / ``enroll`` and by the test fixture that gives each
test run its own vhost. The HTTP API rather than ``rabbitmqctl`` because it works from
the console's machine (no shell on the broker, no Erlang cookie), each call is one HTTP
request (milliseconds, where each ``rabbitmqctl`` run starts an Erlang VM: about
half a second here), and the whole topology is imported from one definitions file in one call.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from hostbus import names, topology
from hostbus.errors import BrokerRefused, ConnectionFailed

DEFAULT_ADMIN_URL = "http://guest:guest@127.0.0.1:15672"

IDENTITY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # like host ids: no dots


@dataclass(frozen=True)
class Grant:
    """One identity's rights in a vhost (RabbitMQ's three regexes) plus its topic
    permissions on hostbus.event. Verified by tests/integration/test_broker_security.py."""

    configure: str
    write: str
    read: str
    event_write: str = "^$"  # routing keys it may publish events with
    event_read: str = ".*"


BROKER_NAMED = r"amq\.gen-.*"  # server-named queues; what AMQP 1.0 sources get


def grant_for(kind: str, name: str) -> Grant:
    n = re.escape(name)
    if kind == "agent":
        # No configure right; reads only its own queue; writes events (for its own host
        # only, by topic permission) and replies.
        return Grant(configure="^$", write=r"^hostbus\.(event|reply)$",
                     read=rf"^hostbus\.host\.{n}$", event_write=rf"^[a-z][a-z0-9_]*\.{n}\.")
    if kind == "console":
        # Requests and provisioning; its own reply and subscription queues (declare,
        # bind, read); events and replies to read. Over AMQP 1.0 a reply or event
        # source is a queue the broker names amq.gen-* and makes exclusive to the
        # connection (clients cannot name a queue amq.*), so granting that pattern
        # opens no one else's queue.
        own = rf"(hostbus\.(reply|sub)\.{n}\..*|{BROKER_NAMED})"
        return Grant(configure=rf"^{own}$",
                     write=rf"^(hostbus\.(request|provision)|{own})$",
                     read=rf"^(hostbus\.(reply|event)|{own})$")
    if kind == "app":
        # Provisioning requests and its own reply queue, nothing else.
        own = rf"(hostbus\.reply\.{n}\..*|{BROKER_NAMED})"
        return Grant(configure=rf"^{own}$", write=rf"^(hostbus\.provision|{own})$",
                     read=rf"^(hostbus\.reply|{own})$")
    raise ValueError(f"unknown identity kind {kind!r}: agent, console or app")


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
              timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", self._auth)
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
            raise ConnectionFailed(
                f"cannot reach the RabbitMQ management API at {self.base} ({exc}). "
                "Enable it with `rabbitmq-plugins enable rabbitmq_management` "
                "(./run.sh does this) or pass --admin-url."
            ) from None
        return json.loads(raw) if raw else None

    def _exists(self, method: str, path: str, *, timeout: float | None = None) -> bool:
        """Run a call for which 404 is an answer ("not there"), not an error."""
        try:
            self._call(method, path, timeout=timeout)
        except BrokerRefused as exc:
            if "HTTP 404" in str(exc):
                return False
            raise
        return True

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

    def vhost_exists(self, vhost: str) -> bool:
        return self._exists("GET", f"/api/vhosts/{self._q(vhost)}")

    def connections(self, vhost: str) -> list[dict[str, Any]]:
        """The clients connected to ``vhost``, as the management plugin lists them
        (``user``, ``protocol``, ``name`` ...). An AMQP 1.0 client is listed once per
        session."""
        found = self._call("GET", f"/api/vhosts/{self._q(vhost)}/connections")
        return list(found or [])

    # -- topology --
    def setup(self, vhost: str) -> dict[str, int]:
        """Create the vhost and import the hostbus topology. Idempotent."""
        self.create_vhost(vhost)
        defs = topology.definitions()
        self._call("POST", f"/api/definitions/{self._q(vhost)}", defs)
        return {k: len(defs.get(k, [])) for k in ("exchanges", "queues", "bindings", "policies")}

    def enroll_host(self, vhost: str, host_id: str, agents: list[str], *,
                    queue_type: str = "classic") -> list[str]:
        """Create a host's durable queue and its bindings. Idempotent; returns the keys.
        ``queue_type`` "quorum" replicates the queue over a cluster's nodes, so the
        host's requests survive the loss of a node (broker_config/cluster/README.md)."""
        if queue_type not in ("classic", "quorum"):
            raise ValueError(f"queue type {queue_type!r}: classic or quorum")
        queue = names.host_queue(host_id)
        ex = names.REQUEST_EXCHANGE
        if not self._exists("GET", f"/api/exchanges/{self._q(vhost)}/{self._q(ex)}"):
            raise BrokerRefused(
                f"vhost {vhost!r} has no exchange {ex!r}: run `hostbus broker setup` first")
        self._call("PUT", f"/api/queues/{self._q(vhost)}/{self._q(queue)}",
                   {"durable": True, "auto_delete": False,
                    # classic stays implicit: hosts enrolled before this option existed
                    # must stay equivalent when enrolled again
                    "arguments": {"x-queue-type": "quorum"} if queue_type == "quorum"
                    else {}})
        keys = []
        existing = {
            (b["source"], b["routing_key"])
            for b in self._call("GET", f"/api/queues/{self._q(vhost)}/{self._q(queue)}/bindings")
        }
        for exchange, key in topology.host_bindings(host_id, agents):
            keys.append(key)
            if (exchange, key) in existing:
                continue
            self._call(
                "POST",
                f"/api/bindings/{self._q(vhost)}/e/{self._q(exchange)}/q/{self._q(queue)}",
                {"routing_key": key, "arguments": {}},
            )
        # Agents no longer enabled stop receiving requests.
        for source, key in existing:
            if source == names.REQUEST_EXCHANGE and key not in keys:
                self._call(
                    "DELETE",
                    f"/api/bindings/{self._q(vhost)}/e/{self._q(source)}/q/{self._q(queue)}/"
                    f"{self._q(key)}",
                )
        return keys

    def enroll_many(self, vhost: str, hosts: list[str], agents: list[str]) -> None:
        """Enroll many hosts in one definitions import (simulated fleets: thousands of
        hosts in one HTTP call instead of several each)."""
        for start in range(0, len(hosts), 500):  # an import of 500 takes about a second
            queues, bindings = [], []
            for host_id in hosts[start:start + 500]:
                queue = names.host_queue(host_id)
                queues.append({"name": queue, "durable": True, "auto_delete": False,
                               "arguments": {}})
                bindings += [{"source": exchange, "destination": queue,
                              "destination_type": "queue", "routing_key": key,
                              "arguments": {}}
                             for exchange, key in topology.host_bindings(host_id, agents)]
            self._call("POST", f"/api/definitions/{self._q(vhost)}",
                       {"queues": queues, "bindings": bindings}, timeout=120)

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

    # -- identities --
    def create_identity(self, vhost: str, kind: str, name: str,
                        password: str | None = None, *, certificate: bool = False) -> str:
        """Create (or reset) the broker user ``name`` with the rights of ``kind``;
        return its password (generated unless given). With ``certificate`` the user has
        no password at all: it can only log in with a TLS client certificate whose
        common name is ``name`` (SASL EXTERNAL); "" is returned."""
        if not IDENTITY_RE.fullmatch(name):
            raise ValueError(f"invalid identity name {name!r}: use 1-63 of a-z 0-9 _ -, "
                             "starting with a letter or digit (no dots)")
        grant = grant_for(kind, name)
        if certificate:
            password = ""
            user: dict[str, str] = {"password_hash": "", "tags": f"hostbus-{kind}"}
        else:
            password = password or secrets.token_urlsafe(24)
            user = {"password": password, "tags": f"hostbus-{kind}"}
        self._call("PUT", f"/api/users/{self._q(name)}", user)
        self._call("PUT", f"/api/permissions/{self._q(vhost)}/{self._q(name)}",
                   {"configure": grant.configure, "write": grant.write, "read": grant.read})
        self._call("PUT", f"/api/topic-permissions/{self._q(vhost)}/{self._q(name)}",
                   {"exchange": names.EVENT_EXCHANGE, "write": grant.event_write,
                    "read": grant.event_read})
        return password

    def revoke(self, name: str) -> bool:
        """Delete the user (its connections close). Returns whether it existed."""
        return self._exists("DELETE", f"/api/users/{self._q(name)}")
