"""`hostbus bench`: the benchmarks' command. It joins the CLI through the
``hostbus.commands`` entry point group (pyproject.toml): the console never imports the
benchmarks."""

from __future__ import annotations

import click

from console.commands.common import EPILOG, CliContext, CliError, Exit, emit_json, usage
from console.commands.options import json_option


@click.command(epilog=EPILOG)
@click.option("--quick", is_flag=True, help="Small sizes: a smoke run of every benchmark.")
@click.option("--only", multiple=True,
              type=click.Choice(["call", "fanout", "events", "amqp10", "placement",
                                 "provisioning", "footprint", "soak", "faults", "history",
                                 "tracing", "scale", "peers", "reactor", "manager",
                                 "fanout10k"]),
              help="Run only these (repeatable). Default: all but soak, faults, history, "
                   "scale, peers, reactor, manager and fanout10k.")
@click.option("--calls", type=click.IntRange(10), help="Round trips per side (2000).")
@click.option("--agents", metavar="N,N,...",
              help="Simulated agent counts for broadcast ping (100,1000,5000).")
@click.option("--events", "n_events", type=click.IntRange(100), help="Events (20000).")
@click.option("--placement-hosts", type=click.IntRange(10), metavar="N",
              help="Simulated hosts (ten VMs each) placement decisions run over (1000).")
@click.option("--provision-hosts", type=click.IntRange(1), metavar="N",
              help="Virt agents (test driver) the provisioning benchmark places on (100).")
@click.option("--provision-requests", type=click.IntRange(1), metavar="N",
              help="Requests of one VM each the provisioning benchmark posts at once (300).")
@click.option("--idle", "idle_s", type=click.FloatRange(1), help="Idle agent seconds (60).")
@click.option("--soak-minutes", type=click.FloatRange(0.5), metavar="MIN",
              help="Length of --only soak: one agent under steady load, memory sampled (5).")
@click.option("--alarm-seconds", type=click.FloatRange(5), metavar="S",
              help="Length of the memory alarm in --only faults (70: past pika's 60 s "
                   "blocked-connection timeout; --quick: 10).")
@click.option("--history-stored", type=click.IntRange(1000), metavar="N",
              help="Events in the store that --only history queries (10,000,000; "
                   "--quick: 20,000).")
@click.option("--history-postgres", envvar="HOSTBUS_BENCH_POSTGRES", metavar="URL",
              help="With --only history: a PostgreSQL server to measure too, as a URL of a "
                   "role that may create databases (one is made and dropped).")
@click.option("--scale-hosts", type=click.IntRange(100), metavar="N",
              help="Hosts --only scale enrolls on a node of its own (10,000; --quick: "
                   "1,000).")
@click.option("--scale-agents", type=click.IntRange(1), metavar="N",
              help="Of which --only scale connects as idle agents, a connection each (200; "
                   "--quick: 20).")
@click.option("--peer-servers", type=click.IntRange(1), metavar="N",
              help="Servers the --only peers broadcast reaches (100; --quick: 10).")
@click.option("--manager-hosts", type=click.IntRange(2), metavar="N",
              help="Simulated virt hosts (ten VMs each) --only manager runs its manager "
                   "over (1,000; --quick: 20).")
@click.option("--fanout10k-agents", type=click.IntRange(10), metavar="N",
              help="Simulated agents the --only fanout10k broadcast reaches, on a node of "
                   "its own (10,000; --quick: 200).")
@click.option("--png", type=click.Path(dir_okay=False), metavar="PATH",
              help="Write a chart (latency distribution, scaling with N) to PATH.")
@click.option("--admin-url", envvar="HOSTBUS_CONSOLE_ADMIN_URL", metavar="URL",
              help="Management API, http://user:pass@host:15672 (an administrator).")
