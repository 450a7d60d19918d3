"""The provisioner: a console-side service that turns one posted message into running VMs.

- ``service.py``: where a provisioning message enters and how it is carried out;
- ``placement.py``: which host gets each VM (pure, unit-tested);
- ``store.py``: the durable record of each request (SQLite), so work survives a crash;
- ``agent.py``: the ``provision`` agent that answers status queries and sends events.
"""
