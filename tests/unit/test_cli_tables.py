"""Tables never cut what a person acts on, at any width, on a terminal or in a pipe."""

import io
import re

from rich.console import Console as RichConsole

from console.render import Layout, objects_table
from tests.fakes import NT

BEAM = {"pid": 2931175, "ppid": 1, "name": "beam.smp", "username": "rabbitmq",
        "status": "sleeping", "cpu_percent": 39.4, "memory_info": NT(rss=548_302_848),
        "memory_percent": 2.17, "create_time": 1_764_594_962.0,
        "cmdline": ["/usr/lib/erlang/erts-13.1.5/bin/beam.smp", "-W", "w", "-MBas",
                    "ageffcbf", "-MHas", "ageffcbf", "-MBlmbcs", "512", "-MHlmbcs", "512"]}


def _terminal(columns):
    return {"TTY_COMPATIBLE": "1", "COLUMNS": str(columns)}


def _unstyled(text):
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _processes(fleet, columns, *extra):
    fleet.add("web01")
    fleet.ps["web01"].procs.append(BEAM)
    env = _terminal(columns) if columns else {}
    done = fleet.run("call", "host.processes", "sort=cpu", "limit=3", "-H", "web01", *extra,
                     env=env)
    assert done.exit_code == 0, done.stderr
    return _unstyled(done.stdout)


def test_at_160_columns_pids_users_and_states_are_whole(fleet):
    text = _processes(fleet, 160)
    assert all(len(line) <= 160 for line in text.splitlines())
    row = next(line for line in text.splitlines() if "beam.smp" in line)
    for whole in ("2931175", "rabbitmq", "sleeping", "39.4"):
        assert whole in row.split(), row


def test_at_80_columns_the_key_columns_survive_and_details_say_they_are_hidden(fleet):
    text = _processes(fleet, 80)
    assert all(len(line) <= 80 for line in text.splitlines())
    row = next(line for line in text.splitlines() if "beam.smp" in line)
    for whole in ("2931175", "rabbitmq", "sleeping"):
        assert whole in row.split(), row
    assert re.search(r"\(hidden to fit: ppid, .*started; --wide shows them\)", text)


def test_wide_and_columns_choose_what_is_shown(fleet):
    wide = _processes(fleet, 80, "--wide")
    assert "-MHlmbcs" in wide and "512" in wide  # the whole command line, wrapped
    assert "hidden" not in wide
    fleet.stop()
    chosen = _processes(fleet, 80, "--columns", "name,pid")
    header = next(line for line in chosen.splitlines() if "name" in line and "pid" in line)
    assert header.split() == ["name", "pid"]


def test_piped_output_is_plain_lines_with_nothing_cut(fleet):
    text = _processes(fleet, None)
    assert not any(ch in text for ch in "┃│━─…")
    assert all(line == line.rstrip() for line in text.splitlines())
    row = next(line for line in text.splitlines() if "beam.smp" in line)
    assert row.endswith("-MHlmbcs 512")


def _render(rows, width, **layout):
    buf = io.StringIO()
    RichConsole(file=buf, width=width, force_terminal=True, color_system=None).print(
        objects_table(rows, Layout(width, **layout)))
    return buf.getvalue()


def test_what_an_approver_decides_on_is_never_cut():
    rows = [{"approval_id": "4992ad35ec96", "host": "web01", "requester": "alice",
             "call": "virt.domain.destroy",
             "args": '{"name":"orders-db-7f3a9c","remove_storage":true}',
             "expires": "2026-12-01T15:00:00Z", "state": "pending"}]
    for width in (60, 80, 160):
        text = _render(rows, width)
        assert all(len(line) <= width for line in text.splitlines())
        # long values may wrap inside their cell, but every character is there
        for whole in rows[0].values():
            assert whole in "".join(text.split()), (width, text)


def test_a_table_too_wide_for_its_identifiers_becomes_one_block_per_record():
    rows = [{"request_id": "6ba2c4e8-dd00-4d01-9f30-2f903cd8df11", "owner": "nodecli",
             "template": "web", "count": 3, "status": "completed",
             "vms": "web-6ba2c4e8-1@vm, web-6ba2c4e8-2@vm, web-6ba2c4e8-3@vm"}]
    text = _render(rows, 80)
    lines = text.splitlines()
    assert lines[0].split() == ["request_id", "6ba2c4e8-dd00-4d01-9f30-2f903cd8df11"]
    assert any(line.split()[:1] == ["count"] and line.split()[1] == "3" for line in lines)
    assert "web-6ba2c4e8-3@vm" in text


def test_piped_output_fits_columns_when_it_is_set_and_stays_plain(fleet):
    fleet.add("web01")
    fleet.ps["web01"].procs.append(BEAM)
    done = fleet.run("call", "host.processes", "sort=cpu", "limit=3", "-H", "web01",
                     env={"COLUMNS": "80"})
    assert done.exit_code == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 and line == line.rstrip() for line in lines), lines
    assert not any(ch in done.stdout for ch in "┃│━─") and "\x1b[" not in done.stdout
    row = next(line for line in lines if "beam.smp" in line)
    assert row.split()[:2] == ["2931175", "beam.smp"] and "rabbitmq" in row


def test_columns_on_a_result_without_tables_is_said(fleet):
    fleet.add("web01")
    done = fleet.run("call", "host.identify", "-H", "web01", "--columns", "pid")
    assert done.exit_code == 0
    assert "--columns chooses columns of result tables" in done.stderr
