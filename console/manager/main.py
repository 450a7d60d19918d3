"""``hostbus manager --config FILE``: run one manager instance until SIGTERM.

Several instances may run (on several machines); one is active, through the broker's
single-active-consumer queue ``hostbus.active.NAME``. Only the active instance applies
fleet events, serves the ``manager`` agent and acts; the others wait, and the first to
be given the queue takes over from the state file and a fresh listing of the fleet.

Exit codes: 0 stopped cleanly, 1 configuration error, 2 cannot reach the broker,
3 the broker refused (not enrolled, or no active queue).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.client import Console
from console.manager.actions import Actions
from console.manager.agent import ManagerAgent
from console.manager.balancing import Balancer, Balancing
from console.manager.fencing import Fencer
from console.manager.fleet import Fleet
from console.manager.policies import Thresholds
from console.manager.service import EVENT_PATTERNS, Manager
from console.placement import PlacementConfig
from console.services import wait_for_stop
from hostbus import __version__, config, names
from hostbus.errors import BrokerRefused, ConfigError, ConnectionFailed, HostbusError
from hostbus.logs import setup_logging
from hostbus.publisher import Publisher
from hostbus.security.audit import AuditLog
from hostbus.security.keys import keys_from_config
from hostbus.security.policy import DiscoveryOnly, Policy, RulesPolicy
from hostbus.serving.active import ActiveStandby
from hostbus.serving.runtime import AgentRuntime

if TYPE_CHECKING:
    from hostbus.security.signing import Signer, Verifier
    from hostbus.tracing import Tracer

log = logging.getLogger("hostbus.manager")

DEFAULTS: dict[str, Any] = {
    "broker": {"url": "amqp://guest:guest@127.0.0.1:5672/hostbus", "connect_timeout": 5.0},
    "manager": {
        "host_id": "manager",
        "state_dir": "",
        "heartbeat_grace": 30.0,
        "ping_timeout": 5.0,
        "fence_command": [],
        "fence_timeout": 60.0,
        "reconcile_interval": 60.0,
        "check_interval": 1.0,
        "call_timeout": 60.0,
        "shutdown_timeout": 120.0,
        "parallel_moves": 2,
        "discovery_idle": 0.3,
        "tick_interval": 1.0,
        "heartbeat_interval": 10.0,
        "log_level": "info",
        "policy": "",
        "audit_log": "",
    },
    "policies": {"balance_memory_threshold": 0.8, "balance_cpu_threshold": 0.8,
                 "power_saving_threshold": 0.2, "balance": False, "balance_window_s": 300.0,
                 "balance_interval_s": 300.0, "balance_max_moves": 2,
                 "balance_cooldown_s": 3600.0},
    "placement": {},
    "security": {"signing_key": "", "agent_keys": "", "multi_host_users": ["guest"]},
    "tracing": {"otlp_endpoint": ""},
}

_MINIMUMS = {"heartbeat_grace": 0.0, "ping_timeout": 0.1, "fence_timeout": 1.0,
             "reconcile_interval": 1.0, "check_interval": 0.1, "call_timeout": 1.0,
             "shutdown_timeout": 1.0, "discovery_idle": 0.05, "tick_interval": 0.1,
             "heartbeat_interval": 0.0}


def load_config(path: str | None) -> dict[str, Any]:
    cfg = config.load(DEFAULTS, path, free_form=("placement",))
    cfg["placement_config"] = PlacementConfig.from_dict(cfg["placement"])
    m = cfg["manager"]
    names.validate_host_id(m["host_id"])
    for key, low in _MINIMUMS.items():
        if float(m[key]) < low:
            raise ConfigError(f"[manager] {key} = {m[key]}: give at least {low:g} (seconds)")
    if int(m["parallel_moves"]) < 1:
        raise ConfigError(f"[manager] parallel_moves = {m['parallel_moves']}: give at least 1")
    p = cfg["policies"]
    for key in ("balance_memory_threshold", "balance_cpu_threshold",
                "power_saving_threshold"):
        if not 0 < float(p[key]) <= 1:
            raise ConfigError(f"[policies] {key} = {p[key]}: give a fraction above 0 and at "
                              "most 1 (0.8 is 80%)")
    if not isinstance(p["balance"], bool):
        raise ConfigError(f"[policies] balance = {p['balance']!r}: give true or false")
    for key in ("balance_window_s", "balance_interval_s", "balance_cooldown_s"):
        if float(p[key]) < 0:
            raise ConfigError(f"[policies] {key} = {p[key]}: give 0 or more (seconds)")
    if int(p["balance_max_moves"]) < 1:
        raise ConfigError(f"[policies] balance_max_moves = {p['balance_max_moves']}: give "
                          "at least 1")
    cfg["balancing"] = Balancing(enabled=p["balance"], window_s=float(p["balance_window_s"]),
                                 interval_s=float(p["balance_interval_s"]),
                                 max_moves=int(p["balance_max_moves"]),
                                 cooldown_s=float(p["balance_cooldown_s"]))
    cfg["thresholds"] = Thresholds(balance_memory=float(p["balance_memory_threshold"]),
                                   balance_cpu=float(p["balance_cpu_threshold"]),
                                   power_saving=float(p["power_saving_threshold"]))
    if not all(isinstance(a, str) and a for a in m["fence_command"]):
        raise ConfigError("[manager] fence_command: a list of words, program first, such as "
                          '["ipmitool", "-H", "{host}-ipmi", "chassis", "power", "off"]')
    return cfg


def state_dir(cfg: dict[str, Any]) -> Path:
    configured = cfg["manager"]["state_dir"]
    return Path(configured) if configured else config.default_state_dir()


def load_policy(cfg: dict[str, Any], config_path: str | None) -> Policy:
    m = cfg["manager"]
    if m["policy"]:
        return RulesPolicy.load(config.resolve(m["policy"], config_path), m["host_id"])
    return DiscoveryOnly("service", "[manager] policy", "etc/manager.toml")


def check(config_path: str | None) -> list[str]:
    """What ``--check-config`` reports, without connecting or writing anything. Raises
    ``ConfigError`` (or ``ValueError``)."""
    cfg = load_config(config_path)
    m = cfg["manager"]
    found = [f"configuration {config_path or '(defaults)'}: ok",
             f"manager {m['host_id']}, state in {state_dir(cfg) / 'manager.db'}, active queue "
             f"{names.active_queue(m['host_id'])}"]
    policy = load_policy(cfg, config_path)
    found.append(f"policy: {len(policy.rules)} rules (default deny)"
                 if isinstance(policy, RulesPolicy) else
                 "policy: none, so only discovery is answered (set [manager] policy)")
    signer, agent_keys = keys_from_config(cfg["security"], config_path)
    if signer is not None:
        found.append("signing key: ok")
    if agent_keys is not None:
        found.append("agent keys: ok (only signed events are acted on)")
    found.append("fence step: " + Fencer(m["fence_command"]).describe())
    b = cfg["balancing"]
    found.append(f"balancing (even_distribution): at most {b.max_moves} moves every "
                 f"{b.interval_s:g} s, off hosts over the threshold for {b.window_s:g} s"
                 if b.enabled else "balancing: plans only ([policies] balance = false)")
    found.append("events it needs bound: " + " ".join(EVENT_PATTERNS))
    return found


class ManagerService:
    """One instance: the model and its loop, the actions, the active/standby election,
    and (while active) the agent runtime that serves the ``manager`` agent."""

    def __init__(self, cfg: dict[str, Any], *, console: Console, fleet: Fleet,
                 policy: Policy, audit: AuditLog, signer: Signer | None = None,
                 agent_keys: Verifier | None = None, tracer: Tracer | None = None) -> None:
        from hostbus.transport import connect

        m = cfg["manager"]
        self.cfg = cfg
        self.host_id = str(m["host_id"])
        self.console = console
        self.fleet = fleet
        self.policy, self.audit, self.signer, self.tracer = policy, audit, signer, tracer
        self._runtime: AgentRuntime | None = None
        self._runtime_lock = threading.Lock()
        self.transport = connect(cfg["broker"]["url"],
                                 connection_name=f"hostbus-manager {self.host_id}",
                                 connect_timeout=float(cfg["broker"]["connect_timeout"]),
                                 prefetch=256)
        self.standby = ActiveStandby(self.transport, Publisher(self.transport, signer),
                                     self.host_id, tick_interval=float(m["tick_interval"]),
                                     on_change=self._changed, on_event=self._on_event)
        self.actions = Actions(console, fleet, call_timeout=float(m["call_timeout"]),
                               shutdown_timeout=float(m["shutdown_timeout"]), emit=self.emit,
                               allowed=lambda: self.standby.active,
                               placement=cfg["placement_config"],
                               parallel_moves=int(m["parallel_moves"]))
        self.manager = Manager(
            console, fleet, fencer=Fencer(m["fence_command"], timeout=float(m["fence_timeout"])),
            heartbeat_grace=float(m["heartbeat_grace"]), ping_timeout=float(m["ping_timeout"]),
            reconcile_interval=float(m["reconcile_interval"]),
            check_interval=float(m["check_interval"]), call_timeout=float(m["call_timeout"]),
            discovery_idle=float(m["discovery_idle"]),
            multi_host_users=frozenset(cfg["security"]["multi_host_users"]),
            agent_keys=agent_keys, placement=cfg["placement_config"], emit=self.emit,
            on_down=self.actions.restart_ha, on_maintenance=self.actions.evacuate,
            balancer=Balancer(fleet, cfg.get("balancing") or Balancing(), cfg["thresholds"],
                              act=self.actions.rebalance,
                              busy=lambda: not self.actions.idle.is_set(),
                              config=cfg["placement_config"]))
        self.agent = ManagerAgent(fleet, self.actions, status=self.status,
                                  learn_xml=self.manager.learn_xml,
                                  placement=cfg["placement_config"],
                                  confirm_down=self.manager.confirm_down,
                                  thresholds=cfg["thresholds"])

    def _on_event(self, delivery: Any) -> None:
        self.manager.on_event(delivery)

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self.agent.emit(event, data)

    def status(self) -> dict[str, Any]:
        """This instance, and (known to the active one) every instance it hears from."""
        found = self.standby.status()
        return {"instance": found["instance"], "active": found["active"],
                "instances": [p["instance"] for p in found["instances"]]}

    def start(self) -> None:
        """Raises ``ConnectionFailed``, or ``HostbusError`` when the active queue is
        missing (the message names the enrollment to run)."""
        self.transport.start()
        self.manager.start()
        self.actions.start()
        self.standby.start()

    def _changed(self, active: bool) -> None:
        """On the election's thread: serve and act only while active."""
        self.manager.set_active(active)
        with self._runtime_lock:
            if active and self._runtime is None:
                self._runtime = self._serve()
            elif not active and self._runtime is not None:
                self.agent.attach(lambda agent, event, data: None)
                self._runtime.stop("standby")
                self._runtime = None

    def _serve(self) -> AgentRuntime | None:
        m = self.cfg["manager"]
        try:
            return AgentRuntime.serve(
                self.cfg["broker"]["url"], self.host_id, [self.agent],
                connection_name=f"hostbus-manager {self.host_id} agent",
                signer=self.signer, policy=self.policy, audit=self.audit,
                heartbeat_interval=float(m["heartbeat_interval"]), tracer=self.tracer)
        except (HostbusError, ConnectionFailed) as exc:
            log.error("active, but cannot serve the manager agent: %s (enroll it: `hostbus "
                      "broker enroll-service %s --agents manager --active ...`)", exc,
                      self.host_id)
            return None

    def stop(self, reason: str = "stopped") -> None:
        self.standby.stop()
        self.manager.set_active(False)
        with self._runtime_lock:
            if self._runtime is not None:
                self._runtime.stop(reason)
                self._runtime = None
        self.actions.stop()
        self.manager.stop()
        self.transport.close()


