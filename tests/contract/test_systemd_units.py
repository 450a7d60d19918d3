"""Every daemon has a systemd unit in etc/, and systemd itself accepts each one
(`systemd-analyze verify`: keys, sections, the commands it runs, the hardening)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hostbus.testing.pytest_plugin import fail_or_skip

ETC = Path(__file__).resolve().parents[2] / "etc"
BIN = Path(sys.executable).parent
#: Each daemon hostbus ships, and the command its unit runs.
DAEMONS = {
    "hostbus-agent": "hostbus-agent --config /etc/hostbus/agent.toml",
    "hostbus-provisioner": "hostbus provisioner --config /etc/hostbus/provisioner.toml",
    "hostbus-historian": "hostbus historian --config /etc/hostbus/historian.toml",
    "hostbus-exporter": "hostbus exporter --config /etc/hostbus/exporter.toml",
    "hostbus-reactor": "hostbus reactor --config /etc/hostbus/reactor.toml",
    "hostbus-manager": "hostbus manager --config /etc/hostbus/manager.toml",
}


def test_every_daemon_has_a_unit_that_checks_its_config_first():
    assert {p.stem for p in ETC.glob("*.service")} == set(DAEMONS)
    for unit, command in DAEMONS.items():
        text = (ETC / f"{unit}.service").read_text()
        assert f"ExecStart=/opt/hostbus/venv/bin/{command}\n" in text
        assert f"ExecStartPre=/opt/hostbus/venv/bin/{command} --check-config\n" in text
        assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text


@pytest.mark.parametrize("unit", sorted(DAEMONS))
def test_systemd_accepts_the_unit(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        fail_or_skip("systemd-analyze is missing (./run.sh test installs systemd)")
    # installed where the unit says; here, the commands of this checkout's environment
    text = (ETC / f"{unit}.service").read_text().replace("/opt/hostbus/venv/bin/", f"{BIN}/")
    path = tmp_path / f"{unit}.service"
    path.write_text(text)
    done = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and not done.stdout + done.stderr, done.stdout + done.stderr


def test_the_check_can_fail(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        fail_or_skip("systemd-analyze is missing (./run.sh test installs systemd)")
    text = (ETC / "hostbus-historian.service").read_text()
    path = tmp_path / "hostbus-historian.service"
    path.write_text(re.sub(r"/opt/hostbus/venv/bin/", f"{BIN}/", text)
                    + "[Service]\nProtectSystm=strict\n")  # a typo systemd would ignore
    done = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert "Unknown key" in done.stdout + done.stderr
