"""Configuration: defaults, then a TOML file, then environment variables.

Every key has a default, so a file holds only what differs. Unknown keys are errors
(a typo must not silently fall back to a default), and so are wrong types. Each leaf
can be overridden by ``HOSTBUS_<SECTION>_<KEY>`` (upper case, path joined by '_'),
e.g. ``HOSTBUS_BROKER_URL`` or ``HOSTBUS_HOST_ALERTS_CPU_PERCENT_RAISE``; list values
are comma-separated.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hostbus.errors import ConfigError

ENV_PREFIX = "HOSTBUS"


def load(
    defaults: dict[str, Any], path: str | Path | None = None, *,
    environ: Mapping[str, str] | None = None, free_form: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Merge ``defaults`` <- file <- environment. ``free_form`` lists dotted paths of
    tables that take any keys (such as ``agent.facts``)."""
    config = copy.deepcopy(defaults)
    if path is not None:
        path = Path(path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        _merge(config, data, str(path), (), free_form)
    _apply_env(config, os.environ if environ is None else environ, (), free_form)
    return config


def default_state_dir() -> Path:
    """Where hostbus keeps state it must not lose: $XDG_STATE_HOME/hostbus, or
    ~/.local/state/hostbus."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hostbus"


def resolve(path: str, relative_to: str | Path | None) -> Path:
    """A path from a config file: relative ones are relative to that file's folder."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or relative_to is None:
        return candidate
    return Path(relative_to).resolve().parent / candidate


def _merge(into: dict[str, Any], data: dict[str, Any], source: str, path: tuple[str, ...],
           free_form: tuple[str, ...]) -> None:
    for key, value in data.items():
        here = (*path, key)
        dotted = ".".join(here)
        if ".".join(path) in free_form:
            into[key] = value
            continue
        if key not in into:
            known = ", ".join(sorted(into)) or "none"
            raise ConfigError(f"{source}: unknown key '{dotted}' (known here: {known})")
        current = into[key]
        if isinstance(current, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a table")
            _merge(current, value, source, here, free_form)
        else:
            into[key] = _check_type(current, value, f"{source}: '{dotted}'")


def _check_type(default: Any, value: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(default, float):
            value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
    elif isinstance(default, list) and not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {value!r}")
    return value


def _apply_env(config: dict[str, Any], environ: Mapping[str, str], path: tuple[str, ...],
               free_form: tuple[str, ...]) -> None:
    if ".".join(path) in free_form:
        return
    for key, current in config.items():
        here = (*path, key)
        if isinstance(current, dict):
            _apply_env(current, environ, here, free_form)
            continue
        name = "_".join((ENV_PREFIX, *here)).upper()
        if name not in environ:
            continue
        raw = environ[name]
        where = f"environment variable {name}"
        if isinstance(current, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ConfigError(f"{where} must be true or false, got {raw!r}")
            config[key] = raw.lower() in ("1", "true", "yes")
        elif isinstance(current, int | float):
            try:
                config[key] = type(current)(raw)
            except ValueError:
                raise ConfigError(f"{where} must be a number, got {raw!r}") from None
        elif isinstance(current, list):
            config[key] = [item.strip() for item in raw.split(",") if item.strip()]
        else:
            config[key] = raw
