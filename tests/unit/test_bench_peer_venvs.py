"""The peers benchmark's virtual environments: made once, rebuilt when the pins change,
never left half-installed (the installs themselves run in
tests/integration/test_bench_smoke.py)."""

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