@json_option
@click.pass_obj
def bench(ctx: CliContext, quick: bool, only: tuple[str, ...], calls: int | None,
          agents: str | None, n_events: int | None, placement_hosts: int | None,
          provision_hosts: int | None,
          provision_requests: int | None, idle_s: float | None,
          soak_minutes: float | None, alarm_seconds: float | None,
          history_stored: int | None, history_postgres: str | None,
          scale_hosts: int | None, scale_agents: int | None, peer_servers: int | None,
          manager_hosts: int | None, fanout10k_agents: int | None, png: str | None,
          admin_url: str | None, as_json: bool) -> Exit:
    """Measure hostbus against raw pika and raw proton on this broker, in a throwaway vhost.

    Call round trips, broadcast ping to N simulated agents (the real dispatch path),
    event throughput, the same calls and events over AMQP 1.0 against raw proton
    (amqp10; needs the rabbitmq_amqp1_0 plugin), provisioning on libvirt's test driver,
    and one real agent's memory and CPU against a bare Python floor. Takes a few
    minutes (--quick: seconds). Whatever the console's URL scheme, the broker is
    reached over both protocols on its one port.
    `--only soak --soak-minutes 10` runs one agent under steady load and reports
    whether its memory stays flat. `--only faults` starts a RabbitMQ node of its own
    (root, a source checkout) and reports events lost, duplicated and reordered and the
    seconds to recover when the broker crashes, raises a memory alarm or loses a host's
    queues, and how fast a ping is answered behind 100 waiting calls. `--only history`
    measures the historian's stores against their raw drivers, its ingest through the
    broker, queries over --history-stored events (minutes: it fills a store), and a
    RabbitMQ stream against the classic queue it reads. `--only scale` (a node of its
    own) enrolls --scale-hosts hosts in bulk against one at a time, and reports the
    broker's memory per enrolled host and its memory and CPU per connected idle agent.
    `--only peers` measures the same call, broadcast and events against oslo.messaging
    and nameko, each installed on first use into a virtual environment of its own under
    ~/.cache/hostbus-bench/peers ($HOSTBUS_BENCH_PEERS_CACHE), never into hostbus's.
    `--only reactor` bursts 10,000 events at the reactor with 100 rules (rules
    evaluated per second, memory, none dropped) and measures a failing check to its
    action, each against raw pika.
    `--only manager` runs the manager over --manager-hosts simulated virt hosts in
    process (ten VMs each): placement decisions on its kept index against one rebuilt
    per decision, plans over the whole fleet, a host with 50 HA VMs lost until they
    all run elsewhere, its memory, and its restart on its state file.
    `--only fanout10k` (a node of its own, about 10 minutes) broadcasts to 10,000
    simulated agents, every reply back, against a raw pika fan-out, and reports the
    console's memory (a process of its own) and the broker's.
    """
    from benchmarks import report
    from benchmarks.peers import PeerError
    from benchmarks.run import ALL, Plan, run
    from hostbus.transport.url import parse_url

    plan = Plan.quick() if quick else Plan()
    plan.only = tuple(only) if only else ALL
    if calls:
        plan.calls = calls
    if agents:
        try:
            plan.agents = [int(x) for x in agents.split(",") if x.strip()]
        except ValueError:
            raise usage(f"--agents {agents!r}: expected numbers like 100,1000") from None
    if n_events:
        plan.events = n_events
    if placement_hosts:
        plan.placement_hosts = placement_hosts
    if provision_hosts:
        plan.provision_hosts = provision_hosts
    if provision_requests:
        plan.provision_requests = provision_requests
    if idle_s:
        plan.idle_s = idle_s
    if soak_minutes:
        plan.soak_minutes = soak_minutes
    if alarm_seconds:
        plan.alarm_s = alarm_seconds
    if history_stored:
        plan.history_stored = history_stored
    plan.history_postgres = history_postgres
    if scale_hosts:
        plan.scale_hosts = scale_hosts
    if scale_agents:
        plan.scale_agents = min(scale_agents, plan.scale_hosts)
    if peer_servers:
        plan.peer_servers = peer_servers
    if manager_hosts:
        plan.manager_hosts = manager_hosts
    if fanout10k_agents:
        plan.fanout10k_agents = fanout10k_agents
    url = parse_url(ctx.url)
    scheme = url.scheme.removesuffix("10")  # the baselines are 0-9-1; amqp10 gets its own
    amqp = f"{scheme}://{url.user}:{url.password}@{url.host}:{url.port}"
    try:
        results = run(plan, amqp=amqp, admin_url=admin_url or ctx.cfg["console"]["admin_url"])
    except PeerError as exc:
        raise CliError(Exit.FAILED, f"bench --only peers: {exc}") from exc
    if png:
        report.chart(results, png)
    shown = dict(results)
    for side in ("call", "amqp10"):
        if side in shown:
            shown[side] = {k: v for k, v in shown[side].items() if k != "samples"}
    if as_json:
        shown["targets"] = [{"what": w, "measured": m, "target": t, "met": ok}
                            for w, m, t, ok in report.checks(results)]
        emit_json(shown)
    else:
        click.echo(report.text(results))
        if png:
            click.echo(f"\nchart: {png}")
    return Exit.OK

