"""``hostbus-agent --config FILE``: the per-host daemon.

Exit codes: 0 stopped cleanly, 1 configuration error, 2 cannot connect to the broker,
3 the broker refused us (for example: this host is not enrolled).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from agents import registry
from hostbus import __version__, config, names
from hostbus.errors import BrokerRefused, ConfigError, ConnectionFailed, SchemaError
from hostbus.logs import setup_logging
from hostbus.security.audit import AuditLog
from hostbus.security.policy import DiscoveryOnly, Policy, RulesPolicy
from hostbus.security.replay import ReplayGuard
from hostbus.serving.outbox import Spool
from hostbus.serving.runtime import AgentRuntime

log = logging.getLogger("hostbus.agent")

DEFAULTS: dict[str, Any] = {
    "broker": {
        "url": "amqp://guest:guest@127.0.0.1:5672/hostbus",
        "connect_timeout": 5.0,
        "heartbeat": 10,
        "max_backoff": 4.0,
        "wait_at_start": True,
    },
    "agent": {
        "host_id": "",
        "agents": ["host"],
        "heartbeat_interval": 10.0,
        "max_message_bytes": 1048576,
        "workers": 4,
        "log_level": "info",
        "state_dir": "",
        "facts": {},
    },
    "security": {
        "policy": "",
        "audit_log": "",
        "trusted_keys": "",
        "clock_skew_s": 30.0,
        "max_deadline_s": 600.0,
        "approval_ttl_s": 3600.0,
        "signing_key": "",
    },
    "spool": {
        "max_mb": 64.0,
    },
    "tracing": {
        "otlp_endpoint": "",
    },
}


def all_defaults() -> dict[str, Any]:
    merged = dict(DEFAULTS)
    for name in registry.AGENT_MODULES:
        merged[name] = registry.load_module(name).CONFIG_DEFAULTS
    return merged


def load_config(path: str | None) -> dict[str, Any]:
    return config.load(all_defaults(), path, free_form=("agent.facts", "virt.templates"))


def build_runtime(cfg: dict[str, Any], transport: Any,
                  config_path: str | None = None) -> AgentRuntime:
    host_id = cfg["agent"]["host_id"] or names.default_host_id()
    names.validate_host_id(host_id)
    policy: Policy
    if cfg["security"]["policy"]:
        policy = RulesPolicy.load(config.resolve(cfg["security"]["policy"], config_path),
                                  host_id)
        log.info("policy: %d rules from %s (default deny)", len(policy.rules),
                 cfg["security"]["policy"])
    else:
        policy = DiscoveryOnly()
        log.warning("no [security] policy file: only discovery is answered; every other "
                    "request is refused (see etc/policy.toml)")
    state = (config.resolve(cfg["agent"]["state_dir"], config_path)
             if cfg["agent"]["state_dir"] else config.default_state_dir())
    audit_path = (config.resolve(cfg["security"]["audit_log"], config_path)
                  if cfg["security"]["audit_log"] else state / f"audit-{host_id}.jsonl")
    agents = []
    for name in cfg["agent"]["agents"]:
        if name == names.BUILTIN_AGENT:
            continue
        module = registry.load_module(name)
        agents.append(module.create(cfg[name], host_id=host_id))
    sec = cfg["security"]
    verifier = approvals = signer = None
    if sec["trusted_keys"]:
        from hostbus.security.signing import Verifier  # cryptography, only where it is needed
        from hostbus.serving.approvals import Approvals, ApprovalStore

        verifier = Verifier.from_folder(config.resolve(sec["trusted_keys"], config_path))
        log.info("signatures required; trusted keys: %s", ", ".join(sorted(verifier.trusted))
                 or "none")
        approvals = Approvals(ApprovalStore(state / f"approvals-{host_id}.db",
                                            float(sec["approval_ttl_s"])), verifier)
    else:
        log.warning("no [security] trusted_keys: request signatures are not checked, and "
                    "requests that need approval are refused")
    if sec["signing_key"]:
        from hostbus.security.signing import Signer

        signer = Signer.load(config.resolve(sec["signing_key"], config_path))
        log.info("replies and events are signed with %s", sec["signing_key"])
    from hostbus.tracing import from_config

    tracer = from_config(cfg["tracing"], "hostbus-agent", host_id)
    if tracer is not None:
        log.info("tracing: spans exported to %s", cfg["tracing"]["otlp_endpoint"])
    spool = Spool(state / f"spool-{host_id}.db", int(float(cfg["spool"]["max_mb"]) * (1 << 20)))
    replay = ReplayGuard(float(cfg["security"]["clock_skew_s"]),
                         float(cfg["security"]["max_deadline_s"]),
                         path=state / f"recent-{host_id}.db")
    return AgentRuntime(
        transport, host_id, agents, verifier=verifier, replay=replay, approvals=approvals,
        signer=signer, spool=spool,
        heartbeat_interval=float(cfg["agent"]["heartbeat_interval"]),
        intervals={name: cfg[name] for name in cfg["agent"]["agents"] if name in cfg},
        max_message_bytes=int(cfg["agent"]["max_message_bytes"]),
        workers=int(cfg["agent"]["workers"]),
        facts=cfg["agent"]["facts"],
        policy=policy,
        audit=AuditLog(audit_path),
        tracer=tracer,
    )


def check_config(cfg: dict[str, Any], config_path: str | None) -> list[str]:
    """What ``--check-config`` reports, without connecting or writing anything: the host
    id, the broker URL, the policy, the keys and the agents' modules. Raises
    ``ConfigError`` (or ``ValueError``) naming what is wrong."""
    from hostbus.transport.url import parse_url

    host_id = cfg["agent"]["host_id"] or names.default_host_id()
    names.validate_host_id(host_id)
    found = [f"configuration {config_path or '(defaults)'}: ok",
             f"host {host_id}, broker {parse_url(cfg['broker']['url']).redacted()}"]
    sec = cfg["security"]
    if sec["policy"]:
        rules = RulesPolicy.load(config.resolve(sec["policy"], config_path), host_id).rules
        found.append(f"policy {sec['policy']}: {len(rules)} rules (default deny)")
    else:
        found.append("policy: none, so only discovery is answered (set [security] policy)")
    if sec["trusted_keys"] or sec["signing_key"]:
        from hostbus.security.signing import Signer, Verifier

        if sec["trusted_keys"]:
            keys = Verifier.from_folder(config.resolve(sec["trusted_keys"], config_path))
            found.append(f"trusted keys: {', '.join(sorted(keys.trusted)) or 'none'}")
        if sec["signing_key"]:
            Signer.load(config.resolve(sec["signing_key"], config_path))
            found.append("signing key: ok")
    if cfg["tracing"]["otlp_endpoint"]:
        from hostbus.tracing import from_config

        from_config(cfg["tracing"], "hostbus-agent", host_id)
        found.append(f"tracing: spans to {cfg['tracing']['otlp_endpoint']}")
    for name in cfg["agent"]["agents"]:
        if name == names.BUILTIN_AGENT:
            continue
        try:
            registry.load_module(name)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"agent {name!r} needs the Python module {exc.name!r}, which "
                              "is not installed (virt: pip install 'hostbus[virt]')") from None
        check = getattr(registry.load_module(name), "check_config", None)
        found.append(f"agent {name}: " + (check(cfg[name]) if check else "ok"))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hostbus-agent",
        description="The hostbus agent daemon: serves this host's agents over the broker.",
        epilog="Every setting can also come from the environment, e.g. HOSTBUS_BROKER_URL, "
               "HOSTBUS_AGENT_HOST_ID, HOSTBUS_AGENT_AGENTS=host. See etc/agent.toml.",
    )
    parser.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="overrides [agent] log_level")
    parser.add_argument("--check-config", action="store_true",
                        help="check the configuration, its policy, keys and agents without "
                             "connecting; exit 0 if good, 1 if not")
    parser.add_argument("--version", action="version", version=f"hostbus-agent {__version__}")
    args = parser.parse_args(argv)

    try:
        cfg = load_config(args.config)
        if args.check_config:
            print("\n".join(check_config(cfg, args.config)))
            return 0
    except (ConfigError, ValueError) as exc:
        print(f"hostbus-agent: {exc}", file=sys.stderr)
        return 1
    setup_logging(args.log_level or cfg["agent"]["log_level"])

    from hostbus.transport import connect
    from hostbus.transport.url import parse_url

    try:
        url = parse_url(cfg["broker"]["url"])
        host_id = cfg["agent"]["host_id"] or names.default_host_id()
        transport = connect(
            cfg["broker"]["url"], connection_name=f"hostbus-agent {host_id}",
            heartbeat=int(cfg["broker"]["heartbeat"]),
            max_backoff=float(cfg["broker"]["max_backoff"]),
            connect_timeout=float(cfg["broker"]["connect_timeout"]),
            wait_first=bool(cfg["broker"]["wait_at_start"]),
        )
        runtime = build_runtime(cfg, transport, args.config)
    except (ConfigError, SchemaError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    except ModuleNotFoundError as exc:
        log.error("an enabled agent needs the Python module %r, which is not installed "
                  "(for the virt agent: pip install 'hostbus[virt]')", exc.name)
        return 1
    except ConnectionError as exc:  # the hypervisor, for the virt agent
        log.error("%s", exc)
        return 2
    log.info("hostbus-agent %s starting: host %s, agents %s, broker %s, audit log %s",
             __version__, runtime.host_id, ", ".join(runtime.agent_names), url.redacted(),
             runtime.audit.path if runtime.audit else "none")
    stop_reason: list[str] = []
    stopped = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop_reason.append(signal.Signals(signum).name)
        stopped.set()
        if not started:
            transport.close()  # ends a wait for the broker

    started = False
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        transport.start()
        runtime.start()
        started = True
    except ConnectionFailed as exc:
        if stopped.is_set():
            log.info("received %s before the broker was reached", stop_reason[0])
            return 0
        log.error("%s", exc)
        return 2
    except BrokerRefused as exc:
        log.error("%s", exc)
        transport.close()
        return 3

    while not stopped.wait(1.0):
        pass
    log.info("received %s, going offline", stop_reason[0])
    runtime.stop(stop_reason[0])
    if runtime.tracer is not None:
        runtime.tracer.shutdown()  # what is recorded goes out first
    return 0


if __name__ == "__main__":
    sys.exit(main())
