"""Where the shipped data files are: ``schemas/`` and ``broker_config/``.

Installed from a wheel they are the packages ``hostbus.schemas`` and
``hostbus.broker_config``; in a source checkout (and an editable install, which puts the
checkout on ``sys.path``) they are the top-level folders of the repository.
"""

from __future__ import annotations

import functools
import importlib.util
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


@functools.cache
def data_dir(kind: str) -> Traversable:
    """``kind`` is ``schemas`` or ``broker_config``."""
    if importlib.util.find_spec(f"hostbus.{kind}") is not None:
        return resources.files(f"hostbus.{kind}")
    local = _REPO / kind
    if local.is_dir():
        return local
    raise FileNotFoundError(f"hostbus data folder {kind!r} is missing from this installation")
