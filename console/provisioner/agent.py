"""The ``provision`` agent: the provisioner's face on the bus (status, list, events)."""

from __future__ import annotations

from typing import Any

from console.provisioner.store import RequestStore
from hostbus.errors import ErrorCode, RemoteError
from hostbus.serving.agent import Agent, method, objects


class ProvisionAgent(Agent):
    name = "provision"

    def __init__(self, store: RequestStore) -> None:
        super().__init__()
        self.store = store

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

    @objects("request")
    def request_objects(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.store.list(limit=1000)]