def run(config_path: str | None, *, stop: threading.Event | None = None) -> int:
    try:
        cfg = load_config(config_path)
        m = cfg["manager"]
        policy = load_policy(cfg, config_path)
        signer, agent_keys = keys_from_config(cfg["security"], config_path)
        from hostbus.tracing import from_config

        tracer = from_config(cfg["tracing"], "hostbus-manager", m["host_id"])
    except (ConfigError, ValueError) as exc:
        print(f"hostbus manager: {exc}")
        return 1
    setup_logging(m["log_level"])
    if not isinstance(policy, RulesPolicy):
        log.warning("no [manager] policy file: only discovery is answered (see "
                    "etc/manager.toml)")
    fencer = Fencer(m["fence_command"])
    if not fencer.command:
        log.warning("fence step: %s", fencer.describe())
    folder = state_dir(cfg)
    fleet = Fleet(folder / "manager.db", placement=cfg["placement_config"])
    audit = AuditLog(config.resolve(m["audit_log"], config_path) if m["audit_log"]
                     else folder / f"audit-{m['host_id']}.jsonl")
    try:
        console = Console.connect(cfg["broker"]["url"],
                                  connect_timeout=float(cfg["broker"]["connect_timeout"]),
                                  signer=signer, tracer=tracer,
                                  multi_host_users=cfg["security"]["multi_host_users"],
                                  agent_keys=agent_keys)
    except ConnectionFailed as exc:
        log.error("%s", exc)
        fleet.close()
        return 2
    service = ManagerService(cfg, console=console, fleet=fleet, policy=policy, audit=audit,
                             signer=signer, agent_keys=agent_keys, tracer=tracer)
    try:
        service.start()
    except (BrokerRefused, HostbusError) as exc:
        # Stopped either way: the start may have got as far as the loop, the actions
        # and a transport reconnecting (a ConnectionFailed left them running before).
        # 2 (the broker unreachable, or its connection lost while starting) is worth
        # another try (the unit restarts it); 3 (not enrolled, no such queue) is not.
        log.error("%s", exc)
        transient = isinstance(exc, ConnectionFailed)
        service.stop("connection lost" if transient else "refused")
        console.close()
        fleet.close()
        return 2 if transient else 3
    log.info("hostbus manager %s started as %s (instance %s, state in %s); waiting to be "
             "the active instance", __version__, m["host_id"], service.standby.instance,
             fleet.path)
    reason = wait_for_stop(stop)
    log.info("stopping (%s)", reason or "asked to")
    service.stop(reason or "stopped")
    console.close()
    fleet.close()
    if tracer is not None:
        tracer.shutdown()
    return 0
