"""The ``manager`` agent: the manager's face on the bus. ``hostbus hosts``, ``hostbus
vms``, ``hostbus vm NAME ha on`` and ``hostbus hosts maintenance HOST`` are calls to it,
answered from the fleet model; its events tell what the manager decided and did."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from console.manager.actions import Actions
from console.manager.fleet import Fleet
from console.manager.policies import Thresholds, n_plus_one, plan
from console.placement import PlacementConfig
from hostbus.errors import ErrorCode, RemoteError
from hostbus.serving.agent import Agent, CallContext, method, objects


class ManagerAgent(Agent):
    name = "manager"

    def __init__(self, fleet: Fleet, actions: Actions, *,
                 status: Callable[[], dict[str, Any]] = lambda: {},
                 learn_xml: Callable[[str, str], bool] = lambda name, host: False,
                 placement: PlacementConfig | None = None,
                 confirm_down: Callable[[str, str], str] | None = None,
                 thresholds: Thresholds | None = None) -> None:
        """``status()`` says which instance answers and whether it is the active one;
        ``learn_xml(name, host)`` fetches a VM's XML (when it is marked HA)."""
        super().__init__()
        self.fleet = fleet
        self.actions = actions
        self.status = status
        self.learn_xml = learn_xml
        self.placement = placement
        self._confirm_down = confirm_down
        self.thresholds = thresholds or Thresholds()

    @method()
    def hosts(self) -> dict[str, Any]:
        counts = self.fleet.counts()
        return {"hosts": [{**h.to_dict(), "vms": counts.get(h.host, 0)}
                          for h in self.fleet.hosts()],
                "n_plus_one": n_plus_one(self.fleet, config=self.placement),
                "manager": self.status()}

    @method()
    def vms(self, host: str | None) -> dict[str, Any]:
        return {"vms": [v.to_dict() for v in self.fleet.vms(host)], "manager": self.status()}

    @method()
    def ha(self, name: str, enabled: bool, priority: int) -> dict[str, Any]:
        vm = self.fleet.vm(name)
        if vm is None:
            raise RemoteError(ErrorCode.NOT_FOUND,
                              f"the manager knows no VM {name!r} (`hostbus vms` lists them)")
        vm = self.fleet.update_vm(name, ha=enabled, ha_priority=priority) or vm
        if enabled and not self.learn_xml(name, vm.host):
            raise RemoteError(ErrorCode.FAILED,
                              f"{name} is marked HA, but its XML could not be read from "
                              f"{vm.host}; the manager tries again at each listing",
                              {"vm": vm.to_dict()})
        self.emit("vm.ha", {"vm": name, "ha": enabled, "priority": priority})
        return (self.fleet.vm(name) or vm).to_dict()

    @method()
    def maintenance(self, host: str, enabled: bool) -> dict[str, Any]:
        h = self.fleet.host(host)
        if h is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"the manager knows no virt host {host!r} "
                                                   "(`hostbus hosts` lists them)")
        _, after = self.fleet.update_host(host, maintenance=enabled)
        self.emit("maintenance", {"host": host, "status": "started" if enabled else "ended",
                                  "moved": 0, "failed": 0})
        if enabled:
            self.actions.evacuate(host)
        return {**after.to_dict(), "vms": len(self.fleet.vms(host))}

    @method()
    def confirm_down(self, host: str, ctx: CallContext) -> dict[str, Any]:
        if self._confirm_down is None:
            raise RemoteError(ErrorCode.UNSUPPORTED, "this manager cannot confirm hosts down")
        why = self._confirm_down(host, ctx.caller or "an unknown caller")
        h = self.fleet.host(host)
        assert h is not None
        return {**h.to_dict(), "why": why, "vms": len(self.fleet.vms(host))}

    @method("plan")
    def plan_moves(self, policy: str, host_down: str | None) -> dict[str, Any]:
        if policy == "host_down" and host_down is None:
            raise RemoteError(ErrorCode.INVALID_ARGS, "policy host_down needs host_down: the "
                              "host whose loss to plan", {"path": "args.host_down"})
        if host_down is not None and self.fleet.host(host_down) is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"the manager knows no virt host "
                                                   f"{host_down!r}")
        return plan(self.fleet, policy, host_down=host_down, thresholds=self.thresholds,
                    config=self.placement)

    @objects("vm")
    def vm_objects(self) -> list[dict[str, Any]]:
        return [v.to_dict() for v in self.fleet.vms()]

    @objects("host")
    def host_objects(self) -> list[dict[str, Any]]:
        return [h.to_dict() for h in self.fleet.hosts()]
