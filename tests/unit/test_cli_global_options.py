"""The root group's options (--url, --config) work after the command too: operators
append options."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner

from console.cli import cli, hoist_root_options


def test_url_and_config_after_the_command(fleet):
    fleet.add("web01")
    urls: list[str] = []

    def factory(ctx, validate):
        urls.append(ctx.url)
        return fleet.console(ctx, validate)

    done = CliRunner().invoke(cli, ["agents", "--json", "--config", str(fleet.config),
                                    "--url", "amqp://u:p@broker.example:5672/ops"],
                              obj=factory, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert [a["host"] for a in json.loads(done.stdout)["agents"]] == ["web01"]
    assert urls == ["amqp://u:p@broker.example:5672/ops"]
    done = CliRunner().invoke(cli, ["call", "host.identify", "-H", "web01",
                                    f"--config={fleet.config}", "--url=amqp://x@y/z"],
                              obj=factory, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert urls[-1] == "amqp://x@y/z"


def test_a_command_with_a_config_of_its_own_keeps_it():
    ctx = click.Context(cli)
    assert hoist_root_options(cli, ctx, ["provisioner", "--config", "p.toml"]) == \
        ["provisioner", "--config", "p.toml"]
    assert hoist_root_options(cli, ctx, ["broker", "enroll", "web01", "--url", "U"]) == \
        ["--url", "U", "broker", "enroll", "web01"]
    # after `--` nothing is an option; the root's own before the command stay
    assert hoist_root_options(cli, ctx, ["--config", "c", "schema", "--", "--url"]) == \
        ["--config", "c", "schema", "--", "--url"]


def test_an_option_of_one_value_given_twice_is_refused_before_anything_is_sent(fleet):
    fleet.add("web01")
    for argv in (["-t", "1", "--timeout=2"], ["-t1", "-t", "2"]):
        done = fleet.run("call", "host.identify", "-H", "web01", *argv)
        assert done.exit_code == 2, done.output
        assert "hostbus call: --timeout/-t is given twice" in done.stderr
        assert "give it once" in done.stderr
    done = fleet.run("query", "host.process", "--columns", "pid", "--columns", "name")
    assert done.exit_code == 2 and "--columns is given twice" in done.stderr
    assert fleet.consoles == []  # nothing connected, nothing sent
    # options meant to repeat still do
    assert fleet.run("call", "host.identify", "-H", "web01", "-H", "web01").exit_code == 0


def test_an_argument_given_twice_is_refused(fleet):
    fleet.add("web01")
    done = fleet.run("call", "host.processes", "limit=2", "limit:=3", "-H", "web01")
    assert done.exit_code == 2
    assert "limit is given twice (limit=2 and limit:=3); give it once" in done.stderr



def test_json_and_timeout_before_the_command_go_with_it(fleet):
    fleet.add("web01")
    done = CliRunner().invoke(cli, ["--json", "-t", "2", "--config", str(fleet.config),
                                    "call", "host.identify", "-H", "web01"],
                              obj=fleet.console, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["results"][0]["status"] == "ok"
    done = CliRunner().invoke(cli, ["--timeout=2", "schema"])
    assert done.exit_code == 2 and "hostbus schema has no --timeout option" in done.output
    done = CliRunner().invoke(cli, ["--json"])
    assert done.exit_code == 2 and "--json goes with a command" in done.output
