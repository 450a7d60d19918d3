"""The serving runtime that agents and console-side services share.

Where a message enters: ``runtime.AgentRuntime`` takes each delivery from the host's
queue; how it is checked: ``dispatch.Dispatcher``, cheapest check first; where it is acted
on: the agent's method (``agent.Agent`` subclasses, in ``agents/`` and in services).
Events leave through ``outbox.EventOutbox``; requests that need a second person wait in
``approvals``.
"""
