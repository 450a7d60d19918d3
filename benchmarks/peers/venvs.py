"""Each peer in a virtual environment of its own, made on demand and kept in a cache:
the peers are never dependencies of hostbus, and never share its interpreter's packages.

The cache is ``$HOSTBUS_BENCH_PEERS_CACHE``, else ``$XDG_CACHE_HOME/hostbus-bench/peers``
(``~/.cache/hostbus-bench/peers``); one folder per peer and version, e.g.
``nameko-2.14.1/``. A folder is used only when its pins file matches the pins below, and
is built under a temporary name and renamed when complete, so a run stopped halfway or
two runs at once never leave a half-installed peer behind.

The drivers run in the cache's ``work/`` folder (their working directory), each with its
standard error (the peer's log: nameko's and oslo's warnings, tracebacks) written to
``work/PEER-ROLE-PREFIX.log``: whatever a peer writes lands there, never in the folder
the bench was started from. ``work/`` holds the latest run's logs (each run empties it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import progress

DRIVERS = Path(__file__).parent
PINS_FILE = "hostbus-bench-pins.txt"


class PeerError(RuntimeError):
    """A peer could not be installed or its driver failed; the message says which and why."""


@dataclass(frozen=True)
class Peer:
    name: str  # as the results name it
    version: str
    driver: str  # a script beside this module
    #: pip requirements: the peer and the libraries under it that decide its speed, pinned
    #: so that a later release does not change the figures unnoticed.
    pins: tuple[str, ...]

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.version}"


PEERS = (
    Peer("oslo.messaging", "18.3.1", "oslo_driver.py",
         ("oslo.messaging==18.3.1", "kombu==5.7.0", "amqp==5.4.2")),
    Peer("nameko", "2.14.1", "nameko_driver.py",
         ("nameko==2.14.1", "eventlet==0.41.3", "kombu==5.7.0", "amqp==5.4.2")),
)


def cache_root() -> Path:
    explicit = os.environ.get("HOSTBUS_BENCH_PEERS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hostbus-bench" / "peers"


def work_folder(root: Path | None = None) -> Path:
    """Where the peers' drivers run and write their logs: ``CACHE/work``."""
    folder = (root or cache_root()) / "work"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def clear_work(root: Path | None = None) -> Path:
    """Empty the work folder of an earlier run's logs, at the start of a run. A log still
    open (another run at the same time) is only unlinked: its driver writes on."""
    folder = work_folder(root)
    for log in folder.glob("*.log"):
        log.unlink(missing_ok=True)
    return folder


def python_for(peer: Peer, root: Path | None = None) -> Path:
    """The python of ``peer``'s environment, installed first if it is not there yet."""
    root = root or cache_root()
    folder = root / peer.folder_name
    wanted = "\n".join(peer.pins) + "\n"
    pins = folder / PINS_FILE
    if pins.is_file() and pins.read_text() == wanted:
        return folder / "bin" / "python"
    if folder.exists():
        shutil.rmtree(folder)  # other pins: made by an older bench
    root.mkdir(parents=True, exist_ok=True)
    building = root / f".{peer.folder_name}.{uuid.uuid4().hex[:8]}"
    progress(f"installing {' '.join(peer.pins)} into {folder} (once; a minute or two)")
    try:
        _run([sys.executable, "-m", "venv", str(building)], f"make a venv for {peer.name}")
        _run([str(building / "bin" / "python"), "-m", "pip", "install", "--quiet",
              "--disable-pip-version-check", *peer.pins], f"pip install {' '.join(peer.pins)}")
        (building / PINS_FILE).write_text(wanted)
        try:
            building.rename(folder)
        except OSError:  # another run finished first: use its folder
            if not (folder / PINS_FILE).is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder / "bin" / "python"


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise PeerError(f"could not {what} (exit {done.returncode}); the peers benchmark "
                        f"installs each peer from the package index pip is set up for "
                        f"(PIP_INDEX_URL, pip.conf): "
                        f"{(done.stderr or done.stdout).strip()[-1500:]}")
