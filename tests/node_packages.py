"""Node.js for the tests that run JavaScript: the examples in examples/node (clients in
another language, written from docs/protocol.md) and the strict schema check."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from hostbus.testing.pytest_plugin import fail_or_skip

ROOT = Path(__file__).resolve().parents[1]
NODE_EXAMPLES = ROOT / "examples" / "node"
SCHEMA_CHECK = ROOT / "tests" / "contract" / "node"


def node() -> str:
    """The node binary (v18 or later), or the test fails in CI and skips elsewhere."""
    found, npm = shutil.which("node"), shutil.which("npm")
    if not found or not npm:
        fail_or_skip("node and npm are not installed: `apt-get install nodejs npm` "
                     "(./run.sh test installs them)")
    version = subprocess.run([found, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        fail_or_skip(f"node {version} is too old: the JavaScript here needs node 18 or later")
    return found


def installed(folder: Path) -> Path:
    """``npm ci`` in ``folder`` once: again only when its lockfile is newer than what
    node_modules holds."""
    node()
    marker = folder / "node_modules" / ".package-lock.json"
    lock = folder / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=folder,
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            fail_or_skip(f"npm ci in {folder} failed: {done.stderr[-2000:]}")
    return folder
