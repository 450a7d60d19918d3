"""``hostbus provisioner --config FILE``: run the provisioning service until SIGTERM.

Exit codes: 0 stopped cleanly, 1 configuration error, 2 cannot reach the broker,
3 the broker refused (for example: not enrolled, or no `broker setup`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from console.client import Console
from console.placement import PlacementConfig
from console.placement.config import DEFAULT_WEIGHTS
from console.placement.filters import FILTERS
from console.provisioner.agent import ProvisionAgent
from console.provisioner.ledger import VmLedger
from console.provisioner.quotas import Quotas
from console.provisioner.service import Provisioner, consume_requests
from console.provisioner.store import RequestStore
from console.services import wait_for_stop
from hostbus import __version__, config, names
from hostbus.errors import BrokerRefused, ConfigError, ConnectionFailed, HostbusError
from hostbus.logs import setup_logging
from hostbus.security.audit import AuditLog
from hostbus.security.policy import DiscoveryOnly, Policy, RulesPolicy
from hostbus.serving.runtime import AgentRuntime

log = logging.getLogger("hostbus.provisioner")

DEFAULTS: dict[str, Any] = {
    "broker": {"url": "amqp://guest:guest@127.0.0.1:5672/hostbus", "connect_timeout": 5.0},
    "provisioner": {
        "host_id": "provisioner",
        "state_dir": "",
        "call_timeout": 60.0,
        "discovery_idle": 0.3,
        "reconcile_interval": 60.0,
        "host_refresh_interval": 10.0,
        "workers": 8,
        "heartbeat_interval": 10.0,
        "log_level": "info",
        "policy": "",
        "audit_log": "",
    },
    "quotas": {"default_max_vms": 20, "owners": {}},
    "placement": {
        "vcpu_overcommit": 4.0,
        "memory_overcommit": 1.0,
        "host_reserved_memory_mib": 0,
        "max_cpu_load": 0.9,
        "cpu_load_window_s": 300.0,
        "filters": list(FILTERS),
        "weights": dict(DEFAULT_WEIGHTS),
    },
    "security": {"signing_key": ""},
    "tracing": {"otlp_endpoint": ""},
}


def state_dir(configured: str) -> Path:
    return Path(configured) if configured else config.default_state_dir()


def load_config(path: str | None) -> dict[str, Any]:
    return config.load(DEFAULTS, path, free_form=("quotas.owners", "placement.weights"))


def service_settings(cfg: dict[str, Any]) -> tuple[PlacementConfig, int, float, float]:
    """The placement engine's settings, the workers, and the two intervals (seconds
    between listings of the virt hosts' domains, and between asking them what they have
    free); raises ``ConfigError`` naming the key to fix."""
    pcfg = cfg["provisioner"]
    placement = PlacementConfig.from_dict(cfg["placement"])
    workers = int(pcfg["workers"])
    if not 1 <= workers <= 64:
        raise ConfigError(f"[provisioner] workers = {workers}: give 1 to 64 (requests "
                          "handled at once)")
    reconcile = float(pcfg["reconcile_interval"])
    if reconcile < 1:
        raise ConfigError(f"[provisioner] reconcile_interval = {reconcile:g}: give at least 1 "
                          "(seconds between listings of the virt hosts)")
    refresh = float(pcfg["host_refresh_interval"])
    if refresh < 1:
        raise ConfigError(f"[provisioner] host_refresh_interval = {refresh:g}: give at least "
                          "1 (seconds between asking the virt hosts what they have free)")
    return placement, workers, reconcile, refresh


def check(config_path: str | None) -> list[str]:
    """What ``--check-config`` reports, without connecting or writing anything. Raises
    ``ConfigError`` (or ``ValueError``)."""
    cfg = load_config(config_path)
    pcfg = cfg["provisioner"]
    host_id = names.validate_host_id(pcfg["host_id"])
    quotas = {str(k): int(v) for k, v in cfg["quotas"]["owners"].items()}
    placement, workers, _, _ = service_settings(cfg)
    weights = ", ".join(f"{n} {f:g}" for n, f in placement.weights.items() if f > 0)
    found = [f"configuration {config_path or '(defaults)'}: ok",
             f"host {host_id}, state in {state_dir(pcfg['state_dir'])}, quotas for "
             f"{len(quotas)} owners (others {int(cfg['quotas']['default_max_vms'])} VMs)",
             f"{workers} requests at once; placement filters "
             f"{', '.join(placement.filters or FILTERS)}; weights {weights}"]
    if pcfg["policy"]:
        rules = RulesPolicy.load(config.resolve(pcfg["policy"], config_path), host_id).rules
        found.append(f"policy {pcfg['policy']}: {len(rules)} rules (default deny)")
    else:
        found.append("policy: none, so nothing is provisioned (set [provisioner] policy)")
    if cfg["security"]["signing_key"]:
        from hostbus.security.signing import Signer

        Signer.load(config.resolve(cfg["security"]["signing_key"], config_path))
        found.append("signing key: ok")
    return found


def run(config_path: str | None, *, stop: threading.Event | None = None) -> int:
    try:
        cfg = load_config(config_path)
        pcfg = cfg["provisioner"]
        host_id = names.validate_host_id(pcfg["host_id"])
        owners = {str(k): int(v) for k, v in cfg["quotas"]["owners"].items()}
        placement, workers, reconcile_interval, refresh_interval = service_settings(cfg)
    except (ConfigError, ValueError) as exc:
        print(f"hostbus provisioner: {exc}")
        return 1
    setup_logging(pcfg["log_level"])
    from hostbus.transport import connect

    policy: Policy
    if pcfg["policy"]:
        try:
            policy = RulesPolicy.load(config.resolve(pcfg["policy"], config_path), host_id)
        except ConfigError as exc:
            print(f"hostbus provisioner: {exc}")
            return 1
        log.info("policy: %d rules (default deny)", len(policy.rules))
    else:
        policy = DiscoveryOnly("service", "[provisioner] policy", "etc/provisioner.toml")
        log.warning("no [provisioner] policy file: every provisioning request and every "
                    "call but discovery is refused (see etc/provisioner.toml)")
    store = RequestStore(state_dir(pcfg["state_dir"]) / "provisioner.db")
    ledger = VmLedger(store.path)
    quotas = Quotas(int(cfg["quotas"]["default_max_vms"]), owners)
    audit = AuditLog(config.resolve(pcfg["audit_log"], config_path) if pcfg["audit_log"]
                     else store.path.parent / f"audit-{host_id}.jsonl")
    url = cfg["broker"]["url"]
    timeout = float(cfg["broker"]["connect_timeout"])
    # As many requests off the provisioning queue as there are workers (the prefetch);
    # calls to the virt agents go over a second connection so replies never wait
    # behind busy workers.
    agent_transport = connect(url, connection_name=f"hostbus-provisioner {host_id}",
                              connect_timeout=timeout, prefetch=workers)
    agent = ProvisionAgent(store, ledger, quotas)
    signer = None
    if cfg["security"]["signing_key"]:
        from hostbus.security.signing import Signer

        try:
            signer = Signer.load(config.resolve(cfg["security"]["signing_key"], config_path))
        except ConfigError as exc:
            log.error("%s", exc)
            return 1
    from hostbus.tracing import from_config

    try:
        tracer = from_config(cfg["tracing"], "hostbus-provisioner", host_id)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    try:
        agent_transport.start()
        console = Console.connect(url, connect_timeout=timeout, signer=signer, tracer=tracer)
    except ConnectionFailed as exc:
        log.error("%s", exc)
        return 2
    # One policy and one audit log for everything the service decides: provisioning
    # messages (the calls provision.submit and provision.release) and calls to its agent
    # (status, list, quota).
    runtime = AgentRuntime(agent_transport, host_id, [agent], signer=signer, policy=policy,
                           audit=audit, heartbeat_interval=float(pcfg["heartbeat_interval"]),
                           tracer=tracer)
    provisioner = Provisioner(
        console=console, publisher=runtime.publisher, store=store, agent=agent, host_id=host_id,
        ledger=ledger, quotas=quotas, call_timeout=float(pcfg["call_timeout"]),
        discovery_idle=float(pcfg["discovery_idle"]), reconcile_interval=reconcile_interval,
        policy=policy, audit=audit, tracer=tracer, workers=workers, placement=placement,
        host_refresh_interval=refresh_interval,
    )
    try:
        runtime.start()
        provisioner.start()
        consume_requests(agent_transport, provisioner.on_message)
    except (BrokerRefused, HostbusError) as exc:
        log.error("%s", exc)
        console.close()
        agent_transport.close()
        return 3
    log.info("hostbus provisioner %s serving %s as %s (state in %s)", __version__,
             "hostbus.provision", host_id, store.path)
    reason = wait_for_stop(stop)
    log.info("stopping (%s); the requests in progress, if any, are finished first",
             reason or "asked to")
    provisioner.close()
    runtime.stop(reason or "stopped")
    console.close()
    ledger.close()
    store.close()
    if tracer is not None:
        tracer.shutdown()
    return 0
