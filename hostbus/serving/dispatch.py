"""How a request is checked and acted on: one delivery in, at most one reply out.

The order is fixed and cheapest-first: size and properties, JSON, envelope schema,
target (is it for this host?), deadline, agent, method, arguments, policy, and only
then the call. Any refusal becomes an error reply with a documented code; nothing
refused is executed; nothing raised here escapes to the transport.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hostbus.envelope import (
    REQUEST_TYPE,
    Reply,
    Request,
    bounded,
    error_reply,
    parse_request,
    usable_reply_to,
)
from hostbus.errors import ErrorCode, RemoteError
from hostbus.names import BUILTIN_AGENT
from hostbus.schema import AgentSchema
from hostbus.security.policy import AllowAll, Decision, Policy
from hostbus.security.replay import ReplayGuard
from hostbus.serving.agent import Agent, CallContext, as_text
from hostbus.transport.base import Delivery

if TYPE_CHECKING:
    from hostbus.security.signing import Verifier
    from hostbus.serving.approvals import Approvals, Parked

log = logging.getLogger("hostbus.dispatch")


@dataclass
class Outcome:
    """What the dispatcher decided: the reply to send (if any) and where."""

    reply: Reply | None
    reply_to: str | None
    request: Request | None = None
    executed: bool = False
    decision: Decision | None = None  # the policy's, when the request got that far
    parked: Parked | None = None  # set when the request now waits for an approval
    approved_by: str | None = None  # set when it ran after an approval
    #: The broker-checked user_id, even when the request could not be parsed: a refused
    #: message is audited under the identity that sent it.
    caller: str | None = None
    #: A copy of a request seen before, answered ``replayed``: that answer is not the
    #: request's own reply, and is not remembered as it.
    repeat: bool = False


@dataclass
class Checked:
    """A request that passed every check and may run: what ``run`` needs."""

    request: Request
    fn: Callable[..., Any]
    args: dict[str, Any]
    spec: Any
    inline: bool
    started: float
    decision: Decision


@dataclass
class HostedAgent:
    agent: Agent
    schema: AgentSchema
    methods: dict[str, Callable[..., Any]] = field(default_factory=dict)
    wants_ctx: set[str] = field(default_factory=set)
    inline: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.methods = self.agent.methods()
        self.wants_ctx = {n for n, fn in self.methods.items()
                          if "ctx" in inspect.signature(fn).parameters}
        self.inline = self.agent.inline_methods()


class Dispatcher:
    def __init__(
        self,
        host_id: str,
        agents: dict[str, HostedAgent],
        *,
        facts: Callable[[], dict[str, Any]],
        policy: Policy | None = None,
        max_message_bytes: int = 1 << 20,
        check_results: bool = False,
        verifier: Verifier | None = None,
        replay: ReplayGuard | None = None,
        approvals: Approvals | None = None,
    ) -> None:
        self.host_id = host_id
        self.agents = agents
        self.facts = facts
        self.policy: Policy = policy or AllowAll()
        self.max_message_bytes = max_message_bytes
        self.check_results = check_results
        self.verifier = verifier  # None: signatures are not required
        self.replay = replay or ReplayGuard()
        self.approvals = approvals  # None: requests that need approval are only refused

    def handle(self, delivery: Delivery) -> Outcome:
        """Check and run in one go (the runtime splits the two across threads)."""
        checked = self.check(delivery)
        return checked if isinstance(checked, Outcome) else self.run(checked)

    def check(self, delivery: Delivery) -> Outcome | Checked:
        """Every check, cheapest first. An Outcome is a refusal (or silence) to send as
        is; a Checked request may run. Never raises."""
        started = time.perf_counter()
        props = delivery.properties
        reply_to = usable_reply_to(props)
        # Bounded before anything is logged or kept: over AMQP 1.0 these may be megabytes.
        correlation, caller = bounded(props.message_id), bounded(props.user_id)
        try:
            request = parse_request(delivery, max_bytes=self.max_message_bytes)
        except RemoteError as err:
            log.warning("rejected message %s from %s: %s %s", correlation, caller or "-",
                        err.code.value, err.message)
            return Outcome(self._error(BUILTIN_AGENT, None, err, correlation, started), reply_to,
                           caller=caller)
        try:
            if self.verifier is not None:
                try:
                    self.verifier.verify(delivery.exchange, delivery.routing_key,
                                         delivery.properties, delivery.body,
                                         kind=REQUEST_TYPE)
                except RemoteError as err:
                    log.warning("refused %s from %s: %s %s", request.message_id,
                                request.user_id or "-", err.code.value, err.message)
                    return Outcome(self._error(request.agent, request.method, err,
                                               request.message_id, started),
                                   request.reply_to, request)
            return self._check_request(request, started, delivery)
        except Exception:  # last line of defence: a bug here must not reach the transport
            log.exception("dispatcher failed on request %s", request.message_id)
            err = RemoteError(ErrorCode.INTERNAL, "the agent failed while handling the request")
            return Outcome(self._error(request.agent, request.method, err,
                                       request.message_id, started), request.reply_to, request)

    def _check_request(self, request: Request, started: float,
                       delivery: Delivery) -> Outcome | Checked:
        rid, agent_name, method_name = request.message_id, request.agent, request.method

        def refuse(err: RemoteError, decision: Decision | None = None) -> Outcome:
            log.warning("refused %s %s.%s from %s: %s %s", rid, agent_name, method_name,
                        request.user_id or "-", err.code.value, err.message)
            return Outcome(self._error(agent_name, method_name, err, rid, started),
                           request.reply_to, request, decision=decision)

        bfilter = request.broadcast_filter
        if bfilter is not None:
            if not self.matches(bfilter):
                return Outcome(None, None, request)  # a broadcast for others: stay silent
        elif request.host != self.host_id:
            return refuse(RemoteError(
                ErrorCode.BAD_MESSAGE,
                f"target.host is {request.host!r} but this is host {self.host_id!r}; "
                f"the routing key must be '<agent>.{request.host}'",
            ))
        if datetime.now(UTC) > request.deadline:
            return refuse(RemoteError(
                ErrorCode.EXPIRED,
                f"deadline {request.deadline.isoformat()} passed before the request could run",
            ))
        try:
            self.replay.check(request.user_id or "", rid, request.deadline.timestamp())
        except RemoteError as err:
            outcome = refuse(err)
            outcome.repeat = err.code is ErrorCode.REPLAYED
            return outcome
        try:
            checked = self.prepare(request, started)
        except RemoteError as err:
            return refuse(err)
        decision = checked.decision
        if decision.allowed:
            return checked
        if not decision.requires_approval:
            return refuse(RemoteError(ErrorCode.UNAUTHORIZED, decision.reason,
                                      {"rule": decision.rule}), decision)
        if self.approvals is None or request.broadcast_filter is not None:
            why = ("a broadcast cannot be approved; call the host directly"
                   if self.approvals is not None else
                   "this agent cannot take approvals because it checks no signatures; set "
                   "[security] trusted_keys in its config")
            return refuse(RemoteError(ErrorCode.APPROVAL_REQUIRED,
                                      f"{decision.reason}, but {why}",
                                      {"rule": decision.rule}), decision)
        try:
            parked = self.approvals.park(delivery, request, decision.rule)
        except RemoteError as err:  # the approvals file cannot be written
            return refuse(err, decision)
        outcome = refuse(RemoteError(
            ErrorCode.APPROVAL_REQUIRED,
            f"{decision.reason}; parked as approval {parked.approval_id} until "
            f"{parked.expires_at}. Another person approves it with `hostbus "
            f"approvals approve {parked.approval_id}`",
            {"rule": decision.rule, "approval_id": parked.approval_id,
             "expires": parked.expires_at, "digest": parked.digest},
        ), decision)
        outcome.parked = parked
        return outcome

    def prepare(self, request: Request, started: float) -> Checked:
        """Agent, method, arguments and the policy's decision (not acted on here: a
        refusal and a parked request differ). Raises ``RemoteError``."""
        agent_name, method_name = request.agent, request.method
        hosted = self.agents.get(agent_name)
        if hosted is None:
            raise RemoteError(
                ErrorCode.UNKNOWN_AGENT,
                f"agent {agent_name!r} is not enabled on host {self.host_id!r}; "
                f"enabled: {', '.join(sorted(self.agents))}",
            )
        spec = hosted.schema.methods.get(method_name)
        fn = hosted.methods.get(method_name)
        if spec is None or fn is None:
            raise RemoteError(
                ErrorCode.UNKNOWN_METHOD,
                f"agent {agent_name!r} has no method {method_name!r}; "
                f"methods: {', '.join(sorted(hosted.schema.methods))}",
            )
        args = spec.validate_args(request.args)
        if agent_name == BUILTIN_AGENT and method_name == "query":
            # Authorized as what it exposes: reading class C of agent A is decided as a
            # call of A's pseudo-method "class.C", so a caller allowed only a narrow
            # method cannot read the same objects, unfiltered, through a query.
            decision = self.policy.decide(
                replace(request, agent=args["agent"], method=f"class.{args['class_name']}",
                        args=args.get("where") or {}), spec)
        else:
            decision = self.policy.decide(request, spec)
        if method_name in hosted.wants_ctx:
            args = {**args, "ctx": CallContext(request.message_id, request.user_id,
                                               agent_name, method_name)}
        return Checked(request, fn, args, spec, method_name in hosted.inline, started,
                       decision)

    def prepare_approved(self, parked: Parked) -> Checked:
        """A parked request that an approver released: parsed from its stored bytes and
        checked again (the policy may have changed while it waited). Raises
        ``RemoteError``."""
        request = parse_request(parked.delivery(), max_bytes=self.max_message_bytes)
        checked = self.prepare(request, time.perf_counter())
        decision = checked.decision
        if not (decision.allowed or decision.requires_approval):
            raise RemoteError(ErrorCode.UNAUTHORIZED,
                              f"the policy no longer allows {parked.call}: {decision.reason}",
                              {"rule": decision.rule})
        checked.decision = Decision(True, decision.rule,
                                    f"{decision.reason}; approved by {parked.decided_by}")
        return checked

    def late(self, checked: Checked) -> Outcome | None:
        """A checked request whose deadline passed while it waited for a worker: the
        ``expired`` answer (it is not run), or None if it may still run."""
        request = checked.request
        if datetime.now(UTC) <= request.deadline:
            return None
        err = RemoteError(ErrorCode.EXPIRED,
                          f"deadline {request.deadline.isoformat()} passed while the request "
                          "waited for a worker (the agent was busy); it was not run")
        log.warning("refused %s %s.%s from %s: %s %s", request.message_id, request.agent,
                    request.method, request.user_id or "-", err.code.value, err.message)
        return Outcome(self._error(request.agent, request.method, err, request.message_id,
                                   checked.started), request.reply_to, request,
                       decision=checked.decision)

    def run(self, checked: Checked) -> Outcome:
        """Act on a checked request. Never raises: failures become error replies."""
        request, started = checked.request, checked.started
        rid, agent_name, method_name = request.message_id, request.agent, request.method
        try:
            result = checked.fn(**checked.args)
            if not isinstance(result, dict):
                raise TypeError(f"{agent_name}.{method_name} returned {type(result).__name__}, "
                                "not a dict")
            if self.check_results:
                checked.spec.result_validator.validate(result)
        except RemoteError as err:
            log.info("%s %s.%s from %s: %s %s", rid, agent_name, method_name,
                     request.user_id or "-", err.code.value, err.message)
            return Outcome(self._error(agent_name, method_name, err, rid, started),
                           request.reply_to, request, executed=True, decision=checked.decision)
        except Exception as exc:
            log.exception("%s %s.%s raised", rid, agent_name, method_name)
            err = RemoteError(ErrorCode.INTERNAL, f"{agent_name}.{method_name} failed: "
                              f"{type(exc).__name__}: {exc}")
            return Outcome(self._error(agent_name, method_name, err, rid, started),
                           request.reply_to, request, executed=True, decision=checked.decision)
        elapsed = (time.perf_counter() - started) * 1000
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s.%s from %s: ok in %.1f ms", rid, agent_name, method_name,
                     request.user_id or "-", elapsed)
        reply = Reply(host=self.host_id, agent=agent_name, method=method_name, status="ok",
                      result=result, correlation_id=rid, elapsed_ms=elapsed)
        return Outcome(reply, request.reply_to, request, executed=True,
                       decision=checked.decision)

    def matches(self, bfilter: dict[str, Any]) -> bool:
        """Whether this daemon answers a broadcast with this filter."""
        pattern = bfilter.get("host")
        if pattern is not None and not fnmatch.fnmatchcase(self.host_id, pattern):
            return False
        agent = bfilter.get("agent")
        if agent is not None and agent not in self.agents:
            return False
        wanted = bfilter.get("facts")
        if wanted:
            facts = self.facts()
            for key, value in wanted.items():
                if key not in facts or as_text(facts[key]) != as_text(value):
                    return False
        return True

    def _error(self, agent: str, method: str | None, err: RemoteError, correlation: str | None,
               started: float) -> Reply:
        return error_reply(self.host_id, agent, method, err, correlation,
                           (time.perf_counter() - started) * 1000)
