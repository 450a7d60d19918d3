"""What a reply says is shown as a person reads it: a dry run says so."""

from __future__ import annotations

import json


def test_a_dry_run_reboot_says_nothing_was_done(fleet):
    fleet.add("web01")  # RecordingPower: what power_control = "dry-run" uses
    done = fleet.run("call", "host.reboot", "delay_s=300", "-H", "web01", "--yes")
    assert done.exit_code == 0, done.output
    assert "dry run: nothing was done" in done.stdout
    [res] = json.loads(fleet.run("call", "host.shutdown", "-H", "web01", "--yes",
                                 "--json").stdout)["results"]
    assert res["result"]["dry_run"] is True and res["result"]["action"] == "shutdown"


def test_a_real_power_controller_says_it_is_no_dry_run():
    from agents.host.power import SystemPower

    assert SystemPower.dry_run is False
