"""Whether an event speaks for the host it names: the one rule every receiver applies
before acting on an event (a console's subscriber, the historian, the manager, the
reactor).

1. Its routing key is the one its body makes (``AGENT.HOST.EVENT``): a binding can
   never be fooled by a body that names another host or event.
2. The broker-checked ``user_id`` is that host, or one of the identities that may
   speak for many hosts (``multi_host_users``: the provisioner's and consoles' shared
   users, ``guest`` on a demo broker).
3. With agent keys, the host signed it.

The broker checks (2) on every publish; hostbus checks (1) and (3). A message that
fails is never acted on, and the caller says why (``why_not_from`` returns the reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hostbus.envelope import EVENT_TYPE
from hostbus.errors import RemoteError

if TYPE_CHECKING:
    from collections.abc import Collection

    from hostbus.security.signing import Verifier
    from hostbus.transport.base import Delivery

#: Who may speak for many hosts unless configured otherwise: the demo broker's user.
MULTI_HOST_USERS = frozenset({"guest"})


def why_not_from(delivery: Delivery, host: str, *, routing_key: str | None = None,
                 multi_host_users: Collection[str] = MULTI_HOST_USERS,
                 verifier: Verifier | None = None, kind: str = EVENT_TYPE,
                 what: str = "event", who: str = "this console") -> str | None:
    """None if this message speaks for ``host``; else why not, in words for a log.
    ``routing_key`` is the key its body makes (None: not checked, as for a reply)."""
    if routing_key is not None and delivery.routing_key and \
            delivery.routing_key != routing_key:
        return (f"its routing key {delivery.routing_key!r} does not match its body "
                f"({routing_key!r})")
    user = delivery.properties.user_id
    if user != host and user not in multi_host_users:
        return f"it was sent by broker user {user!r}, and a host may only speak for itself"
    if verifier is None:
        return None
    try:
        signer = verifier.verify(delivery.exchange, delivery.routing_key,
                                 delivery.properties, delivery.body, kind=kind, what=what,
                                 who=who)
    except RemoteError as err:
        return err.message
    return None if signer == host else f"it names host {host!r} but was signed by {signer!r}"
