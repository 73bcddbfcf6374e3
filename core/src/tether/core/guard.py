"""The Guard: one decision point for every action of every agent, whatever its framework."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import scopes
from .approvals import ApprovalAnswer, ApprovalRequest, Approver, Unanswered
from .audit.events import Kind, NewEvent
from .audit.gaps import Gaps
from .audit.store import DEFAULT_TIMEOUT, AuditStore, ConditionFailed
from .behaviour import Behaviour
from .cautions import Caution, apply_cautions
from .classify import Classifier
from .decision import ERROR_RULE, Decision, Enforcement, Ruling, ToolCall, redact_args
from .errors import StoreError, TetherError, UnsupportedValueError
from .keys import fingerprint
from .planners import Planner, PlanningFailed, plan_scope
from .policy.compile import CompiledPolicy, load_policy
from .policy.schema import Mode, Policy, Trust, Verdict
from .protect import Held, held_back
from .provenance import argument_values, content_values, fingerprints, reads_like_instructions, strings, trusted_parts
from .redact import Preview, mask, mask_values, preview, user_ref
from .request import as_request_text
from .ruling import rule_on
from .state import SessionState
from .values import Plain, as_text, canonical_json, clean_str, to_plain

if TYPE_CHECKING:
    from .telemetry import Observer

log = logging.getLogger("tether")
_MAX_SESSIONS = 10_000  # sessions kept in memory; older ones are rebuilt from the audit if they return


def _new_id() -> str:
    return os.urandom(16).hex()  # as unique as a UUID4, without building a UUID object


@dataclass(frozen=True)
class ModelRequest:
    """The answer to :meth:`Session.before_model`."""

    event_id: str  # pass as ``parent`` to :meth:`Session.after_model`
    messages: Any  # what to send the model
    allowed: bool = True
    reason: str = ""


class Guard:
    """Decides on agents' tool calls under a policy and records everything in the audit store.

    ``policy`` is a YAML file path, a mapping, a :class:`Policy` or a compiled policy. ``store`` is
    a SQLAlchemy URL or an :class:`AuditStore` (default: ``TETHER_STORE``, else
    ``.tether/tether.db``). ``mode`` overrides the policy's enforce/monitor mode.
    ``store_timeout``: the most seconds a decision waits on the store (a URL ``store`` only);
    past it the call is denied. ``telemetry`` is told about each finished decision: a
    :class:`~tether.core.telemetry.Telemetry` exports them to OpenTelemetry (``True`` builds one
    on the global providers; needs ``tether[otel]``).
    """

    def __init__(
        self,
        policy: str | os.PathLike[str] | Mapping[str, Any] | Policy | CompiledPolicy,
        *,
        store: str | AuditStore | None = None,
        approver: Approver | None = None,
        mode: Mode | str | None = None,
        store_timeout: float = DEFAULT_TIMEOUT,
        telemetry: Observer | bool | None = None,
    ) -> None:
        self.policy = policy if isinstance(policy, CompiledPolicy) else load_policy(policy)
        self.mode = Mode(mode) if mode is not None else self.policy.mode
        self.store = store if isinstance(store, AuditStore) else AuditStore(store, timeout=store_timeout)
        self.approver = approver
        self.behaviour = Behaviour(self.policy, self.store)  # sequence rules and baselines
        self.gaps = Gaps()  # monitor mode: what the store failed to record, until it is back
        self._states: OrderedDict[str, SessionState] = OrderedDict()
        self._lock = threading.Lock()
        if telemetry is True:
            from .telemetry import Telemetry

            telemetry = Telemetry()
        self.telemetry: Observer | None = telemetry or None
        self._telemetry_failed = False

    def _observed(self, report: Any, *args: Any, **kwargs: Any) -> None:
        """Tell telemetry about a finished decision. Its failure never reaches the decision:
        the first is logged, every one is dropped."""
        try:
            report(*args, **kwargs)
        except Exception:
            if not self._telemetry_failed:
                self._telemetry_failed = True
                log.warning("Tether's telemetry failed; what it could not export is dropped", exc_info=True)

    def session(
        self,
        agent: str,
        session_id: str | None = None,
        *,
        user: str | None = None,
        tenant: str | None = None,
        context: Mapping[str, str] | None = None,
        parent: str | None = None,
        scope: Any = None,
        planner: Planner | None = None,
    ) -> Session:
        """A handle for ``agent`` acting in session ``session_id`` (a new id when omitted).

        Several agents of one run share a session (and its taint) by passing the same id.
        ``context`` is what the framework knows about where the agent acts (crew, task, graph
        node...); it is recorded with each of this handle's events. ``parent`` is the id of the
        session that started this one (a sub-agent's run): the audit links the two.
        ``scope`` holds the session's risky calls to a task's tools (see :meth:`Session.set_scope`);
        ``planner`` makes one from the trusted request when it arrives (see :meth:`Session.plan`).
        """
        if not agent:
            raise TetherError("a session needs the name of the agent acting in it")
        session_id = session_id or _new_id()
        session = Session(self, self._state(session_id), agent, user, tenant, dict(context or {}), parent, planner)
        if scope is not None:
            session.set_scope(scope)
        return session

    def _state(self, session_id: str) -> SessionState:
        with self._lock:
            state = self._states.get(session_id)
            if state is None:
                state = SessionState(
                    session_id,
                    rate_window=self.policy.rate_window,
                    sequences=self.policy.sequences,
                    key=self.store.key,
                )
                self._states[session_id] = state
                if len(self._states) > _MAX_SESSIONS:
                    self._states.popitem(last=False)
            else:
                self._states.move_to_end(session_id)
            return state

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Session:
    """One agent in one session. Thread-safe: parallel tool calls of a session are serialised."""

    def __init__(
        self,
        guard: Guard,
        state: SessionState,
        agent: str,
        user: str | None,
        tenant: str | None,
        context: dict[str, str] | None = None,
        parent: str | None = None,
        planner: Planner | None = None,
    ) -> None:
        self.guard = guard
        self.planner = planner
        self.agent = agent
        self.user = user
        self._user_ref = user_ref(guard.store.key, user) if user else None  # what the audit stores
        self.tenant = tenant
        self.context = context or {}
        self.parent = parent if parent != state.id else None
        self._context_shown = preview(to_plain(self.context, "context"), guard.store.key).value if context else None
        self._state = state
        self._loaded = state.events > 0

    @property
    def id(self) -> str:
        return self._state.id

    @property
    def tainted(self) -> bool:
        """Whether untrusted content (an untrusted tool's output) has entered this session."""
        with self._state.lock:
            self._load()
            return bool(self._state.tainted_by)

    # -- tools -------------------------------------------------------------------------------

    def before_tool(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        call_id: str | None = None,
        caused_by: str | None = None,
        cautions: Sequence[Caution] = (),
    ) -> Decision:
        """Decide on a call, record the decision durably, and return it. Never raises for a
        decision: if Tether itself fails, the call is denied (unless in monitor mode).
        ``cautions`` are the caller's own findings about the call (see :mod:`tether.core.cautions`)."""
        call = ToolCall(self.agent, self.id, tool, args if args is not None else {}, call_id, caused_by)
        telemetry = self.guard.telemetry
        started = time.time_ns() if telemetry is not None else 0
        try:
            decision = self._before_tool(call, cautions)
        except StoreError as exc:  # the store is down: recording the failure would wait on it again
            decision = self._unaudited(call, exc)
        except Exception as exc:
            log.exception("Tether failed while deciding on %s", tool)
            decision = self._record_failure(call, f"Tether failed while deciding: {type(exc).__name__}: {exc}")
        if telemetry is not None:
            self.guard._observed(telemetry.tool_decision, self, decision, started)
        return decision

    def _before_tool(self, call: ToolCall, cautions: Sequence[Caution] = ()) -> Decision:
        for _ in range(_TRIES):
            try:
                return self._decide(call, cautions)
            except SessionMoved:  # another process acted in the session meanwhile: decide again on that
                continue
        raise _too_busy(self.id)

    def _decide(self, call: ToolCall, cautions: Sequence[Caution]) -> Decision:
        now = time.time()
        plain, ruling = self._readable(call.args)
        key, classifier = self.guard.store.key, self.guard.policy.classifier
        shown = preview(plain, key, classifier)  # needs no session state: outside the lock
        findings: list[str] = []
        extra: dict[str, Any] = {}
        with self._state.lock:
            self._load()
            # Once the session has read tool output, an argument may have come from it: the values'
            # fingerprints are recorded so a replay can trace what the preview masks or cuts.
            arg_values = fingerprints(key, argument_values(plain)) if plain and self._state.outputs else None
            if ruling is None:
                ruling, findings, extra = self._rule_on(call.tool, plain, now, shown.labels, arg_values)
            if cautions:
                ruling, cautioned = apply_cautions(ruling, cautions)
                findings = cautioned + findings
            decision = self._decision(call, ruling, findings)
            details = {
                "call_id": call.call_id,
                "args": shown.value,
                "args_fp": shown.fingerprint,
                "labels": sorted(shown.labels),
                "arg_values": sorted(arg_values) if arg_values is not None else None,
                "rule_ids": list(ruling.rule_ids),
                "reason": ruling.reason,
                "enforcement": decision.enforcement.value,
                "allowed": decision.allowed,
                "redacted": list(ruling.redact),
                "error": ruling.error,
                "findings": findings or None,
                **extra,
            }
            event = self._event(
                Kind.TOOL_DECISION,
                now,
                tool=call.tool,
                parent=call.caused_by,
                verdict=ruling.verdict.value,
                event_id=decision.event_id,
                details=details,
            )
            try:
                self._write(event, decided=True)
            except SessionMoved:
                raise
            except StoreError as exc:
                return self._unaudited(decision.call, exc)
            self._state.observe(event, details)
            if decision.allowed:
                self._state.record_call(self.agent, call.tool, now)
        if ruling.error:
            log.error("Tether denied %s to stay safe: %s", call.tool, ruling.error)
        return decision

    def _rule_on(
        self,
        tool: str,
        plain: dict[str, Plain],
        now: float,
        labels: frozenset[str],
        arg_values: Mapping[str, str] | None = None,
    ) -> tuple[Ruling, list[str], dict[str, Any]]:
        self._plan_if_pending()
        guard = self.guard
        return rule_on(
            guard.policy,
            guard.behaviour,
            self._state,
            self.agent,
            tool,
            plain,
            labels,
            now,
            user=self.user,
            tenant=self.tenant,
            arg_values=arg_values,
        )

    # -- scopes ------------------------------------------------------------------------------

    def set_scope(self, scope: Any, *, origin: str = "application") -> scopes.Scope:
        """Hold this session's risky calls to a task's scope: the risky tools the task may use,
        each with an optional CEL condition on its arguments, e.g.
        ``{"task": "pay the rent", "tools": {"send_money": "request.given.recipient"}}``.

        A scope only narrows the policy. It is checked against it first: an unknown tool, a tool
        the agent is not granted, or a condition that does not compile raises
        :class:`~tether.core.scopes.ScopeError`. A scope set after untrusted content entered the
        session is refused (or, if the policy's ``scopes.late`` says ``flag``, flagged on each
        decision). Either outcome is recorded in the audit."""
        try:
            built = scopes.build(scope, self.guard.policy, self.agent, origin)
        except scopes.ScopeError as exc:
            self._record_scope({"origin": origin, "error": str(exc)}, Verdict.DENY)
            raise
        with self._state.lock:
            self._load()
            # a planner saw only the trusted request, so its scope is sound however late it comes
            sources = sorted(set(self._state.tainted_by)) if origin == "application" else []
            if sources:
                if self.guard.policy.policy.scopes.late == "refuse":
                    why = f"a scope must be set before untrusted content arrives (already read: {', '.join(sources)})"
                    self._record_scope({**built.record(), "error": why}, Verdict.DENY)
                    raise scopes.ScopeError([why])
                built = dataclasses.replace(built, late=True)
            self._record_scope(built.record(), Verdict.ALLOW)
            self._state.scope = built
        return built

    @property
    def scope(self) -> scopes.Scope | None:
        with self._state.lock:
            self._load()
            scope: scopes.Scope | None = self._state.scope
            return scope

    def plan(self, request: str | None = None) -> scopes.Scope:
        """Ask the session's planner for a scope, from ``request`` or the trusted request so far.

        The planner sees only trusted content: the request, the agent's purpose and its granted
        tools. If it fails (an error, malformed or widening output, no answer in the policy's
        ``scopes.planner_timeout``), the policy's ``scopes.planner_failure`` decides: run without
        a scope (each risky call carries the finding) or deny the session's risky calls."""
        if self.planner is None:
            raise TetherError("this session has no planner")
        with self._state.lock:
            self._load()
            text = request if request is not None else self._state.request.text
        policy = self.guard.policy
        origin = f"planner:{getattr(self.planner, 'name', type(self.planner).__name__)}"
        try:
            spec = plan_scope(self.planner, text, policy, self.agent)
            return self.set_scope(spec, origin=origin)
        except (PlanningFailed, scopes.ScopeError) as exc:
            closed = policy.policy.scopes.planner_failure == "deny"
            log.warning("Tether's planner gave no scope for session %s: %s", self.id, exc)
            fallback = scopes.failed(f"the planner failed: {exc}", origin, closed=closed)
            with self._state.lock:
                self._record_scope(fallback.record(), Verdict.DENY if closed else Verdict.ALLOW)
                self._state.scope = fallback
            return fallback

    def _plan_if_pending(self) -> None:
        """Run the planner once, before the session's first risky decision at the latest."""
        if self.planner is not None and self._state.scope is None:
            self.plan()

    def _record_scope(self, details: dict[str, Any], verdict: Verdict) -> None:
        with self._state.lock:
            self._load()
            event = self._event(Kind.SCOPE, time.time(), verdict=verdict.value, details=details)
            self._write(event)

    def _readable(self, args: Mapping[str, Any]) -> tuple[dict[str, Plain], Ruling | None]:
        """Arguments as plain data, or a denial saying why Tether cannot read them."""
        try:
            plain = to_plain(args, "args")
        except UnsupportedValueError as exc:
            why = mask(str(exc), self.guard.store.key, self.guard.policy.classifier)  # it names keys
            return {}, Ruling(Verdict.DENY, f"{why} (denied: unreadable arguments)", (ERROR_RULE,), error=why)
        if not isinstance(plain, dict):
            message = f"arguments must be a mapping of names to values, not {type(args).__name__}"
            return {}, Ruling(Verdict.DENY, message, (ERROR_RULE,), error=message)
        return plain, None

    def _decision(self, call: ToolCall, ruling: Ruling, findings: Sequence[str] = ()) -> Decision:
        monitored = self.guard.mode is Mode.MONITOR
        args = call.args
        if ruling.redact and ruling.verdict in (Verdict.REDACT, Verdict.ASK) and not monitored:
            args = redact_args(call.args, ruling.redact)  # an approved call is redacted all the same
        return Decision(
            call,
            ruling.verdict,
            ruling.reason,
            ruling.rule_ids,
            args,
            Enforcement.MONITORED if monitored else Enforcement.ENFORCED,
            ruling.error,
            _new_id(),
            self.guard.policy.approval_timeout,
            approvers=ruling.approvers,
            for_session=ruling.for_session,
            findings=tuple(findings),
        )

    def _failed(self, call: ToolCall, message: str) -> Decision:
        monitored = self.guard.mode is Mode.MONITOR
        return Decision(
            call,
            Verdict.DENY,
            message + ("" if monitored else " (denied to stay safe)"),
            (ERROR_RULE,),
            call.args,
            Enforcement.MONITORED if monitored else Enforcement.ENFORCED,
            message,
        )

    def _record_failure(self, call: ToolCall, message: str) -> Decision:
        """Deny after an internal failure, and record that in the audit if the store still works."""
        decision = self._failed(call, message)
        try:
            with self._state.lock:
                self._load()
                event = self._event(
                    Kind.TOOL_DECISION,
                    time.time(),
                    tool=call.tool,
                    parent=call.caused_by,
                    verdict=Verdict.DENY.value,
                    details={
                        "call_id": call.call_id,
                        "reason": decision.reason,
                        "rule_ids": [ERROR_RULE],
                        "allowed": decision.allowed,
                        "enforcement": decision.enforcement.value,
                        "error": message,
                    },
                )
                self._write(event)
                self._state.observe(event)
        except Exception:
            log.exception("Tether could not audit its own failure")
        return decision

    def _unaudited(self, call: ToolCall, exc: StoreError) -> Decision:
        """The store failed while deciding or recording: deny, since an unaudited action must not run."""
        log.error("Tether could not audit the decision on %s: %s", call.tool, exc)
        return self._failed(call, f"audit store unavailable: {exc}")

    def resolve(self, decision: Decision, *, approver: Approver | None = None) -> Decision:
        """Settle a decision that needs approval by asking ``approver`` (default: the guard's).

        Returns the final decision: allowed with the approved (possibly edited and re-checked)
        arguments, or denied with the reason (refused, timed out, no approver, edits rejected).
        Decisions that need no approval are returned unchanged.
        """
        if not decision.needs_approval:
            return decision
        approver = approver or self.guard.approver
        plain = self._readable(decision.args)[0]
        key = self.guard.store.key
        with self._state.lock:
            self._load()
            provenance = tuple({"tool": t, "event_id": e} for t, e in self._state.untrusted_sources())
            labels = tuple(sorted(self._state.labels))
        request = ApprovalRequest(
            decision.event_id,
            self.agent,
            self.id,
            self._user_ref,
            self.tenant,
            decision.call.tool,
            preview(plain, key).value,
            decision.reason,
            decision.rule_ids,
            decision.approval_timeout or self.guard.policy.approval_timeout,
            call_key=fingerprint(key, canonical_json([self.id, self.agent, decision.call.tool, plain]).encode()),
            labels=labels,
            provenance=provenance,
            approvers=decision.approvers,
            for_session=decision.for_session,
            findings=decision.findings,
            args=plain,
        )
        answer: ApprovalAnswer | None = None
        why = f"no approval within {request.timeout:g}s"
        if approver is None:
            why = "approval required but no approver is configured"
        else:
            try:
                answer = approver.request_approval(request)
            except Unanswered as exc:
                why = str(exc)
            except Exception as exc:
                log.exception("approver failed")
                why = f"the approver failed: {type(exc).__name__}: {exc}"
        return self.settle(decision, answer, unanswered=why)

    def settle(self, decision: Decision, answer: ApprovalAnswer | None, *, unanswered: str = "no answer") -> Decision:
        """Settle a decision that needs approval with an answer obtained elsewhere, such as a
        framework's own pause and resume. ``None`` (no answer) denies, saying ``unanswered``.
        The answer is recorded in the audit; edited arguments are decided again."""
        if not decision.needs_approval:
            return decision
        try:
            late = self._expired(decision) if answer is not None else None
            return self._settle(decision, None if late else answer, late or unanswered)
        except Exception as exc:
            log.exception("Tether failed while settling an approval for %s", decision.call.tool)
            return self._failed(decision.call, f"Tether failed while settling the approval: {exc}")

    def _expired(self, decision: Decision) -> str | None:
        """Why an answer to ``decision`` comes too late, if it does: unanswered within the policy's
        approval timeout means denied, however the answer arrives (a framework's pause may be
        resumed days later, in another process)."""
        timeout = decision.approval_timeout or self.guard.policy.approval_timeout
        asked = next(
            (e.ts_us / 1e6 for e in self.guard.store.session_events(self.id) if e.event_id == decision.event_id),
            None,
        )
        if asked is None:
            return "the decision that asked for approval is not in this session's audit"
        late = time.time() - (asked + timeout)
        if late > 0:
            return f"the answer came {late:.1f}s after the approval request expired (timeout {timeout:g}s)"
        return None

    def _settle(self, decision: Decision, answer: ApprovalAnswer | None, why: str) -> Decision:
        now = time.time()
        call = decision.call
        args, verdict, reason, rule_ids = decision.args, Verdict.DENY, why, decision.rule_ids
        edited: Preview | None = None
        with self._state.lock:
            self._load()
            comment = mask(clean_str(answer.comment), self.guard.store.key) if answer and answer.comment else ""
            if answer is not None and not answer.approved:
                reason = f"denied by {answer.approver}" + (f": {comment!s}" if comment else "")
            elif answer is not None:
                verdict, reason = Verdict.ALLOW, f"approved by {answer.approver}"
                if answer.args is not None:
                    plain, unreadable = self._readable(answer.args)
                    edited = preview(plain, self.guard.store.key, self.guard.policy.classifier)
                    recheck = unreadable or self._rule_on(call.tool, plain, now, edited.labels)[0]
                    if recheck.verdict is Verdict.DENY:
                        verdict, reason = Verdict.DENY, f"edited arguments rejected: {recheck.reason}"
                        rule_ids = recheck.rule_ids
                    else:
                        args = redact_args(answer.args, recheck.redact) if recheck.redact else answer.args
            details: dict[str, Any] = {
                "call_id": call.call_id,
                "approved": answer.approved if answer else None,
                "approver": answer.approver if answer else None,
                "comment": comment or None,
                "reason": reason,
                "rule_ids": list(rule_ids),
                "scope": answer.scope if answer and answer.approved else None,
                "edited_args": edited.value if edited else None,
                "edited_args_fp": edited.fingerprint if edited else None,
            }
            event = self._event(
                Kind.APPROVAL, now, tool=call.tool, parent=decision.event_id, verdict=verdict.value, details=details
            )
            final = Decision(
                call,
                verdict,
                reason,
                rule_ids,
                args,
                decision.enforcement,
                None,
                event.event_id,
                decision.approval_timeout,
                answer.approver if answer and answer.approved else None,
            )
            try:
                self._write(event)
            except StoreError as exc:
                return self._unaudited(final.call, exc)
            self._state.observe(event, details)
            if final.allowed:
                self._state.record_call(self.agent, call.tool, now)
        return final

    def record_answer(self, decision: Decision, answer: ApprovalAnswer, *, asked_by: str) -> str:
        """Record a person's answer to a question a framework put to them about a call Tether had
        allowed (the framework's own approval step, ``asked_by``), under that call's decision, so
        the audit says who let it run or stopped it. Returns the event id."""
        key = self.guard.store.key
        details = {
            "call_id": decision.call.call_id,
            "approval_id": None,
            "approved": answer.approved,
            "approver": answer.approver,
            "comment": mask(clean_str(answer.comment), key) if answer.comment else None,
            "asked_by": asked_by,
        }
        verdict = Verdict.ALLOW if answer.approved else Verdict.DENY
        with self._state.lock:
            self._load()
            event = self._event(
                Kind.APPROVAL_ANSWER,
                time.time(),
                tool=decision.call.tool,
                parent=decision.event_id,
                verdict=verdict.value,
                details=details,
            )
            self._write(event)
        return event.event_id

    def after_tool(self, decision: Decision, output: Any = None, *, error: BaseException | str | None = None) -> Any:
        """Record what a tool returned (or the error it raised) and return what the agent may see:
        the output itself, or a copy with data it may not receive redacted, or a notice that the
        output was withheld. Raises :class:`StoreError` if the result cannot be recorded.
        """
        now = time.time()
        tool = self.guard.policy.policy.tools.get(decision.call.tool)
        untrusted = tool is None or tool.output is Trust.UNTRUSTED
        key = self.guard.store.key
        plain = _plain_or_text(output, "output")
        values = sorted(fingerprints(key, content_values(plain)))
        instructions = untrusted and reads_like_instructions(plain)
        held = self._held(plain)
        output, plain = _apply(held, output, plain, key, self.guard.policy.classifier, self.guard.mode)
        shown = preview(plain, key, self.guard.policy.classifier)
        details = {
            "call_id": decision.call.call_id,
            "output": shown.value,
            "output_fp": shown.fingerprint,
            "labels": sorted(shown.labels),
            "untrusted": untrusted,
            "error": _shown(str(error), "error", key).value if error is not None else None,
            "values": values,
            "instructions": instructions or None,
            "held": [f"{h.rule_id}: {h.reason} ({h.verdict.value})" for h in held] or None,
        }
        with self._state.lock:
            self._load()
            event = self._event(
                Kind.TOOL_RESULT, now, tool=decision.call.tool, parent=decision.event_id, details=details
            )
            self._write(event)
            self._state.observe(event, details)
            self._state.outputs += 1
            source = (decision.call.tool, event.event_id)
            if untrusted:
                self._state.record_untrusted(*source)
            self._state.record_values(values, source if untrusted else None)
            if instructions:
                self._state.instructions.append(source)
            self._state.labels.update(shown.labels)
        return output

    def trusted_input(self, content: Any, *, source: str = "user") -> str:
        """Record content the agent was given by someone it serves (the user's request, the
        system prompt): values in it are trusted, so an action may use them. Returns the event id."""
        plain = _plain_or_text(content, "input")
        values = sorted(fingerprints(self.guard.store.key, content_values(plain)))
        shown = preview(plain, self.guard.store.key, self.guard.policy.classifier)
        given = self._state.request.fingerprint_values(plain)
        details = {
            "source": source,
            "content": shown.value,
            "labels": sorted(shown.labels),
            "values": values,
            "given": given,
        }
        with self._state.lock:
            self._load()
            event = self._event(Kind.INPUT, time.time(), details=details)
            self._write(event)
            self._state.record_values(values, None)
            self._state.request.add(as_request_text(plain), given)
            self._state.labels.update(shown.labels)
            if self._state.request.truncated:
                log.warning("session %s: the request is longer than conditions are shown; its start is kept", self.id)
        self._plan_if_ready()
        return event.event_id

    def _plan_if_ready(self) -> None:
        """A planner plans from the first trusted request, while nothing untrusted has been read."""
        with self._state.lock:
            ready = self.planner is not None and self._state.scope is None and not self._state.tainted_by
        if ready:
            self.plan()

    def _held(self, plain: Plain) -> list[Held]:
        """What the policy's protections hold back from content on its way to this agent."""
        policy = self.guard.policy
        agent = policy.policy.agents.get(self.agent)
        clearance = frozenset(agent.data) if agent is not None and agent.data is not None else None
        protections = policy.policy.protections
        tenant = self.tenant or ""
        # A session without a tenant is its own boundary: tenantless sessions must not share values.
        by_tenant = protections.isolation == "tenant" and bool(tenant)

        def others(sensitive: dict[str, str]) -> dict[str, tuple[str, str]]:
            try:
                return self.guard.store.seen_elsewhere(sensitive, self.id, tenant, by_tenant=by_tenant)
            except StoreError as exc:
                if self.guard.mode is not Mode.MONITOR:
                    raise
                log.error("cannot check other sessions' values (%s): monitor mode goes on", exc)
                return {}

        check_others = None if protections.cross_session == "allow" else others
        texts = strings(plain, keys=True)
        return held_back(policy.classifier, clearance, texts, check_others, protections, self.guard.store.key)

    # -- models ------------------------------------------------------------------------------

    def before_model(self, messages: Any, *, model: str | None = None, parent: str | None = None) -> ModelRequest:
        """Record a model request. Send the model ``result.messages`` only if ``result.allowed``:
        protections may rewrite plain-data messages (redacting what the agent may not see) or
        withhold them. The user's and system messages are trusted input for provenance."""
        telemetry = self.guard.telemetry
        started = time.time_ns() if telemetry is not None else 0
        key = self.guard.store.key
        parts = list(trusted_parts(messages))
        trusted = sorted(fingerprints(key, content_values(parts)))
        text = as_request_text(_plain_or_text(parts, "messages"))
        request = self._state.request
        given = request.fingerprint_values(text) if request.is_new(text) else []
        plain = _plain_or_text(messages, "messages")
        held = self._held(plain)
        sent, plain = _apply(held, messages, plain, key, self.guard.policy.classifier, self.guard.mode)
        details: dict[str, Any] = {"model": model, "values": trusted, "held": [h.reason for h in held] or None}
        if given:
            details["given"] = given
        shown = preview(plain, key)  # already plain data: converted once
        event_id = self._record_model(Kind.MODEL_REQUEST, parent, details, "messages", plain, shown)
        with self._state.lock:
            self._state.record_values(trusted, None)
            request.add(text, given)
        self._plan_if_ready()
        withheld = next((h for h in held if h.verdict is Verdict.DENY), None)
        if withheld is not None and self.guard.mode is not Mode.MONITOR:
            result = ModelRequest(event_id, messages, allowed=False, reason=f"{withheld.rule_id}: {withheld.reason}")
        else:
            result = ModelRequest(event_id, sent)
        if telemetry is not None:
            rule_ids = list(dict.fromkeys(h.rule_id for h in held))
            self.guard._observed(telemetry.model_request, self, result, started, rule_ids=rule_ids, modified=bool(held))
        return result

    def after_model(
        self, response: Any, *, tool_calls: Sequence[Mapping[str, Any]] = (), parent: str | None = None
    ) -> str:
        """Record a model response and the tool calls it proposes (``{"id", "name"}`` each);
        ``parent`` is the request's ``event_id``. Returns the response's event id: pass it as
        ``caused_by`` to :meth:`before_tool` to link each call to the response that proposed it.
        """
        proposed = [{"id": c.get("id"), "name": c.get("name")} for c in tool_calls]
        return self._record_model(Kind.MODEL_RESPONSE, parent, {"tool_calls": proposed}, "response", response)

    def _record_model(
        self,
        kind: str,
        parent: str | None,
        details: dict[str, Any],
        name: str,
        content: Any,
        shown: Preview | None = None,
    ) -> str:
        shown = shown if shown is not None else _shown(content, name, self.guard.store.key)
        details.update({name: shown.value, f"{name}_fp": shown.fingerprint, "labels": sorted(shown.labels)})
        with self._state.lock:
            self._load()
            event = self._event(kind, time.time(), parent=parent, details=details)
            self._write(event)
            self._state.labels.update(shown.labels)
        return event.event_id

    # -- async -------------------------------------------------------------------------------
    # The same operations for event loops: each runs in a worker thread, so an audit write or a
    # wait for approval never blocks the loop (and concurrent sessions share commits).

    async def abefore_tool(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        call_id: str | None = None,
        caused_by: str | None = None,
        cautions: Sequence[Caution] = (),
    ) -> Decision:
        return await asyncio.to_thread(
            self.before_tool, tool, args, call_id=call_id, caused_by=caused_by, cautions=cautions
        )

    async def aresolve(self, decision: Decision, *, approver: Approver | None = None) -> Decision:
        if not decision.needs_approval:
            return decision
        return await asyncio.to_thread(self.resolve, decision, approver=approver)

    async def asettle(
        self, decision: Decision, answer: ApprovalAnswer | None, *, unanswered: str = "no answer"
    ) -> Decision:
        return await asyncio.to_thread(self.settle, decision, answer, unanswered=unanswered)

    async def arecord_answer(self, decision: Decision, answer: ApprovalAnswer, *, asked_by: str) -> str:
        return await asyncio.to_thread(self.record_answer, decision, answer, asked_by=asked_by)

    async def aafter_tool(
        self, decision: Decision, output: Any = None, *, error: BaseException | str | None = None
    ) -> Any:
        return await asyncio.to_thread(self.after_tool, decision, output, error=error)

    async def abefore_model(
        self, messages: Any, *, model: str | None = None, parent: str | None = None
    ) -> ModelRequest:
        return await asyncio.to_thread(self.before_model, messages, model=model, parent=parent)

    async def aafter_model(
        self, response: Any, *, tool_calls: Sequence[Mapping[str, Any]] = (), parent: str | None = None
    ) -> str:
        return await asyncio.to_thread(self.after_model, response, tool_calls=tool_calls, parent=parent)

    # -- audit plumbing ----------------------------------------------------------------------

    def _load(self) -> None:
        """Rebuild the session from the audit the first time this process touches it."""
        if not self._loaded:
            if self._state.events == 0:
                self._catch_up()
            self._loaded = True

    def _catch_up(self) -> None:
        """Take in the session's events this process has not seen: all of them for a session it
        has not touched yet, or what other processes sharing the store wrote since."""
        state = self._state
        scope_event = state.scope_event
        try:
            missed = self.guard.store.session_events(self.id, after_seq=state.seq)
        except StoreError as exc:
            if self.guard.mode is not Mode.MONITOR:
                raise
            log.error("session %s: cannot read its events (%s): monitor mode goes on with what it knows", self.id, exc)
            return
        state.replay(missed)
        recorded = state.scope_event
        if recorded is not None and recorded is not scope_event and recorded.get("error") is None:
            state.scope = scopes.rebuild(recorded, self.guard.policy, self.agent)

    def _event(
        self,
        kind: str,
        now: float,
        *,
        tool: str | None = None,
        parent: str | None = None,
        verdict: str | None = None,
        details: dict[str, Any],
        event_id: str | None = None,
    ) -> NewEvent:
        if self._context_shown is not None:
            details = {**details, "context": self._context_shown}
        return NewEvent(
            event_id or _new_id(),
            int(now * 1_000_000),
            self.id,
            kind,
            self.agent,
            self._user_ref,
            self.tenant,
            tool,
            parent,
            verdict,
            canonical_json(details),
        )

    def _write(self, event: NewEvent, *, decided: bool = False) -> None:
        """Append ``event`` to the session, on top of the newest event this process knows of.
        If another process wrote to the session since, this process first reads what that one
        wrote; then a decision (``decided``) raises :class:`SessionMoved` to be made again on
        what is now known (so limits and taint hold exactly across processes), and any other
        event (a fact, whatever the state) is written again."""
        for _ in range(_TRIES):
            batch = [event]
            if self._state.events == 0:
                batch.insert(0, self._start_event(event.ts_us / 1e6))
            gap = self.guard.gaps.take()
            if gap is not None:
                batch.insert(-1, self._event(Kind.GAP, event.ts_us / 1e6, details=gap.details()))
            try:
                seqs = self.guard.store.append(batch, expect=(self.id, self._state.seq))
            except ConditionFailed:
                if gap is not None:
                    self.guard.gaps.restore(gap)
                self._back_off()
                self._catch_up()
                if decided:
                    raise SessionMoved(self.id) from None
                continue
            except StoreError as exc:
                if gap is not None:
                    self.guard.gaps.restore(gap)
                if self.guard.mode is not Mode.MONITOR:
                    raise
                self.guard.gaps.missed(event.ts_us, str(exc))  # monitor mode never breaks the agent
                return
            if gap is not None:
                Gaps.recorded(gap)
            self._state.conflicts = 0
            self._state.events += len(batch)
            self._state.seq = max((s for s in seqs if s is not None), default=self._state.seq)
            return
        raise _too_busy(self.id)

    def _back_off(self) -> None:
        """Wait a little, longer after each write lost to another process in a row, so that
        processes racing on one session take turns instead of all retrying at once."""
        self._state.conflicts += 1
        time.sleep(random.uniform(0, min(0.05, 0.002 * self._state.conflicts)))

    def _start_event(self, now: float) -> NewEvent:
        guard = self.guard
        details = {"mode": guard.mode.value, "policy": guard.policy.digest}
        if self.parent:
            details["parent_session"] = self.parent
        return self._event(Kind.SESSION, now, details=details)


_TRIES = 20  # writes racing other processes on one session, before the call is denied


class SessionMoved(StoreError):
    """Another process wrote to the session after this one decided: decide again."""


def _too_busy(session_id: str) -> StoreError:
    return StoreError(
        f"other processes wrote to session {session_id} before each of {_TRIES} tries to record "
        "this call: they write to it faster than this one can decide"
    )


def _plain_or_text(value: Any, name: str) -> Plain:
    try:
        return to_plain(value, name)
    except UnsupportedValueError:  # not plain data, or nested too deep: recorded (and scanned) as text
        return as_text(value)


def _apply(
    held: list[Held], original: Any, plain: Plain, key: bytes, classifier: Classifier, mode: Mode
) -> tuple[Any, Plain]:
    """The content an agent receives once ``held`` is applied (unchanged in monitor mode), as the
    object to hand on and as plain data for the audit. Content that is not plain data (framework
    message objects) cannot be rewritten faithfully, so it is withheld rather than redacted."""
    if not held or mode is Mode.MONITOR:
        return original, plain
    withheld = next((h for h in held if h.verdict is Verdict.DENY), None)
    if withheld is None and type(original) not in (str, dict, list):
        withheld = Held(Verdict.DENY, held[0].rule_id, held[0].reason + " (cannot be redacted in place)", frozenset())
    if withheld is not None:
        notice = f"[withheld by Tether ({withheld.rule_id}): {withheld.reason}]"
        return notice, notice
    spans = frozenset().union(*(h.spans for h in held))
    rewritten = mask_values(plain, spans, key, classifier)
    return rewritten, rewritten


def _shown(value: Any, name: str, key: bytes) -> Preview:
    """A storable preview of anything a tool or model produced; what is not plain data is shown as text."""
    return preview(_plain_or_text(value, name), key)
