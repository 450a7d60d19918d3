"""Where the shipped data files are: ``schemas/`` and ``broker_config/``.

Installed from a wheel they are the folders of the packages ``hostbus.schemas`` and
``hostbus.broker_config``; in a source checkout (and an editable install, which puts the
checkout on ``sys.path``) they are the top-level folders of the repository. Either way
they are plain folders: located through the import system's spec rather than
``importlib.resources``, whose machinery (tempfile, shutil, compression modules) every
agent would otherwise carry in memory.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


@functools.cache
def data_dir(kind: str) -> Path:
    """``kind`` is ``schemas`` or ``broker_config``."""
    spec = importlib.util.find_spec(f"hostbus.{kind}")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    local = _REPO / kind
    if local.is_dir():
        return local
    raise FileNotFoundError(f"hostbus data folder {kind!r} is missing from this installation")
