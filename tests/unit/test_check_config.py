"""Each daemon's --check-config: the shipped config passes, a mistake is named (exit 1),
and nothing is connected to."""

from pathlib import Path

import pytest

from agents.daemon import main as agent_main

ETC = Path(__file__).resolve().parents[2] / "etc"


@pytest.mark.parametrize(("command", "section"), [
    ("exporter", "exporter"), ("historian", "historian"), ("provisioner", "provisioner")])
def test_service_check_config_passes_the_shipped_file_and_names_a_bad_key(
        fleet, tmp_path, command, section):
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    good = fleet.run(command, "--config", str(ETC / f"{command}.toml"), "--check-config",
                     env=env)
    assert good.exit_code == 0, good.stderr
    assert "configuration" in good.stdout and ": ok" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[{section}]\nno_such_key = 1\n")
    done = fleet.run(command, "--config", str(bad), "--check-config", env=env)
    assert done.exit_code == 1
    assert "no_such_key" in done.stderr
    assert not (tmp_path / "state").exists()  # nothing made


def test_agent_check_config(tmp_path, capsys):
    assert agent_main(["--config", str(ETC / "agent.toml"), "--check-config"]) == 0
    assert "agent host: ok" in capsys.readouterr().out
    bad = tmp_path / "agent.toml"
    bad.write_text('[security]\npolicy = "missing.toml"\n')
    assert agent_main(["--config", str(bad), "--check-config"]) == 1
    assert "missing.toml" in capsys.readouterr().err


def test_agent_check_config_names_a_bad_health_check(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('[agent]\nagents = ["health"]\n[[health.checks]]\nname = "web"\n'
                    'kind = "tcp"\nhost = "127.0.0.1"\nport = 80\n')
    assert agent_main(["--config", str(good), "--check-config"]) == 0
    assert "agent health: 1 check(s): web" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nagents = ["health"]\n[[health.checks]]\nname = "web"\n'
                   'kind = "command"\nargv = ["rm -rf /"]\n')
    assert agent_main(["--config", str(bad), "--check-config"]) == 1
    assert "/absolute/path" in capsys.readouterr().err
