"""A peer's driver process, seen from the bench: started with the peer venv's python,
spoken to a JSON line at a time (the protocol: _lines.py). It runs in the peers' work
folder (venvs.work_folder) and its standard error, the peer's log, goes to a file there."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

from benchmarks.peers.venvs import DRIVERS, Peer, PeerError, work_folder


class Driver:
    def __init__(self, peer: Peer, python: Path, role: str, url: str, prefix: str,
                 *, work: Path | None = None, **options: int) -> None:
        """``work``: the folder the driver runs in and logs to (the peers' work folder)."""
        self.peer, self.role = peer, role
        work = work or work_folder()
        self.log = work / f"{peer.name}-{role}-{prefix}.log"
        argv = [str(python), "-W", "ignore", str(DRIVERS / peer.driver), role, "--url", url,
                "--prefix", prefix]
        for key, value in options.items():
            argv += [f"--{key}", str(value)]
        # stderr to a file: a peer that logs a lot must not fill a pipe nobody reads. The
        # working directory too: a peer that writes a file of its own (a log named in
        # its configuration) writes it there, not where the bench was started.
        # Appended (O_APPEND): reading the tail moves the offset the driver shares.
        self._stderr = self.log.open("a+")  # closed in close()
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True, bufsize=1, cwd=work)
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True,
                         name=f"{peer.name}-{role}-stdout").start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def answer(self, timeout: float) -> dict[str, Any]:
        """The driver's next line; a failure or silence is a PeerError naming it."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise PeerError(f"{self.peer.name} {self.role}: no answer within {timeout:g} s"
                            f"{self._log_tail()}") from None
        if line is None:
            raise PeerError(f"{self.peer.name} {self.role} ended (exit "
                            f"{self._proc.wait()}){self._log_tail()}")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise PeerError(f"{self.peer.name} {self.role}: {message['error']}")
        return message

    def ask(self, command: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        return self.answer(timeout)

    def _log_tail(self) -> str:
        self._stderr.seek(0)
        tail = self._stderr.read()[-1500:].strip()
        return f": {tail} (log: {self.log})" if tail else f" (log: {self.log})"

    def close(self) -> None:
        if self._proc.poll() is None and self.role == "client":
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                assert self._proc.stdin is not None
                self._proc.stdin.write('{"do": "quit"}\n')
                self._proc.stdin.close()
                self._proc.wait(5)
        if self._proc.poll() is None:  # servers and subscribers are ended, not asked
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()
