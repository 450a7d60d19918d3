"""One placement engine, for every console-side service that puts VMs on hosts (the
provisioner, the manager): filters rule hosts out and say why, weights rank the rest.

- ``model.py``: HostView, VmView, PlacementRequest, Placement (plain data);
- ``fleet.py``: Fleet, the index of what hosts hold, kept current by its owner;
- ``filters.py``, ``weights.py``: the registries of filters and weights;
- ``config.py``: PlacementConfig ([placement] in a service's config);
- ``engine.py``: ``place(request, hosts, vms)``.
"""

from console.placement.config import PlacementConfig
from console.placement.engine import place
from console.placement.fleet import Fleet
from console.placement.model import (
    HOST_STATES,
    MAINTENANCE,
    OFFLINE,
    ONLINE,
    STANDBY,
    UNRESPONSIVE,
    HostView,
    Placement,
    PlacementRequest,
    TemplateLimits,
    VmView,
    load_over_window,
)

__all__ = ["HOST_STATES", "MAINTENANCE", "OFFLINE", "ONLINE", "STANDBY", "UNRESPONSIVE",
           "Fleet", "HostView", "Placement", "PlacementConfig", "PlacementRequest",
           "TemplateLimits", "VmView", "load_over_window", "place"]
