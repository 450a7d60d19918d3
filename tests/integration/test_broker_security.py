"""Layer 1, broker least privilege: each identity gets its own broker user with the
rights its kind is granted (broker_config/README.md), and the broker itself refuses the
rest (tested with a plain AMQP client and the enrolled credentials)."""

import json
import os
import subprocess
import sys
import threading
import tomllib
import uuid
from pathlib import Path

import pika
import pytest

from tests.fakes import EventCollector, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core]
BIN = Path(sys.executable).parent


def refusal(url, action):
    """Run ``action(channel)``; return the broker's refusal code (None if allowed)."""
    conn = raw_connection(url)
    ch = conn.channel()
    try:
        action(ch)
        ch.basic_qos(prefetch_count=1)  # a round trip: an asynchronous refusal shows here
        return None
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code
    finally:
        if conn.is_open:
            conn.close()


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_the_broker_refuses_an_agent_anything_outside_its_grant(rabbitmq, enroll):
    host, other = name("sec"), name("sec")
    rabbitmq.enroll(other, ["host"])
    _, url = enroll("agent", host)
    props = pika.BasicProperties(user_id=host)
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.event", f"host.{host}.metrics", b"{}", props)) is None
    assert refusal(url, lambda ch: ch.basic_publish("hostbus.reply", "hostbus.reply.x.y",
                                                    b"{}", props)) is None
    assert refusal(url, lambda ch: ch.basic_consume(f"hostbus.host.{host}",
                                                    lambda *a: None)) is None
    assert refusal(url, lambda ch: ch.basic_consume(f"hostbus.host.{host}.agent",
                                                    lambda *a: None)) is None
    # ...and nothing else:
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.event", f"host.{other}.metrics", b"{}", props)) == 403  # as another host
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.request", f"host.{other}", b"{}", props)) == 403  # any request
    assert refusal(url, lambda ch: ch.basic_publish(
        "", f"hostbus.host.{other}", b"{}", props)) == 403  # around the exchanges
    assert refusal(url, lambda ch: ch.basic_consume(
        f"hostbus.host.{other}", lambda *a: None)) == 403  # another host's queue
    assert refusal(url, lambda ch: ch.basic_consume(
        f"hostbus.host.{other}.agent", lambda *a: None)) == 403  # ...either of them
    assert refusal(url, lambda ch: ch.queue_declare("hostbus.sub.x")) == 403  # configure
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.event", f"host.{host}.metrics", b"{}",
        pika.BasicProperties(user_id="someone-else"))) == 406  # a forged user_id


def test_the_broker_refuses_an_app_anything_but_provisioning(rabbitmq, enroll):
    app = name("app")
    _, url = enroll("app", app)
    own = f"hostbus.reply.{app}.q1"

    def own_reply_queue(ch):
        ch.queue_declare(own, exclusive=True)
        ch.queue_bind(own, "hostbus.reply", routing_key=own)

    assert refusal(url, own_reply_queue) is None
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.provision", "provision", b"{}", pika.BasicProperties(user_id=app))) is None
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.request", "host.any", b"{}")) == 403
    assert refusal(url, lambda ch: ch.queue_declare(f"hostbus.reply.{name('other')}.q")) == 403
    assert refusal(url, lambda ch: ch.queue_declare(f"hostbus.sub.{app}.x")) == 403

    def spy_on_events(ch):
        ch.queue_declare(own, exclusive=True)
        ch.queue_bind(own, "hostbus.event", routing_key="#")

    assert refusal(url, spy_on_events) == 403
    assert refusal(url, lambda ch: ch.basic_consume("hostbus.provision",
                                                    lambda *a: None)) == 403


def test_a_request_the_broker_refuses_fails_at_once_with_the_brokers_words(rabbitmq,
                                                                          enroll):
    """An app may not send requests: the caller hears the broker's reason straight away,
    over either transport, instead of waiting out its timeout for a reply."""
    from console.client import Console
    from hostbus.errors import BrokerRefused

    app = name("app")
    _, url = enroll("app", app)
    console = Console.connect(url)
    try:
        with pytest.raises(BrokerRefused) as info:
            console.call("agent", "ping", host="web01", timeout=120)
        # RabbitMQ 3.x says ACCESS_REFUSED; 4.x over AMQP 1.0, amqp:unauthorized-access
        assert "ACCESS_REFUSED" in str(info.value) or "unauthorized" in str(info.value)
        assert "access to exchange 'hostbus.request'" in str(info.value)
        assert f"user '{app}'" in str(info.value)
    finally:
        console.close()


