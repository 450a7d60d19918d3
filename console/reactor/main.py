"""``hostbus reactor --config FILE``: turn events into actions until SIGTERM.

Exit codes: 0 stopped cleanly, 1 configuration error, 2 cannot reach the broker or open
the store, 3 the broker refused (not enrolled, or no active queue).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from console.reactor import handsoff
from console.reactor.engine import Engine
from console.reactor.handsoff import HandsOff
from console.reactor.rules import Rule, parse_rules
from console.reactor.service import Reactor, queue_patterns
from console.reactor.store import ReactorStore
from console.services import wait_for_stop
from hostbus import __version__, config, names
from hostbus.errors import ConfigError, ConnectionFailed, HostbusError
from hostbus.logs import setup_logging
from hostbus.security.keys import keys_from_config

log = logging.getLogger("hostbus.reactor")

DEFAULTS: dict[str, Any] = {
    "broker": {"url": "amqp://guest:guest@127.0.0.1:5672/hostbus", "connect_timeout": 5.0},
    "reactor": {
        "host_id": "reactor",
        "state_dir": "",
        "dry_run": False,
        "workers": 4,
        "keep_days": 30.0,
        "prefetch": 64,
        "tick_interval": 1.0,
        "manager": "manager",
        "manager_settle_s": 60.0,
        "log_level": "info",
    },
    "security": {"signing_key": "", "agent_keys": "", "multi_host_users": ["guest"]},
    "rule": [],
}


def load_config(path: str | None) -> dict[str, Any]:
    cfg = config.load(DEFAULTS, path)
    r = cfg["reactor"]
    names.validate_host_id(r["host_id"])
    if r["manager"]:
        names.validate_host_id(r["manager"])
    for key, low in (("workers", 1), ("keep_days", 0.01), ("prefetch", 2),
                     ("tick_interval", 0.05), ("manager_settle_s", 0.0)):
        if float(r[key]) < low:
            raise ConfigError(f"[reactor] {key} = {r[key]}: give at least {low:g}")
    return cfg


def load_rules(cfg: dict[str, Any]) -> list[Rule]:
    rules = parse_rules(cfg["rule"])
    if not rules:
        raise ConfigError("no [[rule]] in the configuration: the reactor would do nothing "
                          "(etc/reactor.toml has commented examples)")
    return rules


def store_path(cfg: dict[str, Any]) -> Path:
    folder = cfg["reactor"]["state_dir"]
    return (Path(folder) if folder else config.default_state_dir()) / \
        f"reactor-{cfg['reactor']['host_id']}.db"


def patterns(rules: list[Rule], manager: str = "") -> list[str]:
    """What the active queue must be bound to for these rules (and to learn what the
    manager ``manager`` handles)."""
    return queue_patterns([p for r in rules for p in r.events] + handsoff.patterns(manager))


def check(config_path: str | None) -> list[str]:
    """What ``--check-config`` reports; raises ``ConfigError``."""
    cfg = load_config(config_path)
    rules = load_rules(cfg)
    found = [f"configuration {config_path or '(defaults)'}: ok",
             f"{len(rules)} rule(s): " + "; ".join(
                 f"{r.name} -> {r.action.call}" + (" (dry run)" if r.dry_run else "")
                 for r in rules)]
    signer, verifier = keys_from_config(cfg["security"], config_path)
    if signer is not None:
        found.append("signing key: ok (actions are signed)")
    else:
        found.append("signing key: none (agents that require signatures or approvals will "
                     "refuse the actions: set [security] signing_key)")
    if verifier is not None:
        found.append("agent keys: ok (only signed events are acted on)")
    found.append(f"store {store_path(cfg)}")
    found.append("active queue " + names.active_queue(cfg["reactor"]["host_id"])
                 + " bound to: " + " ".join(patterns(rules, cfg["reactor"]["manager"])))
    if cfg["reactor"]["manager"]:
        found.append(f"hands off what manager {cfg['reactor']['manager']} handles (its "
                     f"events; settling {float(cfg['reactor']['manager_settle_s']):g} s)")
    else:
        found.append("manager = \"\": no manager is listened to; rules may act on hosts "
                     "and VMs a manager handles")
    if any(r.action.kind == "provision" for r in rules):
        found.append("a rule provisions: enroll the reactor with enroll-service --provision, "
                     "and let the provisioner's policy allow it")
    if any(r.action.kind == "event" for r in rules):
        found.append(f"a rule publishes events: reactor.{cfg['reactor']['host_id']}.notice")
    if cfg["reactor"]["dry_run"]:
        found.append("dry_run = true: decisions are recorded, nothing is sent")
    return found


def open_store(cfg: dict[str, Any]) -> ReactorStore:
    return ReactorStore(store_path(cfg))


def run(config_path: str | None, *, stop: threading.Event | None = None) -> int:
    try:
        cfg = load_config(config_path)
        rules = load_rules(cfg)
        signer, verifier = keys_from_config(cfg["security"], config_path)
    except (ConfigError, ValueError) as exc:
        print(f"hostbus reactor: {exc}")
        return 1
    r = cfg["reactor"]
    setup_logging(r["log_level"])
    try:
        store = open_store(cfg)
    except Exception as exc:
        log.error("cannot open the store %s: %s", store_path(cfg), exc)
        return 2
    store.prune(time.time() - float(r["keep_days"]) * 86400)
    from hostbus.transport import connect

    transport = connect(cfg["broker"]["url"], connection_name=f"hostbus-reactor {r['host_id']}",
                        connect_timeout=float(cfg["broker"]["connect_timeout"]),
                        prefetch=int(r["prefetch"]), reconnect=True)
    try:
        transport.start()
    except ConnectionFailed as exc:
        log.error("%s", exc)
        store.close()
        return 2
    hands_off = HandsOff(store, str(r["manager"]), settle_s=float(r["manager_settle_s"]))
    engine = Engine(rules, store, dry_run=bool(r["dry_run"]), hands_off=hands_off)
    reactor = Reactor(transport, engine, r["host_id"], signer=signer, agent_keys=verifier,
                      multi_host_users=frozenset(cfg["security"]["multi_host_users"]),
                      workers=int(r["workers"]), tick_interval=float(r["tick_interval"]))
    try:
        reactor.start()
    except HostbusError as exc:
        log.error("%s", exc)
        transport.close()
        store.close()
        return 3
    log.info("hostbus reactor %s as %s: %d rule(s), store %s%s", __version__, r["host_id"],
             len(rules), store_path(cfg), " (dry run)" if r["dry_run"] else "")
    reason = wait_for_stop(stop)
    log.info("stopping (%s); actions under way finish first", reason or "asked to")
    reactor.stop()
    store.close()
    return 0
