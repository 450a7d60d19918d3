"""``hostbus historian --config FILE``: store every event until SIGTERM.

Exit codes: 0 stopped cleanly, 1 configuration error, 2 cannot reach the broker or the
store, 3 the broker refused (not enrolled, or no history queue).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.history.agent import HistoryAgent
from console.history.ingest import Ingest
from console.history.store import EventStore, open_store
from console.services import wait_for_stop
from hostbus import __version__, config, names
from hostbus.errors import BrokerRefused, ConfigError, ConnectionFailed, HostbusError
from hostbus.logs import setup_logging
from hostbus.security.audit import AuditLog
from hostbus.security.keys import keys_from_config
from hostbus.security.policy import DiscoveryOnly, Policy, RulesPolicy
from hostbus.serving.runtime import AgentRuntime

if TYPE_CHECKING:
    from hostbus.security.signing import Signer, Verifier
    from hostbus.tracing import Tracer
    from hostbus.transport.base import Transport

log = logging.getLogger("hostbus.historian")

#: The queue the historian reads: durable, bound to every event (``hostbus historian
#: --setup`` makes it).
HISTORY_QUEUE = "hostbus.history"

DEFAULTS: dict[str, Any] = {
    "broker": {"url": "amqp://guest:guest@127.0.0.1:5672/hostbus", "connect_timeout": 5.0},
    "historian": {
        "host_id": "historian",
        "queue": HISTORY_QUEUE,
        "store": "",
        "state_dir": "",
        "max_age_days": 30.0,
        "max_mb": 10240.0,
        "retention_interval": 60.0,
        "batch_size": 1000,
        "prefetch": 2000,
        "sync_timeout": 10.0,
        "heartbeat_interval": 10.0,
        "log_level": "info",
        "policy": "",
        "audit_log": "",
    },
    "security": {"signing_key": "", "agent_keys": "", "multi_host_users": ["guest"]},
    "tracing": {"otlp_endpoint": ""},
}


def load_config(path: str | None) -> dict[str, Any]:
    cfg = config.load(DEFAULTS, path)
    h = cfg["historian"]
    names.validate_host_id(h["host_id"])
    for key, low in (("max_age_days", 0.0), ("max_mb", 0.0), ("retention_interval", 1.0),
                     ("batch_size", 1), ("prefetch", 1), ("sync_timeout", 0.1)):
        if float(h[key]) < low:
            raise ConfigError(f"[historian] {key} = {h[key]}: give at least {low:g}"
                              + (" (0 keeps events for ever)" if low == 0 else ""))
    return cfg


def store_location(cfg: dict[str, Any], config_path: str | None) -> str:
    """Where the events live: ``store`` (a path, or a postgresql:// URL), else
    ``history.db`` in the state folder."""
    h = cfg["historian"]
    if h["store"].startswith(("postgresql://", "postgres://")):
        return h["store"]
    if h["store"]:
        return str(config.resolve(h["store"], config_path))
    return str(state_dir(cfg) / "history.db")


def state_dir(cfg: dict[str, Any]) -> Path:
    configured = cfg["historian"]["state_dir"]
    return Path(configured) if configured else config.default_state_dir()


def load_policy(cfg: dict[str, Any], config_path: str | None) -> Policy:
    h = cfg["historian"]
    if h["policy"]:
        return RulesPolicy.load(config.resolve(h["policy"], config_path), h["host_id"])
    return DiscoveryOnly("historian", "[historian] policy", "etc/historian.toml")


def check(config_path: str | None) -> list[str]:
    """What ``--check-config`` reports: the configuration, the policy and keys it names,
    and the store (opened if it exists, its table made if missing; an SQLite file that
    does not exist yet is not made). Raises ``ConfigError``."""
    cfg = load_config(config_path)
    found = [f"configuration {config_path or '(defaults)'}: ok"]
    policy = load_policy(cfg, config_path)
    found.append(f"policy: {len(policy.rules)} rules (default deny)"
                 if isinstance(policy, RulesPolicy) else
                 "policy: none, so only discovery is answered (set [historian] policy)")
    signer, verifier = keys_from_config(cfg["security"], config_path)
    if signer is not None:
        found.append("signing key: ok")
    if verifier is not None:
        found.append("agent keys: ok (only signed events are stored)")
    where = store_location(cfg, config_path)
    if not where.startswith("postgres") and not Path(where).exists():
        folder = next(p for p in Path(where).parents if p.exists())
        if not os.access(folder, os.W_OK):
            raise ConfigError(f"the store {where} cannot be made: {folder} is not writable")
        found.append(f"store {where}: not there yet, made at start")
        return found
    try:
        store = open_store(where)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"the store {where} cannot be opened: {exc}") from None
    stats = store.stats()
    store.close()
    found.append(f"store {where.split('@')[-1]}: {stats.events} events")
    return found


class Historian:
    """The service on one transport: the ``history`` agent (queries, retention) on an
    agent runtime, and the ingest of the history queue."""

    def __init__(self, transport: Transport, store: EventStore, host_id: str, *,
                 queue: str = HISTORY_QUEUE, policy: Policy | None = None,
                 audit: AuditLog | None = None, signer: Signer | None = None,
                 agent_keys: Verifier | None = None,
                 multi_host_users: frozenset[str] = frozenset({"guest"}),
                 batch_size: int = 1000, sync_timeout: float = 10.0,
                 max_age_s: float = 0.0, max_bytes: int = 0,
                 heartbeat_interval: float = 10.0, retention_interval: float = 60.0,
                 tracer: Tracer | None = None) -> None:
        self.transport = transport
        self.store = store
        self.queue = queue
        self.ingest = Ingest(store, host_id, multi_host_users, agent_keys,
                             batch_size=batch_size, ack_all=transport.ack_all)
        self.agent = HistoryAgent(store, self.ingest, sync_timeout=sync_timeout,
                                  max_age_s=max_age_s, max_bytes=max_bytes)
        self.runtime = AgentRuntime(
            transport, host_id, [self.agent], signer=signer, policy=policy, audit=audit,
            heartbeat_interval=heartbeat_interval, tracer=tracer,
            intervals={"history": {"retention_interval": retention_interval}})

    def start(self) -> None:
        """Serve queries, then read the queue. Raises ``BrokerRefused`` when the host is
        not enrolled or the queue is missing."""
        self.ingest.start()
        try:
            self.runtime.start()
            if not self.transport.queue_exists(self.queue):
                raise BrokerRefused(f"queue {self.queue} does not exist: make it once with "
                                    "`hostbus historian --setup` (an administrator)")
            self.transport.consume(self.queue, self.ingest.on_delivery, manual_ack=True)
        except BaseException:
            self.stop("refused")
            raise

    def stop(self, reason: str = "stopped") -> None:
        """Store what was received (and acknowledge it), then disconnect."""
        self.runtime.stop(reason, close_transport=False)
        self.ingest.stop()
        self.transport.close()


def run(config_path: str | None, *, stop: threading.Event | None = None) -> int:
    try:
        cfg = load_config(config_path)
        h = cfg["historian"]
        policy = load_policy(cfg, config_path)
        signer, verifier = keys_from_config(cfg["security"], config_path)
        from hostbus.tracing import from_config

        tracer = from_config(cfg["tracing"], "hostbus-historian", h["host_id"])
    except (ConfigError, ValueError) as exc:
        print(f"hostbus historian: {exc}")
        return 1
    setup_logging(h["log_level"])
    host_id = h["host_id"]
    where = store_location(cfg, config_path)
    try:
        store: EventStore = open_store(where)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    except Exception as exc:
        log.error("cannot open the store %s: %s", where, exc)
        return 2
    audit = AuditLog(config.resolve(h["audit_log"], config_path) if h["audit_log"]
                     else state_dir(cfg) / f"audit-{host_id}.jsonl")
    from hostbus.transport import connect

    transport = connect(cfg["broker"]["url"], connection_name=f"hostbus-historian {host_id}",
                        connect_timeout=float(cfg["broker"]["connect_timeout"]),
                        prefetch=int(h["prefetch"]))
    try:
        transport.start()
    except ConnectionFailed as exc:
        log.error("%s", exc)
        store.close()
        return 2
    historian = Historian(
        transport, store, host_id, queue=h["queue"], policy=policy, audit=audit,
        signer=signer, agent_keys=verifier,
        multi_host_users=frozenset(cfg["security"]["multi_host_users"]),
        batch_size=int(h["batch_size"]), sync_timeout=float(h["sync_timeout"]),
        max_age_s=float(h["max_age_days"]) * 86400,
        max_bytes=int(float(h["max_mb"]) * 1024 * 1024),
        heartbeat_interval=float(h["heartbeat_interval"]),
        retention_interval=float(h["retention_interval"]), tracer=tracer)
    try:
        historian.start()
    except (BrokerRefused, HostbusError) as exc:
        log.error("%s", exc)
        store.close()
        return 3
    log.info("hostbus historian %s storing %s into %s as %s", __version__, h["queue"],
             where.split("@")[-1], host_id)
    reason = wait_for_stop(stop)
    log.info("stopping (%s); events received are stored first",
             reason or "asked to")
    historian.stop(reason or "stopped")
    store.close()
    if tracer is not None:
        tracer.shutdown()
    return 0
