"""Shell completion: commands, AGENT.METHOD, argument names and values, hosts."""

import json

from click.testing import CliRunner

from console.cli import cli


def complete(words, tmp_path, config):
    """What bash completion offers for the last of ``words``."""
    env = {"_HOSTBUS_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(["hostbus", *words]),
           "COMP_CWORD": str(len(words)), "XDG_CACHE_HOME": str(tmp_path),
           "HOSTBUS_CONSOLE_CONFIG": str(config)}
    done = CliRunner().invoke(cli, [], env=env, prog_name="hostbus")
    assert done.exit_code == 0, done.output
    return [line.split(",", 1)[1] for line in done.output.splitlines()]


def test_commands_methods_classes_and_arguments_complete(fleet, tmp_path):
    config = fleet.config
    assert {"call", "query", "watch", "inventory", "completion"} <= set(
        complete([""], tmp_path, config))
    assert complete(["call", "host.pro"], tmp_path, config) == ["host.processes"]
    assert complete(["query", "host.d"], tmp_path, config) == ["host.disk"]
    args = complete(["call", "host.processes", "li"], tmp_path, config)
    assert args == ["limit="]
    assert complete(["call", "host.processes", "limit=5", "sort=m"], tmp_path, config) == [
        "sort=memory"]
    assert "limit=" not in complete(["call", "host.processes", "limit=5", ""], tmp_path,
                                    config)
    assert complete(["watch", "host.*.m"], tmp_path, config) == ["host.*.metrics"]


def test_hosts_complete_from_the_last_discovery(fleet, tmp_path):
    fleet.add("web01")
    fleet.add("web02")
    fleet.add("db01")
    assert fleet.run("agents").exit_code == 0  # notes who answered
    assert complete(["call", "host.identify", "-H", "web"], fleet.config.parent,
                    fleet.config) == ["web01", "web02"]


def test_the_completion_script_is_printed_for_each_shell(fleet):
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "compdef"),
                          ("fish", "complete --no-files --command hostbus")):
        done = fleet.run("completion", shell)
        assert done.exit_code == 0 and marker in done.stdout, done.stdout


def test_the_man_page_is_made_from_every_command(fleet):
    done = fleet.run("manpage")
    assert done.exit_code == 0
    page = done.stdout
    assert page.startswith(".TH HOSTBUS 1")
    for usage in ("hostbus call [OPTIONS] AGENT.METHOD [KEY=VALUE]...",
                  "hostbus broker enroll [OPTIONS] [HOST]", "hostbus approvals approve",
                  "hostbus watch [OPTIONS] [PATTERN]...", "hostbus bench"):
        assert f'.SS "{usage}'.replace("-", "\\-") in page, usage
    assert "\\fB\\-\\-where\\fR" not in page  # options carry their metavar
    assert "\\fB\\-w, \\-\\-where EXPR\\fR" in page
    # text that starts with a dot is escaped: every request line is one we wrote
    requests = {line.split()[0] for line in page.splitlines() if line.startswith(".")}
    assert requests <= {".TH", ".nh", ".ad", ".SH", ".SS", ".PP", ".TP", ".nf", ".fi", ".B"}


def test_the_host_cache_keeps_only_the_latest_brokers(tmp_path, monkeypatch):
    from console.commands.completion import MAX_BROKERS, _cache_file, remember_hosts

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for n in range(MAX_BROKERS + 3):
        remember_hosts(f"amqp://u:p@127.0.0.1:5672/v{n}", [f"h{n}"], everyone=True)
    remember_hosts("amqp://u:p@127.0.0.1:5672/v5", ["x"], everyone=False)
    known = json.loads(_cache_file().read_text())
    assert len(known) == MAX_BROKERS and "127.0.0.1:5672/v0" not in known
    assert list(known)[-1] == "127.0.0.1:5672/v5" and known["127.0.0.1:5672/v5"] == ["h5", "x"]
    assert "u:p" not in _cache_file().read_text()  # no credentials in it
