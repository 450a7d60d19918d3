"""The contract stays in one piece: schemas, code, docs, packaging and broker topology."""

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest

from agents import registry
from hostbus import names, topology
from hostbus.errors import ErrorCode
from hostbus.schema import available_agents, envelope_schema, load_agent_schema
from hostbus.serving.agent import check_agent_against_schema

ROOT = Path(__file__).resolve().parents[2]
META = json.loads((ROOT / "schemas" / "agent.schema.json").read_text())


@pytest.mark.parametrize("agent", available_agents())
def test_every_agent_schema_follows_the_meta_schema(agent):
    doc = json.loads((ROOT / "schemas" / "agents" / f"{agent}.json").read_text())
    jsonschema.validate(doc, META)
    assert doc["agent"] == agent


@pytest.mark.parametrize("agent", available_agents())
def test_every_example_in_an_agent_schema_is_valid(agent):
    schema = load_agent_schema(agent)
    for spec in schema.methods.values():
        assert spec.examples, f"{agent}.{spec.name} has no example"
        for example in spec.examples:
            spec.validate_args(dict(example["args"]))
            spec.result_validator.validate(example["result"])
    for spec in schema.events.values():
        assert spec.examples, f"{agent}.{spec.name} event has no example"
        for example in spec.examples:
            spec.data_validator.validate(example)


@pytest.mark.parametrize("kind", ["request", "reply", "event", "provision"])
def test_envelope_examples_are_valid(kind):
    schema = envelope_schema(kind)
    jsonschema.Draft7Validator.check_schema(schema)
    for example in schema["examples"]:
        jsonschema.validate(example, schema)


def test_error_codes_agree_in_code_schema_and_docs():
    in_code = {c.value for c in ErrorCode}
    in_schema = set(envelope_schema("reply")["properties"]["error"]["properties"]["code"]["enum"])
    docs = (ROOT / "docs" / "errors.md").read_text().split("\n## ")[0]  # the codes' table
    in_docs = set(re.findall(r"^\| `([a-z_]+)` \|", docs, re.M))
    assert in_code == in_schema == in_docs


def test_migration_failure_reasons_agree_in_code_schema_and_docs():
    from agents.virt.migration import REASONS

    event = load_agent_schema("virt").events["domain.migration"].data
    in_schema = event["properties"]["error"]["properties"]["reason"]["enum"]
    docs = (ROOT / "docs" / "errors.md").read_text().split("## Why a migration failed")[1]
    in_docs = re.findall(r"^\| `([a-z_]+)` \| `([a-z_]+)` \|", docs, re.M)
    assert list(REASONS) == in_schema == [reason for reason, _ in in_docs]
    assert {code for _, code in in_docs} <= {c.value for c in ErrorCode}


def test_every_agent_module_is_packaged_has_a_schema_and_defaults():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packaged = set(project["tool"]["setuptools"]["packages"])
    for name, module_name in registry.AGENT_MODULES.items():
        assert module_name in packaged, f"{module_name} missing from pyproject packages"
        assert name in available_agents(), f"no schemas/agents/{name}.json"
        module = registry.load_module(name)
        assert isinstance(module.CONFIG_DEFAULTS, dict)
    for folder in ("hostbus", "agents", "console"):
        for init in (ROOT / folder).rglob("__init__.py"):
            package = ".".join(init.parent.relative_to(ROOT).parts)
            assert package in packaged, f"package {package} is not listed in pyproject.toml"


def test_the_host_agent_code_matches_its_schema():
    from tests.fakes import make_host_agent

    agent, _, _ = make_host_agent()
    check_agent_against_schema(agent, load_agent_schema("host"))


def test_broker_definitions_match_the_names_the_code_uses():
    defs = topology.definitions()
    exchanges = {e["name"]: e["type"] for e in defs["exchanges"]}
    assert exchanges == {names.REQUEST_EXCHANGE: "topic", names.EVENT_EXCHANGE: "topic",
                         names.REPLY_EXCHANGE: "topic", names.PROVISION_EXCHANGE: "direct",
                         names.DEAD_EXCHANGE: "fanout"}
    queues = {q["name"]: q["arguments"] for q in defs["queues"]}
    assert queues["hostbus.provision"]["x-queue-type"] == "quorum"
    assert queues["hostbus.provision"]["x-dead-letter-exchange"] == names.DEAD_EXCHANGE
    patterns = {p["pattern"] for p in defs["policies"]}
    assert r"^hostbus\.reply\." in patterns  # unused reply queues expire


