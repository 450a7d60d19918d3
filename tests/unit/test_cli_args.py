import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from console.args import ArgumentError, method_help, parse_pairs, parse_where
from console.cli import cli
from hostbus.schema import load_agent_schema

HOST = load_agent_schema("host")


def test_values_are_typed_by_the_schema():
    spec = HOST.methods["processes"]
    assert parse_pairs(["limit=5", "min_cpu_percent=1.5", "name=py*", "user=null"], spec) == {
        "limit": 5, "min_cpu_percent": 1.5, "name": "py*", "user": None}
    assert parse_pairs(['limit:=7'], spec) == {"limit": 7}


@pytest.mark.parametrize(("pairs", "message"), [
    (["limit=five"], "limit='five': expected integer"),
    (["colour=red"], "no argument 'colour' (arguments: limit, min_cpu_percent"),
    (["limt=3"], "no argument 'limt'; did you mean limit? (arguments: limit,"),
    (["limit"], "arguments are key=value"),
    (["limit:={"], "not valid JSON"),
])
def test_bad_arguments_are_named(pairs, message):
    with pytest.raises(ArgumentError, match=re.escape(message)):
        parse_pairs(pairs, HOST.methods["processes"])


def test_where_needs_name_equals_value():
    assert parse_where(["os=linux", "role=a=b"]) == {"os": "linux", "role": "a=b"}
    with pytest.raises(ArgumentError, match="expected NAME=VALUE"):
        parse_where(["linux"])


def test_method_help_comes_from_the_schema():
    text = method_help("host", HOST.methods["reboot"])
    assert "DANGEROUS" in text and "delay_s" in text and "default 60" in text
    assert "hostbus call host.reboot" in text


def test_schema_command_lists_and_explains_without_a_broker():
    runner = CliRunner()
    listing = runner.invoke(cli, ["schema", "--json"])
    assert listing.exit_code == 0
    assert {a["agent"] for a in json.loads(listing.output)["agents"]} >= {"agent", "host"}
    one = runner.invoke(cli, ["schema", "host.processes"])
    assert one.exit_code == 0 and "limit" in one.output
    bad = runner.invoke(cli, ["schema", "nosuch"])
    assert bad.exit_code == 2 and "no schema for agent 'nosuch'; known: " in bad.output
    assert {"agent", "host"} <= set(bad.output.split("known: ")[1].strip().split(", "))


def test_call_refuses_bad_input_before_connecting():
    runner = CliRunner()
    env = {"HOSTBUS_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/none"}  # never reached
    cases = [
        (["call", "host.processes", "limit=x", "-H", "web01"], "expected integer"),
        (["call", "host.nosuch", "-H", "web01"], "no method 'nosuch'"),
        (["call", "hostidentify", "-H", "web01"], "expected AGENT.METHOD"),
        (["call", "host.processes", "limit=0", "-H", "web01"], "must be bigger than or equal"),
    ]
    for argv, message in cases:
        result = runner.invoke(cli, argv, env=env)
        assert result.exit_code == 2, (argv, result.output)
        assert message in result.output


def test_the_entry_points_are_installed():
    for exe, expected in (("hostbus", "Manage hosts"), ("hostbus-agent", "agent daemon")):
        done = subprocess.run([sys.executable, "-m", "console.cli" if exe == "hostbus"
                               else "agents.daemon", "--help"], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0 and expected in done.stdout


def test_text_from_agents_is_printed_literally_not_as_markup():
    import io

    from rich.console import Console as RichConsole

    from console.client import HostResult
    from console.render import print_host_result
    from hostbus.envelope import Reply

    buf = io.StringIO()
    out = RichConsole(file=buf, width=200, color_system=None)
    reply = Reply(host="web01", agent="host", status="error",
                  error={"code": "unauthorized", "message": "set [security] policy [/] [red]x"})
    print_host_result(out, HostResult("web01", reply, 1.0))
    ok = Reply(host="web01", agent="host", status="ok", result={"name": "[bold]sneaky[/bold]"})
    print_host_result(out, HostResult("web01", ok, 1.0))
    text = buf.getvalue()
    assert "set [security] policy [/] [red]x" in text
    assert "[bold]sneaky[/bold]" in text


def test_a_methods_help_ends_with_the_exit_codes_of_call():
    from click.testing import CliRunner

    from console.cli import cli

    done = CliRunner().invoke(cli, ["call", "host.reboot", "--help"])
    assert done.exit_code == 0
    last = done.output.rstrip().splitlines()
    assert "Exit codes:" in done.output and last[-1].split()[0] == "141"
    assert any(line.split()[:1] == ["7"] for line in last)
