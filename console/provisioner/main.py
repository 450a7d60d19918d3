"""``hostbus provisioner --config FILE``: run the provisioning service until SIGTERM.

Exit codes: 0 stopped cleanly, 1 configuration error, 2 cannot reach the broker,
3 the broker refused (for example: not enrolled, or no `broker setup`).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from console.client import Console
from console.provisioner.agent import ProvisionAgent
from console.provisioner.ledger import VmLedger
from console.provisioner.quotas import Quotas
from console.provisioner.service import Provisioner, consume_requests
from console.provisioner.store import RequestStore
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
        "heartbeat_interval": 10.0,
        "log_level": "info",
        "policy": "",
        "audit_log": "",
    },
    "quotas": {"default_max_vms": 20, "owners": {}},
    "security": {"signing_key": ""},
}


def state_dir(configured: str) -> Path:
    return Path(configured) if configured else config.default_state_dir()


def load_config(path: str | None) -> dict[str, Any]:
    return config.load(DEFAULTS, path, free_form=("quotas.owners",))


def run(config_path: str | None, *, stop: threading.Event | None = None) -> int:
    try:
        cfg = load_config(config_path)
        pcfg = cfg["provisioner"]
        host_id = names.validate_host_id(pcfg["host_id"])
        owners = {str(k): int(v) for k, v in cfg["quotas"]["owners"].items()}
        reconcile_interval = float(pcfg["reconcile_interval"])
        if reconcile_interval < 1:
            raise ConfigError(f"[provisioner] reconcile_interval = {reconcile_interval:g}: "
                              "give at least 1 (seconds between listings of the virt hosts)")
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
    # One request at a time off the provisioning queue (prefetch 1); calls to the virt
    # agents go over a second connection so replies never wait behind a busy worker.
    agent_transport = connect(url, connection_name=f"hostbus-provisioner {host_id}",
                              connect_timeout=timeout, prefetch=1)
    agent = ProvisionAgent(store, ledger, quotas)
    signer = None
    if cfg["security"]["signing_key"]:
        from hostbus.security.signing import Signer

        try:
            signer = Signer.load(config.resolve(cfg["security"]["signing_key"], config_path))
        except ConfigError as exc:
            log.error("%s", exc)
            return 1
    try:
        agent_transport.start()
        console = Console.connect(url, connect_timeout=timeout, signer=signer)
    except ConnectionFailed as exc:
        log.error("%s", exc)
        return 2
    # One policy and one audit log for everything the service decides: provisioning
    # messages (the calls provision.submit and provision.release) and calls to its agent
    # (status, list, quota).
    runtime = AgentRuntime(agent_transport, host_id, [agent], signer=signer, policy=policy,
                           audit=audit, heartbeat_interval=float(pcfg["heartbeat_interval"]))
    provisioner = Provisioner(
        console=console, publisher=runtime.publisher, store=store, agent=agent, host_id=host_id,
        ledger=ledger, quotas=quotas, call_timeout=float(pcfg["call_timeout"]),
        discovery_idle=float(pcfg["discovery_idle"]), reconcile_interval=reconcile_interval,
        policy=policy, audit=audit,
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
    stopped = stop or threading.Event()
    reason: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        reason.append(signal.Signals(signum).name)
        stopped.set()

    if stop is None:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    while not stopped.wait(1.0):
        pass
    log.info("stopping (%s); the request in progress, if any, is finished first",
             reason[0] if reason else "asked to")
    provisioner.close()
    runtime.stop(reason[0] if reason else "stopped")
    console.close()
    ledger.close()
    store.close()
    return 0
