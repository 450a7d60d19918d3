"""Signing keys: ``hostbus keys generate``."""

from __future__ import annotations

import click

from console.commands.common import CliError, Exit, emit_json, exits, usage
from console.commands.options import json_option


@click.group()
def keys() -> None:
    """Ed25519 keys for signing requests."""


@exits(Exit.FAILED, configured=False)
@keys.command("generate")
@click.argument("name")
@click.option("--out", "folder", default=".", show_default=True, type=click.Path(),
              help="Folder for NAME.key (private, mode 0600) and NAME.pub.")
@json_option
def keys_generate(name: str, folder: str, as_json: bool) -> Exit:
    """Make a key pair for the identity NAME (its broker user name).

    \b
    The console signs with NAME.key:   [security] signing_key = "NAME.key"
    Agents that should obey NAME get NAME.pub in their trusted keys folder:
                                       [security] trusted_keys = "/etc/hostbus/trusted"
    """
    from hostbus.broker_admin import IDENTITY_RE
    from hostbus.security.signing import generate

    if not IDENTITY_RE.match(name):
        raise usage(f"invalid name {name!r}: use the identity's broker user name (a-z 0-9 _ -)")
    try:
        key_path, pub_path = generate(name, folder)
    except FileExistsError:
        raise usage(f"{folder}/{name}.key exists; a key is not overwritten (move it away "
                    "first)") from None
    except OSError as exc:
        raise CliError(Exit.FAILED, f"cannot write to {folder}: {exc}") from None
    if as_json:
        emit_json({"name": name, "private": str(key_path), "public": str(pub_path)})
    else:
        click.echo(f"private key {key_path} (mode 0600): keep it on {name}'s machine only")
        click.echo(f"public key  {pub_path}: copy it into the trusted keys folder of each "
                   "agent that should obey it")
    return Exit.OK
