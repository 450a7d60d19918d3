"""The peers benchmark's virtual environments: made once, rebuilt when the pins change,
never left half-installed (the installs themselves run in
tests/integration/test_bench_smoke.py)."""

from pathlib import Path

import pytest

from benchmarks.peers import venvs
from benchmarks.peers.venvs import PINS_FILE, Peer, PeerError


@pytest.fixture
def installs(monkeypatch):
    """Stand-in for venv and pip: records each command, makes bin/python for a venv."""
    made: list[list[str]] = []
    fail = {"pip": False}

    def run(argv: list[str], what: str) -> None:
        made.append(argv)
        if argv[1:3] == ["-m", "venv"]:
            from pathlib import Path

            (Path(argv[3]) / "bin").mkdir(parents=True)
            (Path(argv[3]) / "bin" / "python").write_text("")
        elif fail["pip"]:
            raise PeerError(f"could not {what}")

    monkeypatch.setattr(venvs, "_run", run)
    return made, fail


PEER = Peer("nameko", "2.14.1", "nameko_driver.py", ("nameko==2.14.1",))


def test_a_peer_is_installed_once_and_found_afterwards(tmp_path, installs):
    made, _ = installs
    python = venvs.python_for(PEER, tmp_path)
    assert python == tmp_path / "nameko-2.14.1" / "bin" / "python" and python.exists()
    assert made[1][-1] == "nameko==2.14.1"
    assert venvs.python_for(PEER, tmp_path) == python
    assert len(made) == 2  # the second call installed nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nameko-2.14.1"]


def test_other_pins_rebuild_the_folder(tmp_path, installs):
    made, _ = installs
    venvs.python_for(PEER, tmp_path)
    repinned = Peer("nameko", "2.14.1", "nameko_driver.py", ("nameko==2.14.1", "kombu==5.7.0"))
    venvs.python_for(repinned, tmp_path)
    assert len(made) == 4
    assert (tmp_path / "nameko-2.14.1" / PINS_FILE).read_text() == "nameko==2.14.1\nkombu==5.7.0\n"


def test_a_failed_install_leaves_nothing_behind_and_says_why(tmp_path, installs):
    _, fail = installs
    fail["pip"] = True
    with pytest.raises(PeerError, match=r"could not pip install nameko==2\.14\.1"):
        venvs.python_for(PEER, tmp_path)
    assert list(tmp_path.iterdir()) == []
    fail["pip"] = False
    assert venvs.python_for(PEER, tmp_path).exists()  # the next run installs it


def test_a_driver_runs_in_the_work_folder_and_logs_there(tmp_path, monkeypatch):
    """A peer that writes a file of its own (nameko.log) and logs to stderr leaves both in
    the cache's work folder, not in the folder the bench was started from (a nameko.log
    was once committed from there)."""
    import sys

    from benchmarks.peers.driver import Driver

    script = tmp_path / "fake_driver.py"
    script.write_text(
        "import json, sys\n"
        "open('nameko.log', 'w').write('written by the peer\\n')\n"
        "print('a warning from the peer', file=sys.stderr, flush=True)\n"
        "print(json.dumps({'ready': True}), flush=True)\n"
        "print(json.dumps({'error': 'it broke'}), flush=True)\n")
    started_in = tmp_path / "checkout"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    monkeypatch.setenv("HOSTBUS_BENCH_PEERS_CACHE", str(tmp_path / "cache"))
    (venvs.work_folder() / "nameko-server-old.log").write_text("an earlier run's\n")
    work = venvs.clear_work()
    assert list(work.iterdir()) == []

    driver = Driver(Peer("nameko", "1", str(script), ()), Path(sys.executable), "server",
                    "amqp://x", "p1")
    try:
        assert driver.answer(30) == {"ready": True}
        with pytest.raises(PeerError, match=r"it broke"):
            driver.answer(30)
    finally:
        driver.close()
    assert work == tmp_path / "cache" / "work"
    assert (work / "nameko.log").read_text() == "written by the peer\n"
    assert driver.log == work / "nameko-server-p1.log"
    assert driver.log.read_text() == "a warning from the peer\n"
    assert list(started_in.iterdir()) == []
