"""The step guard on real crews: decisions, refusals the agent reads, approvals, delegation,
sessions per kickoff, redaction, failures."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from crewai import Agent, Crew, Process, Task

from tether.core import AuditStore, Guard, QueueApprover, TetherError
from tether.core.audit import verify
from tether.crewai import enable_step_guard

from ..support import answer_when_asked
from .conftest import DONE, KEY, POLICY, ScriptedLLM, Tools, act, crew_of, events


def test_allowed_call_runs_once_and_the_audit_holds_the_chain(guard: Guard, tools: Tools, store: AuditStore) -> None:
    crew = crew_of(tools, ScriptedLLM(act("lookup", query="order 7")))
    enable_step_guard(crew, guard)

    crew.kickoff()

    assert tools.ran == [("lookup", {"query": "order 7"})]
    decision, result = events(store, "tool.decision")[0], events(store, "tool.result")[0]
    response = next(e for e in events(store, "model.response") if e.event_id == decision.parent_id)
    assert (decision.agent, decision.tool, decision.verdict) == ("writer", "lookup", "allow")
    assert decision.details["context"]["task"] == "Handle the request"
    assert response.parent_id in {e.event_id for e in events(store, "model.request")}
    assert result.parent_id == decision.event_id
    assert verify(KEY, store.events()).ok


def test_denied_call_never_runs_and_the_agent_reads_why(guard: Guard, tools: Tools, store: AuditStore) -> None:
    llm = ScriptedLLM(act("post_update", channel="twitter", text="customer list"))
    crew = crew_of(tools, llm)
    enable_step_guard(crew, guard)

    crew.kickoff()

    assert tools.count("post_update") == 0
    assert llm.read_refusal("Tether denied the call to 'post_update': only internal channels")
    assert [e.verdict for e in events(store, "tool.decision")] == ["deny"]


@pytest.mark.parametrize("approved", [True, False])
def test_a_call_needing_approval_waits_for_a_person(store: AuditStore, tools: Tools, approved: bool) -> None:
    policy = json.loads(json.dumps(POLICY))
    policy["approvals"]["timeout"] = "60s"
    llm = ScriptedLLM(act("refund", order="A1", amount=120))
    crew = crew_of(tools, llm)
    enable_step_guard(crew, Guard(policy, store=store, approver=QueueApprover(store)))
    answering = answer_when_asked(store, approved=approved)

    crew.kickoff()
    answering.join()

    assert tools.count("refund") == (1 if approved else 0)
    assert "refunded 120 on A1" in llm.saw() if approved else llm.read_refusal("denied by alice")


def test_unanswered_approval_times_out_to_deny(store: AuditStore, tools: Tools) -> None:
    llm = ScriptedLLM(act("refund", order="A1", amount=120))
    crew = crew_of(tools, llm)
    enable_step_guard(crew, Guard(POLICY, store=store, approver=QueueApprover(store)))  # 1 s timeout

    crew.kickoff()

    assert tools.count("refund") == 0
    assert llm.read_refusal("no approval within 1s")


def test_delegation_is_a_governed_tool_call(guard: Guard, tools: Tools, store: AuditStore) -> None:
    writer_llm = ScriptedLLM(
        act("Delegate work to coworker", task="look up order 7", context="a customer asked", coworker="researcher")
    )
    researcher_llm = ScriptedLLM(act("lookup", query="order 7"))
    writer = Agent(role="writer", goal="g", backstory="b", llm=writer_llm, allow_delegation=True)
    researcher = Agent(role="researcher", goal="g", backstory="b", llm=researcher_llm, tools=tools.all)
    task = Task(description="Handle the request", expected_output="an answer", agent=writer)
    crew = Crew(agents=[writer, researcher], tasks=[task], memory=False)
    enable_step_guard(crew, guard)

    crew.kickoff()

    # the writer was not granted delegation: refused, and the researcher never worked
    decisions = [(e.agent, e.tool, e.verdict) for e in events(store, "tool.decision")]
    assert ("writer", "delegate_work_to_coworker", "deny") in decisions
    assert tools.ran == []
    assert writer_llm.read_refusal("Tether denied the call to 'delegate_work_to_coworker'")


def test_a_hierarchical_managers_delegation_is_governed(guard: Guard, tools: Tools, store: AuditStore) -> None:
    manager_llm = ScriptedLLM(
        act("Delegate work to coworker", task="look up order 7", context="customer asked", coworker="researcher")
    )
    researcher = Agent(role="researcher", goal="g", backstory="b", llm=ScriptedLLM(), tools=tools.all)
    task = Task(description="Handle the request", expected_output="an answer")
    crew = Crew(agents=[researcher], tasks=[task], process=Process.hierarchical, manager_llm=manager_llm, memory=False)
    enable_step_guard(crew, guard)

    crew.kickoff()

    decisions = [(e.agent, e.tool) for e in events(store, "tool.decision")]
    assert any(tool == "delegate_work_to_coworker" for _, tool in decisions)  # the manager's call was decided


def test_unguarded_crews_are_left_alone(guard: Guard, tools: Tools, store: AuditStore) -> None:
    enable_step_guard(crew_of(Tools(), ScriptedLLM()), guard)  # hooks are now installed process-wide
    other = crew_of(tools, ScriptedLLM(act("post_update", channel="twitter", text="hi")))

    other.kickoff()

    assert tools.count("post_update") == 1  # not ours to decide
    assert events(store, "tool.decision") == []


def test_enabling_twice(guard: Guard, tools: Tools, store: AuditStore) -> None:
    crew = crew_of(tools, ScriptedLLM(act("lookup", query="x")))
    assert enable_step_guard(crew, guard) is enable_step_guard(crew, guard)
    with pytest.raises(TetherError, match="already guarded"):
        enable_step_guard(crew, Guard(POLICY, store=store))
    crew.kickoff()
    assert len(events(store, "tool.decision")) == 1


def test_each_kickoff_is_a_session_sync_and_async(guard: Guard, tools: Tools, store: AuditStore) -> None:
    crew = crew_of(tools, ScriptedLLM(act("lookup", query="a"), DONE, act("lookup", query="b"), DONE))
    enable_step_guard(crew, guard)

    crew.kickoff()
    asyncio.run(crew.kickoff_async())

    sessions = [e.session_id for e in events(store, "tool.decision")]
    assert len(sessions) == 2 and len(set(sessions)) == 2


def test_output_outside_the_agents_clearance_is_redacted(store: AuditStore, tools: Tools) -> None:
    policy = json.loads(json.dumps(POLICY))
    policy["agents"]["writer"]["data"] = ["network"]
    llm = ScriptedLLM(act("fetch_page", url="https://shop.example"))
    crew = crew_of(tools, llm)
    enable_step_guard(crew, Guard(policy, store=store))

    crew.kickoff()

    assert tools.count("fetch_page") == 1
    assert "jane.roe@customer.example" not in llm.saw() and "[email:" in llm.saw()


def test_one_kickoffs_data_is_withheld_from_another(store: AuditStore, tools: Tools) -> None:
    policy = json.loads(json.dumps(POLICY))
    policy["protections"] = {"isolation": "session"}
    llm = ScriptedLLM(act("fetch_page", url="https://a.example"), DONE, act("fetch_page", url="https://b.example"))
    crew = crew_of(tools, llm)
    enable_step_guard(crew, Guard(policy, store=store))

    crew.kickoff()  # the page's email address is seen in this kickoff's session
    crew.kickoff()  # and turns up again in the next one

    held = [e.details.get("held") for e in events(store, "tool.result")]
    assert held[0] is None and "tether.cross-session" in held[1][0]


def test_a_broken_store_stops_the_tool(tmp_path: Path, tools: Tools) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'a.db'}", key=KEY)
    crew = crew_of(tools, ScriptedLLM(act("lookup", query="x")))
    enable_step_guard(crew, Guard(POLICY, store=store))
    store.engine.dispose()
    (tmp_path / "a.db").unlink()
    (tmp_path / "a.db").mkdir()  # every write now fails

    with pytest.raises(Exception):  # noqa: B017, PT011 - the model call cannot be recorded: the crew stops
        crew.kickoff()
    assert tools.ran == []


def test_crews_kicked_off_from_several_threads_lose_nothing(guard: Guard, store: AuditStore) -> None:
    tools = Tools()
    crews = [crew_of(tools, ScriptedLLM(act("lookup", query=str(i)))) for i in range(4)]
    for crew in crews:
        enable_step_guard(crew, guard)
    threads = [threading.Thread(target=crew.kickoff) for crew in crews]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    decisions = events(store, "tool.decision")
    assert sorted(e.details["args"]["query"] for e in decisions) == ["0", "1", "2", "3"]
    assert len({e.session_id for e in decisions}) == 4  # each kickoff its own session
    assert len(tools.ran) == 4 and verify(KEY, store.events()).ok