def test_enrolled_agent_and_console_work_with_their_own_users(rabbitmq, enroll, tmp_path,
                                                              console):
    host, operator = name("sec"), name("ops")
    agent_cfg, _ = enroll("agent", host)
    console_cfg, console_url = enroll("console", operator)
    assert tomllib.loads(agent_cfg.read_text())["agent"] == {"host_id": host,
                                                             "agents": ["host"]}
    online = EventCollector()
    console.subscribe([f"agent.{host}.online"], online)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTBUS_")}
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[[rule]]\nname = "operator"\ncallers = ["{operator}"]\nallow = true\n')
    proc = subprocess.Popen([str(BIN / "hostbus-agent"), "--config", str(agent_cfg)],
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "HOSTBUS_HOST_POWER_CONTROL": "dry-run",
                                 "HOSTBUS_SECURITY_POLICY": str(policy),
                                 "HOSTBUS_SECURITY_AUDIT_LOG": str(tmp_path / "audit.jsonl")})
    try:
        event = online.wait_for(lambda e: True, timeout=30)
        assert event.user_id == host  # the broker checked who published it
        done = subprocess.run([str(BIN / "hostbus"), "--config", str(console_cfg), "call",
                               "host.identify", "-H", host, "--json"], capture_output=True,
                              text=True, env=env, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["results"][0]["result"]["host_id"] == host
        found = subprocess.run([str(BIN / "hostbus"), "--config", str(console_cfg), "agents",
                                "-H", host, "--json"], capture_output=True, text=True,
                               env=env, timeout=60, check=False)
        assert found.returncode == 0 and json.loads(found.stdout)["count"] == 1
    finally:
        proc.terminate()
        proc.wait(30)
    # The console's own rights do not stretch to another console's queues.
    assert refusal(console_url, lambda ch: ch.queue_declare(
        f"hostbus.reply.{name('someone')}.x", exclusive=True)) == 403


def test_revoked_identities_cannot_connect(rabbitmq, enroll):
    who = name("gone")
    _, url = enroll("console", who)
    done = enroll.run("broker", "revoke", who, "--json")
    assert done.returncode == 0 and json.loads(done.stdout) == {"user": who, "revoked": True}
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        raw_connection(url)
    again = enroll.run("broker", "revoke", who)
    assert again.returncode == 3 and f"no broker user {who}" in again.stderr
    dup = name("dup")
    existing = enroll.run("broker", "enroll-console", dup, "-o", "/dev/null")
    assert existing.returncode == 2 and "pass --force" in existing.stderr
    assert not rabbitmq.admin.revoke(dup), "a refused enrollment left a broker user behind"


def ping_request(host: str, user: str, reply_to: str) -> tuple[bytes, pika.BasicProperties]:
    from datetime import UTC, datetime, timedelta

    body = json.dumps({"v": 1, "agent": "agent", "method": "ping", "args": {},
                       "target": {"host": host},
                       "deadline": (datetime.now(UTC) + timedelta(seconds=60)).isoformat()})
    return body.encode(), pika.BasicProperties(
        message_id=str(uuid.uuid4()), reply_to=reply_to, user_id=user,
        content_type="application/json", type="hostbus.request/1")


@pytest.mark.hostbus_core  # on RabbitMQ 4.x too
def test_replies_are_readable_only_by_their_owner(rabbitmq, enroll, start_agent):
    """Another console or app that learns a reply key cannot bind a queue of its own to
    it (over AMQP 0-9-1 or 1.0), nor to patterns that would cover it; the owner can."""
    runtime, _ = start_agent()
    alice, bob, app = name("alice"), name("bob"), name("app")
    _, alice_url = enroll("console", alice)
    _, bob_url = enroll("console", bob)
    _, app_url = enroll("app", app)
    key = f"hostbus.reply.{alice}.{uuid.uuid4().hex}"  # what alice's reply_to says

    def bind(queue, routing_key):
        def action(ch):
            ch.queue_declare(queue, exclusive=True)
            ch.queue_bind(queue, "hostbus.reply", routing_key=routing_key)
        return action

    for spy, url in ((bob, bob_url), (app, app_url)):
        own = f"hostbus.reply.{spy}.spy"
        for stolen in (key, "#", "hostbus.reply.#", f"hostbus.reply.*.{key.split('.')[3]}"):
            assert refusal(url, bind(own, stolen)) == 403, (spy, stolen)
        assert refusal(url, bind(own, f"hostbus.reply.{spy}.#")) is None  # its own

    # Over AMQP 1.0 a receiver from /exchange/hostbus.reply/KEY binds a queue the broker
    # makes: refused too (RabbitMQ 3.10 drops the connection; 4.0 ends the session).
    from proton import ConnectionException, Timeout
    from proton.utils import LinkDetached

    from tests.integration.test_poison_messages import amqp10

    # RabbitMQ 4.0 ends the session without a detach a blocking client sees: 5 s will do.
    with amqp10(bob_url, timeout=5) as conn:
        try:
            spy = conn.create_receiver(f"/exchange/hostbus.reply/{key}")
        except (LinkDetached, ConnectionException, Timeout):  # refused
            spy = None
        # The owner's request and reply, meanwhile: the reply reaches alice.
        owner = raw_connection(alice_url)
        ch = owner.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, "hostbus.reply", routing_key=key)
        body, props = ping_request(runtime.host_id, alice, key)
        ch.basic_publish("hostbus.request", f"agent.{runtime.host_id}", body, props)
        for _m, got, reply in ch.consume(queue, inactivity_timeout=30):
            assert reply is not None and got.correlation_id == props.message_id
            break
        owner.close()
        if spy is not None:  # attached: it must not have had a copy
            with pytest.raises(Timeout):
                spy.receive(timeout=2)


