"""A PostgreSQL database of a test's own on the machine's server (``./run.sh test``
installs and starts PostgreSQL and makes the role hostbus_test), dropped afterwards.
HOSTBUS_TEST_POSTGRES names another server (a URL of a role that may create databases)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from hostbus.testing.pytest_plugin import fail_or_skip

SERVER = os.environ.get("HOSTBUS_TEST_POSTGRES",
                        "postgresql://hostbus_test:hostbus_test@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    try:
        import psycopg
    except ImportError:
        fail_or_skip("psycopg is not installed: pip install -e '.[test]'")
    name = f"hostbus_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        fail_or_skip(f"no PostgreSQL at {SERVER} ({exc}); ./run.sh test starts one")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield SERVER.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
