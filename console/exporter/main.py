"""``hostbus exporter --config FILE``: the fleet's metrics for Prometheus until SIGTERM.

A console like any other (``hostbus broker enroll-console exporter``): it follows events
on a private subscription, pings the fleet every ``probe_interval`` seconds, and serves
``/metrics`` on ``listen``. It keeps no state on disk: after a restart the gauges fill in
again with the next heartbeats and samples.

Exit codes: 0 stopped cleanly, 1 configuration error, 2 cannot reach the broker or
cannot listen.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from console.services import wait_for_stop
from hostbus import config
from hostbus.errors import ConfigError, ConnectionFailed, HostbusError
from hostbus.logs import setup_logging
from hostbus.security.keys import keys_from_config

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from console.client import Console
    from console.exporter.metrics import FleetMetrics

log = logging.getLogger("hostbus.exporter")

DEFAULTS: dict[str, Any] = {
    "broker": {"url": "amqp://guest:guest@127.0.0.1:5672/hostbus", "connect_timeout": 5.0},
    "exporter": {
        "listen": "127.0.0.1:9477",
        "patterns": ["#"],
        "probe_interval": 15.0,
        "forget_after": 86400.0,
        "log_level": "info",
    },
    "security": {"signing_key": "", "agent_keys": "", "multi_host_users": ["guest"]},
}


def listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"[exporter] listen = {text!r}: give ADDRESS:PORT, such as "
                          "127.0.0.1:9477 (0.0.0.0:9477 for every interface)")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_config(path: str | None) -> dict[str, Any]:
    cfg = config.load(DEFAULTS, path)
    e = cfg["exporter"]
    listen_address(e["listen"])
    if float(e["probe_interval"]) < 0:
        raise ConfigError("[exporter] probe_interval must be 0 (no probes) or more seconds")
    if not e["patterns"]:
        raise ConfigError("[exporter] patterns is empty: give at least '#'")
    return cfg


class Exporter:
    """The subscription, the probes and the HTTP server around one console."""

    def __init__(self, console: Console, *, listen: tuple[str, int],
                 patterns: list[str], probe_interval: float = 15.0,
                 forget_after_s: float = 86400.0) -> None:
        from prometheus_client import CollectorRegistry

        from console.exporter.metrics import FleetMetrics

        self.console = console
        self.registry = CollectorRegistry()
        self.metrics: FleetMetrics = FleetMetrics(self.registry,
                                                  forget_after_s=forget_after_s)
        self.listen = listen
        self.patterns = patterns
        self.probe_interval = probe_interval
        self._stop = threading.Event()
        self._server: WSGIServer | None = None
        self._probe: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_port)

    def start(self) -> None:
        from prometheus_client import start_http_server

        self.console.subscribe(self.patterns, lambda ev, note: self.metrics.observe(ev))
        self._server, _ = start_http_server(self.listen[1], self.listen[0],
                                            registry=self.registry)
        if self.probe_interval > 0:
            self._probe = threading.Thread(target=self._probes, name="hostbus-exporter-probe",
                                           daemon=True)
            self._probe.start()

    def _probes(self) -> None:
        observe = self.metrics.calls.labels("agent", "ping").observe
        while not self._stop.wait(self.probe_interval):
            try:
                self.console.discover(on_reply=lambda info: observe(info.rtt_ms / 1000))
            except HostbusError as exc:  # the connection is away: the next probe retries
                log.warning("probe failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._probe is not None:
            self._probe.join(10)


def _console(cfg: dict[str, Any], config_path: str | None) -> Console:
    from console.client import Console

    sec = cfg["security"]
    signer, verifier = keys_from_config(sec, config_path)
    return Console.connect(cfg["broker"]["url"],
                           connect_timeout=float(cfg["broker"]["connect_timeout"]),
                           signer=signer, agent_keys=verifier,
                           multi_host_users=sec["multi_host_users"])


def check(config_path: str | None) -> list[str]:
    """What ``--check-config`` reports. Raises ``ConfigError``."""
    cfg = load_config(config_path)
    found = [f"configuration {config_path or '(defaults)'}: ok",
             f"listens on {cfg['exporter']['listen']}, follows "
             f"{' '.join(cfg['exporter']['patterns'])}"]
    signer, verifier = keys_from_config(cfg["security"], config_path)
    if signer is not None:
        found.append("signing key: ok")
    if verifier is not None:
        found.append("agent keys: ok (only signed events count)")
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError("the exporter needs prometheus_client: pip install "
                          "'hostbus[metrics]'") from None
    return found


def run(config_path: str | None, *, stop: threading.Event | None = None) -> int:
    try:
        cfg = load_config(config_path)
        e = cfg["exporter"]
        check(config_path)
    except (ConfigError, ValueError) as exc:
        print(f"hostbus exporter: {exc}")
        return 1
    setup_logging(e["log_level"])
    try:
        console = _console(cfg, config_path)
    except ConnectionFailed as exc:
        log.error("%s", exc)
        return 2
    exporter = Exporter(console, listen=listen_address(e["listen"]),
                        patterns=list(e["patterns"]), probe_interval=float(e["probe_interval"]),
                        forget_after_s=float(e["forget_after"]))
    try:
        exporter.start()
    except OSError as exc:
        log.error("cannot listen on %s: %s", e["listen"], exc)
        console.close()
        return 2
    log.info("hostbus exporter serving /metrics on %s:%d", exporter.listen[0], exporter.port)
    reason = wait_for_stop(stop)
    log.info("stopping (%s)", reason or "asked to")
    exporter.stop()
    console.close()
    return 0
