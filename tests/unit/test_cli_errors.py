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
