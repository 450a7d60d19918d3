"""State files hold other people's requests and replies: only the service's user may
read them, whatever the umask."""

import os
import stat

import pytest

from console.provisioner.store import RequestStore
from hostbus.security.replay import ReplayGuard
from hostbus.serving.approvals import ApprovalStore
from hostbus.serving.outbox import Spool


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)  # the usual default: files 0644, folders 0755
    yield
    os.umask(old)


@pytest.mark.parametrize("open_store", [
    lambda p: Spool(p),
    lambda p: ReplayGuard(path=p),
    lambda p: ApprovalStore(p),
    lambda p: RequestStore(p),
], ids=["spool", "recent-requests", "approvals", "provisioner"])
def test_state_databases_are_0600_in_a_0700_folder(tmp_path, loose_umask, open_store):
    path = tmp_path / "state" / "store.db"
    open_store(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for side in path.parent.glob("store.db-*"):  # SQLite's -wal and -shm follow the file
        assert stat.S_IMODE(side.stat().st_mode) == 0o600, side.name


def test_an_existing_shared_folder_is_left_alone_but_the_file_is_private(tmp_path,
                                                                          loose_umask):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    path = shared / "spool.db"
    path.write_bytes(b"")
    path.chmod(0o644)  # made by an older release
    Spool(path)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
