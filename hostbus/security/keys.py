"""The keys a console or console-side service names in its ``[security]`` table: its own
signing key (``signing_key``: what it sends is signed) and the folder of the agents'
public keys (``agent_keys``: what it receives must be signed by them). Every service
reads them here, alike; the cryptography library is imported only when one is named."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hostbus import config

if TYPE_CHECKING:
    from hostbus.security.signing import Signer, Verifier


def keys_from_config(security: Mapping[str, Any], config_path: str | None
                     ) -> tuple[Signer | None, Verifier | None]:
    """(signer, agent keys), each None where not configured. Paths are relative to the
    configuration file. Raises ``ConfigError`` for a key that cannot be read."""
    signer = verifier = None
    if security.get("signing_key"):
        from hostbus.security.signing import Signer

        signer = Signer.load(config.resolve(security["signing_key"], config_path))
    if security.get("agent_keys"):
        from hostbus.security.signing import Verifier

        verifier = Verifier.from_folder(config.resolve(security["agent_keys"], config_path))
    return signer, verifier