@pytest.mark.hostbus_core  # on RabbitMQ 4.x too
def test_setup_migrates_the_reply_exchange_of_an_older_install(rabbitmq, enroll):
    """An install made before replies were confined: hostbus.reply is a direct exchange,
    identities have no topic read permission on it, and a console has bound a queue to
    another console's reply key. `broker setup` makes the exchange a topic exchange: the
    live console gets its replies again (reconnecting by itself where it must), the
    stolen binding is dropped and said, and binding it again is refused."""
    from console.client import Console
    from hostbus import topology
    from hostbus.serving.runtime import AgentRuntime
    from tests.fakes import make_host_agent

    admin = rabbitmq.admin
    vhost = f"hostbus-migrate-{uuid.uuid4().hex[:6]}"
    old = topology.definitions()
    for exchange in old["exchanges"]:
        if exchange["name"] == "hostbus.reply":
            exchange["type"] = "direct"
    admin.create_vhost(vhost)
    admin._call("POST", f"/api/definitions/{admin._q(vhost)}", old)
    alice, bob, host = name("alice"), name("bob"), name("mig")
    users = []
    try:
        urls = {}
        for who in (alice, bob):
            password = admin.create_identity(vhost, "console", who)
            users.append(who)
            # As enrolled then: a topic permission on hostbus.event only.
            where = f"/api/topic-permissions/{admin._q(vhost)}/{who}"
            admin._call("DELETE", where)
            admin._call("PUT", where, {"exchange": "hostbus.event", "write": "^$",
                                       "read": ".*"})
            scheme, where = rabbitmq.url.split("://")[0], rabbitmq.amqp.rsplit("@", 1)[1]
            urls[who] = f"{scheme}://{who}:{password}@{where}/{vhost}"
        admin.enroll_host(vhost, host, ["host"])
        guest_url = rabbitmq.url.rsplit("/", 1)[0] + f"/{vhost}"
        runtime = AgentRuntime.serve(guest_url, host, [make_host_agent(host)[0]],
                                     heartbeat_interval=0)
        console = Console.connect(urls[alice])
        try:
            for _ in range(2):  # the second opens this thread's own connection (0-9-1)
                assert console.call("agent", "ping", host=host, timeout=30).status == "ok"
            keys = [b["routing_key"] for b in admin._call(
                "GET", f"/api/exchanges/{admin._q(vhost)}/hostbus.reply/bindings/source")]
            # Each of alice's reply keys: her console's own connection's, and over AMQP
            # 0-9-1 the calling thread's, where her calls' replies come back.
            stolen_keys = [k for k in keys if k.startswith(f"hostbus.reply.{alice}.")]
            stolen = stolen_keys[-1]
            spy_url = urls[bob].replace("amqp10://", "amqp://")
            spy_queue = f"hostbus.reply.{bob}.spy"
            spying = raw_connection(spy_url)
            spying.channel().queue_declare(spy_queue, durable=True)
            for key in stolen_keys:
                spying.channel().queue_bind(spy_queue, "hostbus.reply", routing_key=key)
            assert console.call("agent", "ping", host=host, timeout=30).status == "ok"
            copies = spying.channel().queue_declare(spy_queue, passive=True)
            assert copies.method.message_count == 1, "the old install leaked a reply copy"
            spying.close()

            back = threading.Event()
            console.transport.on_connection_restored(back.set)
            done = enroll.run("broker", "setup", "--vhost", vhost, "--json")
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)
            assert report["reply_exchange_migrated"] is True
            assert [d for d in report["reply_bindings_dropped"] if spy_queue in d]
            assert {alice, bob} <= set(report["identities"])
            exchange = admin._call("GET", f"/api/exchanges/{admin._q(vhost)}/hostbus.reply")
            assert exchange["type"] == "topic"

            # The live console's replies reach it again: where its reply queue is private
            # to its connection (AMQP 0-9-1; AMQP 1.0 on RabbitMQ 4), that connection is
            # closed and it reconnects by itself; over AMQP 1.0 on RabbitMQ 3.x its queue
            # is bound again for it. Over AMQP 0-9-1 the console has two: its own, and
            # the one this thread's calls went out on.
            if rabbitmq.transport == "amqp091":
                assert report["connections_closed"] == 2
            if report["connections_closed"]:
                assert back.wait(30), "the console did not reconnect"
            assert console.call("agent", "ping", host=host, timeout=10).status == "ok"
            # ... and no longer the spy, who may not bind that key again.
            spying = raw_connection(spy_url)
            copies = spying.channel().queue_declare(spy_queue, passive=True)
            assert copies.method.message_count == 1
            spying.close()
            assert refusal(spy_url, lambda ch: ch.queue_bind(
                spy_queue, "hostbus.reply", routing_key=stolen)) == 403
            again = enroll.run("broker", "setup", "--vhost", vhost, "--json")
            assert again.returncode == 0 and "reply_exchange_migrated" not in again.stdout
        finally:
            console.close()
            runtime.stop("test over")
    finally:
        for who in users:
            admin.revoke(who)
        admin.delete_vhost(vhost)


