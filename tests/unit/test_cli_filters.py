"""One filter grammar for --where (host facts) and query --filter (object fields)."""

import json

import pytest

from console.args import ArgumentError
from console.filters import parse

FACTS = {"role": "web", "os": "linux", "kernel": "6.18.44-fc", "cpus": 2, "env": "prod",
         "virtual": True}


@pytest.mark.parametrize(("expr", "expected"), [
    ("role=web", True), ("role=db", False), ("os=lin*", True), ("kernel=6.18*", True),
    ("role!=web", False), ("role!=db", True), ("nosuch!=x", True), ("nosuch=x", False),
    ("role=~^we", True), ("role=~dem", False), ("role!~dem", True), ("os=~'^(lin|free)'", True),
    ("cpus=02", True), ("cpus>=2", True), ("cpus>2", False), ("cpus<4", True),
    ("cpus >= 2", True), ("virtual=true", True),
    ("role=web and env=prod", True), ("role=web and not env=prod", False),
    ("role=web env=prod", True), ("role=db or cpus>1", True), ("!env=prod", False),
    ("(role=db or role=web) and cpus>=2", True), ("not (role=web or role=db)", False),
    ("name='my app'", False),
])
def test_expressions_over_facts(expr, expected):
    assert parse([expr]).matches(FACTS) is expected


def test_repeated_options_are_joined_by_and():
    assert parse(["role=web", "cpus>=2"]).matches(FACTS)
    assert not parse(["role=web", "cpus>=4"]).matches(FACTS)


@pytest.mark.parametrize(("expr", "message"), [
    ("role", "expected an operator after 'role'"),
    ("role=web and", "expected a condition"),
    ("cpus>=four", "compares numbers; 'four' is not one"),
    ("os=~(lin", "not a regular expression"),
    ("role=>web", "unknown operator"),
    ("(role=web", "expected ')'"),
    ("role=web)", "expected and, or or the end"),
])
def test_mistakes_are_named(expr, message):
    with pytest.raises(ArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse([expr])


def test_only_exact_conjuncts_go_to_agents():
    flt = parse(["role=web and cpus>=2 and os=lin*", "env=prod", "cpus=2"])
    assert flt.exact(globs=False) == {"role": "web", "env": "prod"}
    assert flt.exact(globs=True) == {"role": "web", "os": "lin*", "env": "prod"}
    assert parse(["role=web or env=prod"]).exact(globs=False) == {}


def test_where_takes_the_grammar_end_to_end(fleet):
    fleet.add("web01", {"role": "web", "env": "prod"})
    fleet.add("web02", {"role": "web", "env": "test"})
    fleet.add("db01", {"role": "db", "env": "prod"})

    def hosts(*where):
        done = fleet.run("agents", "--json", *(a for w in where for a in ("--where", w)))
        return sorted(a["host"] for a in json.loads(done.stdout)["agents"])

    assert hosts("role=web and not env=prod") == ["web02"]
    assert hosts("role!=web") == ["db01"]
    assert hosts("env=~^pr", "role=db or role=web") == ["db01", "web01"]
    assert hosts("cpus>=4") == ["db01", "web01", "web02"]  # FakePs has 4 CPUs
    assert hosts("cpus>4") == []
    bad = fleet.run("agents", "--where", "role=web and")
    assert bad.exit_code == 2 and "expected a condition" in bad.stderr


def test_query_filter_takes_the_same_grammar(fleet):
    fleet.add("web01")
    done = fleet.run("query", "host.process", "--filter", "cpu_percent>10 or name=nginx",
                     "--json")
    assert done.exit_code == 0, done.stderr
    assert sorted(o["name"] for o in json.loads(done.stdout)["objects"]) == ["nginx", "python3"]
    bad = fleet.run("query", "host.process", "--filter", "colour=red")
    assert bad.exit_code == 2 and "process has no field 'colour'" in bad.stderr
