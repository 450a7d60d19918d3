"""Shell completion: ``hostbus completion bash|zsh|fish`` prints the script, and the
completers below fill in AGENT.METHOD, AGENT.CLASS, argument names and values, event
patterns and hosts.

Completion never touches the broker (a key press must not wait on the network): hosts
come from a cache that every discovery refreshes (``remember_hosts``).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem, get_completion_class

from console.commands.common import CliContext, Exit, exits

SHELLS = ("bash", "zsh", "fish")
MAX_BROKERS = 10  # brokers (and vhosts) whose hosts are remembered, the latest ones


# ------------------------------------------------------------------- host cache
def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hostbus" / "hosts.json"


def _broker_key(url: str) -> str:
    """The broker and vhost, without credentials."""
    from hostbus.transport.url import parse_url

    with contextlib.suppress(Exception):
        parsed = parse_url(url)
        return f"{parsed.host}:{parsed.port}/{parsed.vhost}"
    return url.rsplit("@", 1)[-1]


def remember_hosts(url: str, hosts: list[str], everyone: bool) -> None:
    """Note hosts that answered discovery, for completion. ``everyone``: an unfiltered
    discovery, whose answer replaces the list (hosts that left drop out)."""
    path = _cache_file()
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(path.read_text()) if path.exists() else {}
        key = _broker_key(url)
        earlier = set(known.pop(key, []))
        known[key] = sorted(set(hosts) | (set() if everyone else earlier))  # latest last
        known = dict(list(known.items())[-MAX_BROKERS:])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(path)


def _known_hosts(ctx: click.Context) -> list[str]:
    root = ctx.find_root().params
    with contextlib.suppress(Exception):
        url = CliContext.load(root.get("config_file"), root.get("url")).url
        known = json.loads(_cache_file().read_text())
        return list(known.get(_broker_key(url), []))
    return []


# ------------------------------------------------------------------- completers
def _items(values: list[str], incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(v) for v in values if v.startswith(incomplete)]


def complete_host(ctx: click.Context, _param: click.Parameter,
                  incomplete: str) -> list[CompletionItem]:
    return _items(_known_hosts(ctx), incomplete)


def _schemas() -> dict[str, Any]:
    from hostbus.schema import available_agents, load_agent_schema

    return {a: load_agent_schema(a) for a in available_agents()}


def complete_method(_ctx: click.Context, _param: click.Parameter,
                    incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(f"{a}.{m}", help=s.methods[m].description.split(".")[0])
            for a, s in _schemas().items() for m in s.methods
            if f"{a}.{m}".startswith(incomplete)]


def complete_class(_ctx: click.Context, _param: click.Parameter,
                   incomplete: str) -> list[CompletionItem]:
    return _items([f"{a}.{c}" for a, s in _schemas().items() for c in s.classes], incomplete)


def complete_schema_target(_ctx: click.Context, _param: click.Parameter,
                           incomplete: str) -> list[CompletionItem]:
    names = [a for a in _schemas()] + [f"{a}.{m}" for a, s in _schemas().items()
                                       for m in s.methods]
    return _items(names, incomplete)


def complete_pattern(_ctx: click.Context, _param: click.Parameter,
                     incomplete: str) -> list[CompletionItem]:
    shapes = ["#"] + [f"{a}.#" for a in _schemas()] + [
        f"{a}.*.{e}" for a, s in _schemas().items() for e in s.events]
    return _items(shapes, incomplete)


def complete_argument(ctx: click.Context, _param: click.Parameter,
                      incomplete: str) -> list[CompletionItem]:
    """KEY= for the method's arguments not given yet; after KEY=, an enum's values."""
    target = ctx.params.get("target") or ""
    agent, _, method = target.partition(".")
    spec = _schemas().get(agent)
    props = spec.methods[method].args.get("properties", {}) \
        if spec is not None and method in spec.methods else {}
    key, sep, _value = incomplete.partition("=")
    if sep:
        choices = props.get(key, {}).get("enum") or (
            ["true", "false"] if props.get(key, {}).get("type") == "boolean" else [])
        return _items([f"{key}={c}" for c in choices], incomplete)
    given = {p.partition("=")[0] for p in ctx.params.get("pairs") or ()}
    return [CompletionItem(f"{k}=", help=p.get("description", ""))
            for k, p in props.items() if k not in given and k.startswith(incomplete)]


# --------------------------------------------------------------------- command
@exits(configured=False)
@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(click_ctx: click.Context, shell: str) -> Exit:
    """Print the completion script for SHELL: commands, options, AGENT.METHOD and its
    argument names, AGENT.CLASS, event patterns and hosts (those that answered your last
    discoveries).

    \b
      bash:  eval "$(hostbus completion bash)"       (in ~/.bashrc)
      zsh:   eval "$(hostbus completion zsh)"        (in ~/.zshrc)
      fish:  hostbus completion fish > ~/.config/fish/completions/hostbus.fish
    """
    root = click_ctx.find_root()
    script = get_completion_class(shell)(root.command, {}, "hostbus", "_HOSTBUS_COMPLETE")
    click.echo(script.source())
    return Exit.OK