@pytest.mark.hostbus_core  # on RabbitMQ 4.x too
def test_the_broker_refuses_a_service_anything_outside_its_grant(rabbitmq, enroll):
    svc, other = name("svc"), name("sec")
    rabbitmq.enroll(other, ["host"])
    cfg, url = enroll("service", svc)
    assert tomllib.loads(cfg.read_text())["provisioner"] == {"host_id": svc}
    props = pika.BasicProperties(user_id=svc)
    own = f"hostbus.reply.{svc}.q1"

    def own_reply_queue(ch):
        ch.queue_declare(own, exclusive=True)
        ch.queue_bind(own, "hostbus.reply", routing_key=f"{own}.#")

    def consume_briefly(queue):
        def action(ch):
            tag = ch.basic_consume(queue, lambda *a: None)
            ch.basic_cancel(tag)  # anything delivered meanwhile goes back, unacked
        return action

    # What a service does: serve its queues, call agents, answer, report as itself.
    assert refusal(url, consume_briefly(f"hostbus.host.{svc}")) is None
    assert refusal(url, consume_briefly(f"hostbus.host.{svc}.agent")) is None
    assert refusal(url, consume_briefly("hostbus.provision")) is None
    assert refusal(url, own_reply_queue) is None
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.request", "virt._all", b"{}", props)) is None
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.reply", "hostbus.reply.shop.x", b"{}", props)) is None
    for key in (f"provision.{svc}.accepted", f"agent.{svc}.online"):
        assert refusal(url, lambda ch, key=key: ch.basic_publish(
            "hostbus.event", key, b"{}", props)) is None
    # ... and nothing else:
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.event", f"provision.{other}.accepted", b"{}", props)) == 403  # as another
    assert refusal(url, consume_briefly(f"hostbus.host.{other}")) == 403
    assert refusal(url, consume_briefly(f"hostbus.host.{other}.agent")) == 403
    assert refusal(url, consume_briefly("hostbus.dead")) == 403
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.provision", "provision", b"{}", props)) == 403
    assert refusal(url, lambda ch: ch.basic_publish(
        "", f"hostbus.host.{other}", b"{}", props)) == 403  # around the exchanges
    assert refusal(url, lambda ch: ch.queue_declare(f"hostbus.sub.{other}.x")) == 403

    def read_events(pattern):
        def action(ch):
            queue = ch.queue_declare("", exclusive=True).method.queue
            ch.queue_bind(queue, "hostbus.event", routing_key=pattern)
        return action

    # The events it was given (the provisioner follows the VMs' lifecycle), no others:
    assert refusal(url, read_events("virt.*.domain.lifecycle")) is None
    for pattern in ("#", "virt.#", "host.*.alert", "virt.*.domain.*"):
        assert refusal(url, read_events(pattern)) == 403, pattern

    def read_anothers_replies(ch):
        ch.queue_declare(own, exclusive=True)
        ch.queue_bind(own, "hostbus.reply", routing_key="hostbus.reply.shop.#")

    assert refusal(url, read_anothers_replies) == 403
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.event", f"agent.{svc}.online", b"{}",
        pika.BasicProperties(user_id="someone-else"))) == 406

    # A service enrolled with --provision (the reactor, whose rules may ask for VMs)
    # may post provisioning requests too
    poster = name("svc")
    _, poster_url = enroll("service", poster, "--provision")
    assert refusal(poster_url, lambda ch: ch.basic_publish(
        "hostbus.provision", "provision", b"{}", pika.BasicProperties(user_id=poster))) \
        is None


