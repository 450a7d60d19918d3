"""The ``provision`` agent: the provisioner's face on the bus (status, list, quota, events)."""

from __future__ import annotations

from typing import Any

from console.provisioner.ledger import VmLedger, counts
from console.provisioner.quotas import Quotas
from console.provisioner.store import RequestStore
from hostbus.errors import ErrorCode, RemoteError
from hostbus.serving.agent import Agent, method, objects


class ProvisionAgent(Agent):
    name = "provision"

    def __init__(self, store: RequestStore, ledger: VmLedger, quotas: Quotas) -> None:
        super().__init__()
        self.store = store
        self.ledger = ledger
        self.quotas = quotas

    @method()
    def status(self, request_id: str) -> dict[str, Any]:
        record = self.store.get(request_id)
        if record is None:
            raise RemoteError(ErrorCode.NOT_FOUND,
                              f"no provisioning request {request_id!r} has been seen")
        return record.to_dict()

    @method("list")
    def list_requests(self, owner: str | None, status: str | None, limit: int) -> dict[str, Any]:
        return {"requests": [r.to_dict() for r in
                             self.store.list(owner=owner, status=status, limit=limit)]}

    @method()
    def quota(self, owner: str) -> dict[str, Any]:
        counted = [vm for vm in self.ledger.owned(owner) if counts(vm.state)]
        return {"owner": owner, "count": len(counted), "max_vms": self.quotas.limit(owner),
                "vms": [{"name": vm.name, "host": vm.host, "request_id": vm.request_id}
                        for vm in counted]}

    @objects("request")
    def request_objects(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.store.list(limit=1000)]
