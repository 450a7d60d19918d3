"""How many VMs an owner may have at once ([quotas] in the provisioner's config)."""

from __future__ import annotations

from dataclasses import dataclass

from hostbus.errors import ErrorCode, RemoteError


@dataclass(frozen=True)
class Quotas:
    """Limits per owner. What counts is the ledger's business (``VmLedger.count``: VMs
    that exist and are not shut off); who may ask at all is the policy's."""

    default_max_vms: int
    owners: dict[str, int]

    def limit(self, owner: str) -> int:
        return self.owners.get(owner, self.default_max_vms)

    def check(self, owner: str, have: int, asking: int) -> None:
        limit = self.limit(owner)
        if have + asking > limit:
            raise RemoteError(ErrorCode.UNAUTHORIZED,
                              f"owner {owner} has {have} VMs of a quota of {limit}; this "
                              f"request asks for {asking} more. Give VMs back with `hostbus "
                              "provision release REQUEST_ID` (`hostbus provision quota "
                              f"{owner}` lists the VMs that count)",
                              {"rule": "quota", "vms": have, "max_vms": limit})
