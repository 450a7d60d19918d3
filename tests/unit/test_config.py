import pytest

from agents.daemon import load_config
from hostbus import config
from hostbus.errors import ConfigError

DEFAULTS = {"broker": {"url": "amqp://x", "timeout": 5.0, "retries": 3},
            "agent": {"agents": ["host"], "debug": False, "facts": {}}}


def test_defaults_then_file_then_environment(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[broker]\nurl = "amqp://file"\ntimeout = 2\n[agent.facts]\nrole = "web"\n')
    cfg = config.load(DEFAULTS, path, environ={"HOSTBUS_BROKER_URL": "amqp://env",
                                               "HOSTBUS_AGENT_AGENTS": "host, virt",
                                               "HOSTBUS_AGENT_DEBUG": "yes"},
                      free_form=("agent.facts",))
    assert cfg["broker"] == {"url": "amqp://env", "timeout": 2.0, "retries": 3}
    assert cfg["agent"] == {"agents": ["host", "virt"], "debug": True, "facts": {"role": "web"}}
    assert DEFAULTS["broker"]["url"] == "amqp://x"  # defaults are not mutated


@pytest.mark.parametrize(("text", "message"), [
    ('[broker]\nulr = "x"\n', "unknown key 'broker.ulr'"),
    ('[broker]\ntimeout = "soon"\n', "'broker.timeout' must be a number"),
    ('[agent]\nagents = "host"\n', "must be a list"),
    ("[broker\n", "not valid TOML"),
])
def test_mistakes_in_the_file_are_named(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(DEFAULTS, path)


def test_a_bad_environment_value_is_named():
    with pytest.raises(ConfigError, match="HOSTBUS_BROKER_RETRIES must be a number"):
        config.load(DEFAULTS, environ={"HOSTBUS_BROKER_RETRIES": "many"})


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(DEFAULTS, tmp_path / "nope.toml")


def test_the_shipped_example_config_loads_and_matches_the_defaults():
    shipped = load_config("etc/agent.toml")
    defaults = load_config(None)
    assert shipped == defaults