def test_host_queues_cover_directed_broadcast_and_the_builtin_agent_apart():
    assert topology.host_queues("web01", ["host"]) == {
        "hostbus.host.web01": [("hostbus.request", "host.web01"),
                               ("hostbus.request", "host._all")],
        "hostbus.host.web01.agent": [("hostbus.request", "agent.web01"),
                                     ("hostbus.request", "agent._all")]}


def test_the_wheel_ships_every_package_and_data_file(tmp_path):
    """An editable install hides packaging mistakes; build the real wheel."""
    import subprocess
    import sys
    import zipfile

    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("hostbus-*.whl"))
    files = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"hostbus/{p.relative_to(ROOT)}" for p in (ROOT / "schemas").rglob("*.json")}
    expected |= {f"hostbus/broker_config/{n}"
                 for n in ("definitions.json", "rabbitmq.conf", "enabled_plugins",
                           "rabbitmq-tls.conf", "cluster/rabbitmq-cluster.conf")}
    for module_name in registry.AGENT_MODULES.values():
        expected.add(module_name.replace(".", "/") + "/__init__.py")
    assert expected <= files, sorted(expected - files)
    assert not any(f.startswith("tests/") for f in files)


def test_only_the_publisher_hands_messages_to_a_transport():
    """Every message leaves through hostbus.publisher.Publisher, which sets user_id and
    signs: a component that called a transport's publish itself could forget either."""
    allowed = {ROOT / "hostbus" / "publisher.py"}
    offenders = []
    for folder in ("hostbus", "agents", "console"):
        for path in (ROOT / folder).rglob("*.py"):
            if path in allowed or "transport" in path.parts:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\btransport\.publish\(", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_core_imports_nothing_from_agents_or_console():
    offenders = [f"{p.relative_to(ROOT)}: {line.strip()}"
                 for p in (ROOT / "hostbus").rglob("*.py")
                 for line in p.read_text().splitlines()
                 if re.match(r"\s*(from|import) (agents|console)\b", line)]
    assert offenders == []


@pytest.mark.parametrize("agent", available_agents())
def test_no_method_takes_the_names_policies_use_for_classes(agent):
    """Policies decide a query of class C as the pseudo-method class.C."""
    assert not [m for m in load_agent_schema(agent).methods if m.startswith("class.")]


def test_no_two_test_files_share_a_name():
    # pytest imports test modules by basename (rootdir-relative packages are not used
    # here): a second file of the same name stops the whole run at collection.
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
        seen[path.name] = path


def _leaf_commands():
    import click

    from console.cli import cli

    def walk(cmd, path, ctx):
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                yield from walk(sub, [*path, name], click.Context(sub, info_name=name,
                                                                  parent=ctx))
        else:
            yield " ".join(path), cmd, ctx

    root = click.Context(cli, info_name="hostbus")
    yield from walk(cli, [], root)


def test_exit_codes_agree_in_code_docs_and_every_commands_help():
    from console.commands.common import EXIT_MEANING, Exit

    section = (ROOT / "docs" / "errors.md").read_text().split(
        "## Exit codes of the hostbus command")[1]
    in_docs = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.M))
    assert {int(c): m.strip() for c, m in in_docs.items()} == \
        {int(c): m for c, m in EXIT_MEANING.items()}
    assert set(EXIT_MEANING) == set(Exit)
    services = {"provisioner", "historian", "exporter"}
    for path, cmd, ctx in _leaf_commands():
        if path == "bench":  # the benchmarks' own command, registered by its package
            continue
        text = cmd.get_help(ctx).rstrip()
        block = text.split("Exit codes:")[-1]
        assert "Exit codes:" in text, f"hostbus {path} --help says no exit codes"
        lines = [line.split() for line in block.strip().splitlines()]
        assert lines and all(parts[0].isdigit() for parts in lines), \
            f"hostbus {path} --help does not end with its exit codes"
        if path not in services:
            for parts in lines:
                code = Exit(int(parts[0]))
                assert " ".join(parts[1:]) == EXIT_MEANING[code], (path, code)


def test_every_option_of_every_command_says_what_it_does():
    import click

    silent = [(path, param.opts) for path, cmd, _ctx in _leaf_commands() if path != "bench"
              for param in cmd.params
              if isinstance(param, click.Option) and not param.hidden and not param.help]
    assert silent == []
