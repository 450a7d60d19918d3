"""Every error reaches the one mapping to exit codes: a message, never a traceback."""

import pytest


@pytest.mark.parametrize("argv", [
    ["broker", "setup"],
    ["broker", "enroll", "web01", "--no-user"],
    ["broker", "enroll-console", "alice"],
    ["broker", "enroll-app", "shop"],
    ["broker", "revoke", "alice"],
])
def test_an_unreachable_management_api_exits_5_with_the_reason(fleet, tmp_path, argv):
    # port 1: nothing listens there, so the connection is refused at once
    done = fleet.run(*argv, "--admin-url", "http://guest:guest@127.0.0.1:1",
                     *(["-o", str(tmp_path / "x.toml")] if "enroll-" in argv[1] else []))
    assert done.exit_code == 5, done.output
    assert "cannot reach the RabbitMQ management API at http://127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.output


def test_a_bad_admin_url_is_a_usage_error(fleet):
    done = fleet.run("broker", "setup", "--admin-url", "ftp://127.0.0.1")
    assert done.exit_code == 2
    assert "must be http(s)://user:pass@host:15672" in done.stderr


@pytest.mark.parametrize("scheme", ["amqp", "amqp10"])
def test_a_broker_host_that_does_not_resolve_is_named_at_once(scheme):
    from click.testing import CliRunner

    from console.cli import cli

    # .invalid never resolves (RFC 6761); no broker is involved
    done = CliRunner().invoke(cli, ["--url", f"{scheme}://u:secret@nosuchhost.invalid/hostbus",
                                    "agents"])
    assert done.exit_code == 5, done.output
    assert "cannot resolve the broker's host name 'nosuchhost.invalid'" in done.stderr
    assert "check the host in the broker URL" in done.stderr
    assert "secret" not in done.output and "Traceback" not in done.output


def test_an_empty_vhost_path_is_explained_not_guessed():
    from click.testing import CliRunner

    from console.cli import cli

    done = CliRunner().invoke(cli, ["--url", "amqp://u:secret@127.0.0.1:5672/", "agents"])
    assert done.exit_code == 2, done.output
    assert "empty vhost path" in done.stderr and "/%2F" in done.stderr
    assert "/hostbus" in done.stderr and "secret" not in done.output


def test_a_provisioning_request_whose_connection_is_lost_says_it_was_posted(fleet):
    from hostbus import names
    from hostbus.transport.memory import MemoryTransport

    fleet.broker.declare_queue(names.PROVISION_QUEUE)
    fleet.broker.bind(names.PROVISION_EXCHANGE, names.PROVISION_KEY, names.PROVISION_QUEUE)
    provisioner = MemoryTransport(fleet.broker, user="provisioner")
    provisioner.start()
    # the broker took the request; then the console's connection drops
    provisioner.consume(names.PROVISION_QUEUE,
                        lambda _d: fleet.consoles[-1].transport.lose_connection())
    try:
        done = fleet.run("provision", "submit", "-T", "web", "--owner", "ops",
                         "--request-id", "3f0c2b1e-0000-4000-8000-000000000001")
    finally:
        provisioner.close()
    assert done.exit_code == 5, done.output
    assert "connection was lost" in done.stderr
    assert "3f0c2b1e-0000-4000-8000-000000000001 was posted" in done.stderr
    assert "hostbus provision status 3f0c2b1e-0000-4000-8000-000000000001" in done.stderr


def test_provision_submit_ha_puts_the_flag_in_the_request(fleet):
    """`--ha --ha-priority N` ask for HA VMs; without them the template decides."""
    import json

    from hostbus import names

    for extra, wanted in ((["--ha", "--ha-priority", "7"], {"ha": True, "ha_priority": 7}),
                          (["--no-ha"], {"ha": False}), ([], {})):
        done = fleet.run("provision", "submit", "-T", "web", "--owner", "ops", *extra,
                         "--no-wait")
        assert done.exit_code == 0, done.output
        body = json.loads([d for ex, _, d in fleet.broker.published
                           if ex == names.PROVISION_EXCHANGE][-1].body)
        assert {k: v for k, v in body.items() if k.startswith("ha")} == wanted


def test_enroll_no_user_refuses_options_it_would_ignore(fleet, tmp_path):
    out = tmp_path / "web01.toml"
    done = fleet.run("broker", "enroll", "web01", "--no-user", "-o", str(out),
                     "--admin-url", "http://guest:guest@127.0.0.1:1")
    assert done.exit_code == 2, done.output
    assert "--no-user makes no broker user and writes no config file: leave out " \
           "--config-out" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["vm", "web-1", "abort-migration", "--from", "b@d"],
    ["vm", "web-1", "migrate", "--to", "b@d", "--from", "c@d"],
    ["vm", "web-1", "show", "--on", "b@d"],
    ["inventory", "b@d"],
])
def test_a_host_that_cannot_be_one_is_a_usage_error_wherever_it_is_given(fleet, argv):
    done = fleet.run(*argv)
    assert done.exit_code == 2, done.output
    assert "invalid host id 'b@d'" in done.stderr and "Traceback" not in done.output


def test_a_management_api_host_that_does_not_resolve_is_named(fleet):
    done = fleet.run("broker", "setup", "--admin-url",
                     "http://guest:secret@nosuchhost.invalid:15672")
    assert done.exit_code == 5, done.output
    assert "cannot resolve the management API's host name 'nosuchhost.invalid'" in done.stderr
    assert "rabbitmq-plugins" not in done.stderr and "secret" not in done.stderr