@pytest.mark.hostbus_core  # on RabbitMQ 4.x too
def test_the_provisioner_runs_as_its_own_service_identity(rabbitmq, enroll, console,
                                                          tmp_path):
    """Nothing needs guest or an administrator: the provisioner runs with the user
    `broker enroll-service` made, an enrolled app posts a request with a plain client,
    and the VM is made on a virt agent."""
    import copy

    from agents import virt
    from hostbus.serving.runtime import AgentRuntime

    svc, app, kvm = name("prov"), name("shop"), name("kvm")
    cfg, _ = enroll("service", svc)
    _, app_url = enroll("app", app)
    rabbitmq.enroll(kvm, ["virt"])
    settings = copy.deepcopy(virt.CONFIG_DEFAULTS)
    settings["stats_interval"] = 0
    agent = virt.create(settings, host_id=kvm)
    hypervisor = AgentRuntime.serve(rabbitmq.url, kvm, [agent], heartbeat_interval=3600)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[[rule]]\nname = "shop"\ncallers = ["{app}"]\nallow = true\n')
    with cfg.open("a") as fh:  # what `enroll-service` wrote, plus the service's settings
        fh.write(f'state_dir = "{tmp_path / "state"}"\npolicy = "{policy}"\n'
                 f'call_timeout = 30.0\n')
    online = EventCollector()
    console.subscribe([f"agent.{svc}.online"], online)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTBUS_")}
    proc = subprocess.Popen([str(BIN / "hostbus"), "provisioner", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    try:
        assert online.wait_for(lambda e: True, timeout=30).user_id == svc
        root = Path(__file__).resolve().parents[2]
        done = subprocess.run(
            [sys.executable, str(root / "examples" / "raw_provision.py"),
             "--url", app_url.replace("amqp10://", "amqp://"), "--template", "web",
             "--owner", app], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        reply = json.loads(done.stdout)
        assert reply["status"] == "ok" and reply["host"] == svc
        assert [vm["host"] for vm in reply["result"]["vms"]] == [kvm]
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
        hypervisor.stop("test over")
        agent.conn.close()
    assert "ACCESS_REFUSED" not in output, output


@pytest.mark.hostbus_core  # on RabbitMQ 4.x too
def test_enrolling_a_name_that_exists_elsewhere_is_refused_and_changes_nothing(rabbitmq,
                                                                               enroll,
                                                                               tmp_path):
    """Broker users are global: enrolling a name another vhost uses would reset its
    password there. It is refused with what exists where and what to do."""
    taken = name("ops")
    _, url = enroll("console", taken)
    elsewhere = f"hostbus-other-{uuid.uuid4().hex[:6]}"
    rabbitmq.admin.setup(elsewhere)
    try:
        for command in (["enroll-console", taken], ["enroll-app", taken],
                        ["enroll", taken, "--agents", "host"],
                        ["enroll-service", taken, "--agents", "provision"]):
            done = enroll.run("broker", *command, "--vhost", elsewhere,
                              "-o", str(tmp_path / f"{command[0]}.toml"))
            assert done.returncode == 2, (command, done.stdout, done.stderr)
            assert f"vhost '{rabbitmq.vhost}'" in done.stderr, done.stderr
            assert "hostbus broker revoke" in done.stderr and "another name" in done.stderr
        raw_connection(url).close()  # the password it has is still the one that works
        assert not list(tmp_path.glob("enroll*.toml")), "a config was written"
        assert not rabbitmq.admin._exists(
            "GET", f"/api/queues/{elsewhere}/hostbus.host.{taken}"), "a queue was made"
        admin_user = enroll.run("broker", "enroll-console", "guest", "--vhost", elsewhere,
                                "-o", str(tmp_path / "guest.toml"))
        assert admin_user.returncode == 2 and "not a hostbus identity" in admin_user.stderr
    finally:
        rabbitmq.admin.delete_vhost(elsewhere)


def test_hosts_enrolled_from_a_file_get_exactly_the_rights_of_one_enrolled_alone(
        rabbitmq, enroll, tmp_path):
    """`broker enroll --from FILE`: every host its queues and its own user in a few
    definitions imports, with the same grant as `broker enroll HOST`; a bad file, or
    a name taken elsewhere, is refused before anything is made."""
    alone = name("one")
    enroll("agent", alone)
    hosts = [name("many") for _ in range(3)]
    listing = tmp_path / "hosts.txt"
    listing.write_text(f"# the fleet\n{hosts[0]}\n{hosts[1]} host,virt  # a hypervisor\n\n"
                       f"{hosts[2]}\n")
    try:
        done = enroll.run("broker", "enroll", "--from", str(listing),
                          "--config-dir", str(tmp_path / "configs"), "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["hosts"] == 3
        admin, vhost = rabbitmq.admin, rabbitmq.vhost

        def rights(user):
            perm = admin._get(f"/api/permissions/{vhost}/{user}")
            topics = admin._get(f"/api/topic-permissions/{vhost}/{user}")
            text = json.dumps([{k: v for k, v in perm.items() if k not in ("user", "vhost")},
                               [{k: v for k, v in t.items() if k not in ("user", "vhost")}
                                for t in topics]])
            return text.replace(user.replace("-", "\\\\-"), "NAME")

        assert all(rights(h) == rights(alone) for h in hosts)
        config = tmp_path / "configs" / f"{hosts[1]}.toml"
        assert os.stat(config).st_mode & 0o777 == 0o600
        agent_cfg = tomllib.loads(config.read_text())
        assert agent_cfg["agent"]["agents"] == ["host", "virt"]
        url = agent_cfg["broker"]["url"].replace("amqp10://", "amqp://")
        props = pika.BasicProperties(user_id=hosts[1])
        assert refusal(url, lambda ch: ch.basic_consume(f"hostbus.host.{hosts[1]}",
                                                        lambda *a: None)) is None
        assert refusal(url, lambda ch: ch.basic_publish(
            "hostbus.event", f"host.{hosts[0]}.metrics", b"{}", props)) == 403
        def keys(host):
            return {b["routing_key"] for b in
                    admin._get(f"/api/queues/{vhost}/hostbus.host.{host}/bindings")}

        assert f"virt.{hosts[1]}" in keys(hosts[1]) and f"host.{hosts[1]}" in keys(hosts[1])
        assert f"host.{hosts[0]}" in keys(hosts[0]) and f"virt.{hosts[0]}" not in keys(hosts[0])

        fresh = name("new")
        for text, says in ((f"{fresh}\n{fresh}\n", "listed already (line 1)"),
                           (f"{fresh}\nBad.Name\n", "line 2"),
                           (f"{fresh}\nguest\n", "not hostbus identities: guest")):
            listing.write_text(text)
            bad = enroll.run("broker", "enroll", "--from", str(listing),
                             "--config-dir", str(tmp_path / "refused"))
            assert bad.returncode == 2 and says in bad.stderr, (text, bad.stderr)
            assert admin._get(f"/api/users/{fresh}") is None, "a user was made"
            assert not admin._exists("GET", f"/api/queues/{vhost}/hostbus.host.{fresh}")
            assert not list((tmp_path / "refused").glob("*.toml"))
    finally:
        for host in hosts:
            rabbitmq.admin.revoke(host)
