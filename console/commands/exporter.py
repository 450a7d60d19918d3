"""The Prometheus exporter: ``hostbus exporter``."""

from __future__ import annotations

import click

from console.commands.common import CliError, Exit, service_exits


@service_exits(refused=False)
@click.command("exporter")
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False),
              metavar="FILE", help="Exporter config (see etc/exporter.toml).")
@click.option("--check-config", is_flag=True,
              help="Check the configuration and the keys it names; then exit (0 good, 1 not).")
def exporter(config_file: str | None, check_config: bool) -> int:
    """Serve the fleet's metrics for Prometheus on /metrics until SIGTERM/SIGINT.

    \b
    It follows events (host metrics and alerts, heartbeats, provisioning) and pings
    the fleet every probe_interval seconds. It is a console: enroll it once with
      hostbus broker enroll-console exporter
    then point Prometheus at it (etc/prometheus/prometheus.yml) and load the alerting
    rules (etc/prometheus/hostbus-alerts.yml) and the dashboard (etc/grafana/).
    """
    if check_config:
        from console.exporter.main import check
        from hostbus.errors import ConfigError

        try:
            for line in check(config_file):
                click.echo(line)
        except ConfigError as exc:
            raise CliError(Exit.FAILED, str(exc)) from None
        return Exit.OK
    from console.exporter.main import run

    return run(config_file)
