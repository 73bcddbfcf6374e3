"""What the conformance scenario does not cover on CrewAI: what the model receives (reused
executors, redaction), native tool-call responses, sessions and identity across kickoffs and
threads, sanitised tool names, and failures of the store on each path."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from crewai import Crew, Task

from tests.conformance.scenario import CUSTOMER_EMAIL, KEY, Call, ToolLog, make_guard, policy
from tether.core import AuditStore, Guard, TetherError
from tether.core.audit import verify
from tether.crewai import enable_step_guard

from .conftest import ScriptedLLM, agent_of, crew_of, decisions


def lookup(call_id: str = "c1", order: str = "42") -> Call:
    return Call(call_id, "lookup_order", {"order_id": order})


def requests(store: AuditStore) -> list[Any]:
    return [e for e in store.events() if e.kind == "model.request"]


def refuse(store: AuditStore, kinds: str = "") -> None:
    """Make the database refuse to record events (of the given kinds, or all): a store that is down."""
    when = f"WHEN NEW.kind IN ({kinds}) " if kinds else ""
    with store.engine.begin() as connection:
        connection.execute(
            sa.text(
                f"CREATE TRIGGER refuse BEFORE INSERT ON tether_audit_events {when}"
                "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
            )
        )


# -- what the model receives ----------------------------------------------------------------------


def test_a_reused_executors_next_prompt_is_recorded_and_screened(native: bool, scenario_store: AuditStore) -> None:
    """One agent, two tasks: CrewAI reuses the agent's executor, and the second prompt has as many
    messages as the first. It must be recorded as sent, and redacted before the model sees it."""
    llm = ScriptedLLM(native=native)
    agent = agent_of(llm, ToolLog())
    first = Task(description="Summarise order 42.", expected_output="x", agent=agent)
    second = Task(description=f"Write to {CUSTOMER_EMAIL} about it.", expected_output="x", agent=agent)
    crew = Crew(agents=[agent], tasks=[first, second], memory=False)
    enable_step_guard(crew, make_guard(scenario_store, data=[]))

    crew.kickoff()

    second_request = requests(scenario_store)[1]
    assert second_request.data not in ("[]", "") and "Write to" in second_request.data
    assert CUSTOMER_EMAIL not in second_request.data and "[email:" in second_request.data
    assert not llm.saw(CUSTOMER_EMAIL)  # what before_model returned is what was sent


def test_the_system_prompt_reaches_the_model_redacted(native: bool, scenario_store: AuditStore) -> None:
    llm = ScriptedLLM(native=native)
    crew = crew_of(llm, ToolLog(), backstory=f"You answer {CUSTOMER_EMAIL} only.")
    enable_step_guard(crew, make_guard(scenario_store, data=[]))
    crew.kickoff()
    assert llm.inputs and not llm.saw(CUSTOMER_EMAIL)


def test_a_native_tool_call_response_is_recorded_with_its_calls(scenario_store: AuditStore) -> None:
    crew = crew_of(ScriptedLLM([lookup("call_7")], native=True), ToolLog())
    enable_step_guard(crew, make_guard(scenario_store))
    crew.kickoff()
    (decision,) = decisions(scenario_store)
    response = next(e for e in scenario_store.events() if e.event_id == decision.parent_id)
    assert response.kind == "model.response"
    assert response.details["tool_calls"] == [{"id": "call_7", "name": "lookup_order"}]
    assert decision.details["call_id"] == "call_7"


def test_tool_names_are_crewais_sanitised_names(scenario_store: AuditStore) -> None:
    """``@tool("Search the internet")`` is ``search_the_internet`` to CrewAI and to the policy."""
    from crewai.tools import tool

    @tool("Search the internet")
    def search(query: str) -> str:
        """Search the web."""
        return f"results for {query}"

    llm = ScriptedLLM([Call("c1", "search_the_internet", {"query": "acme"})], native=True)
    agent = agent_of(llm, ToolLog())
    agent.tools = [search]
    crew = Crew(agents=[agent], tasks=[Task(description="look", expected_output="x", agent=agent)])
    spec = policy(tools={"search_the_internet": "allow"})
    spec["tools"]["search_the_internet"] = {"effects": ["read"]}
    enable_step_guard(crew, Guard(spec, store=scenario_store))
    crew.kickoff()
    assert [(d.tool, d.verdict) for d in decisions(scenario_store)] == [("search_the_internet", "allow")]
    assert llm.saw("results for acme")


# -- sessions and identity ----------------------------------------------------------------------


def test_each_kickoff_is_a_session_and_one_kickoffs_data_is_withheld_from_another(scenario_store: AuditStore) -> None:
    read = Call("c1", "read_ticket", {"ticket_id": "7"})
    llm = ScriptedLLM([read], [], [read])
    crew = crew_of(llm, ToolLog())
    enable_step_guard(crew, make_guard(scenario_store))

    crew.kickoff()  # the ticket's card number and email are seen in this kickoff's session
    crew.kickoff()  # and turn up again in the next one, which is another session of no tenant

    results = [e for e in scenario_store.events() if e.kind == "tool.result"]
    assert len({r.session_id for r in results}) == 2
    assert results[0].details.get("held") is None and "tether.cross-session" in results[1].details["held"][0]


def test_user_and_tenant_are_fixed_or_read_from_each_runs_inputs(scenario_store: AuditStore) -> None:
    llm = ScriptedLLM(respond=lambda messages, tools: [] if "shipped" in json.dumps(messages) else [lookup()])
    crew = crew_of(llm, ToolLog(), request="Help {customer} with order 42.")
    enable_step_guard(crew, make_guard(scenario_store), user=lambda inputs: inputs["customer"], tenant="acme")

    crew.kickoff_for_each(inputs=[{"customer": "alice"}, {"customer": "bob"}])

    made = decisions(scenario_store)
    assert {d.tenant for d in made} == {"acme"} and None not in {d.user_id for d in made}
    assert len({d.user_id for d in made}) == 2 and len({d.session_id for d in made}) == 2  # alice's, bob's


def test_a_user_that_cannot_be_read_stops_the_run(scenario_store: AuditStore) -> None:
    log = ToolLog()
    crew = crew_of(ScriptedLLM([lookup()]), log)
    enable_step_guard(crew, make_guard(scenario_store), user=lambda inputs: inputs["customer"])
    with pytest.raises(TetherError, match="could not read the run's user"):
        crew.kickoff(inputs={})
    assert log.calls == []


def test_crews_kicked_off_from_several_threads_lose_nothing(scenario_store: AuditStore) -> None:
    log = ToolLog()
    guard = make_guard(scenario_store)
    crews = [crew_of(ScriptedLLM([lookup(order=str(i))]), log) for i in range(4)]
    for crew in crews:
        enable_step_guard(crew, guard)
    threads = [threading.Thread(target=crew.kickoff) for crew in crews]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    made = decisions(scenario_store)
    assert sorted(d.details["args"]["order_id"] for d in made) == ["0", "1", "2", "3"]
    assert len({d.session_id for d in made}) == 4
    assert len(log.calls) == 4 and verify(KEY, scenario_store.events()).ok


def test_enabling_twice(scenario_store: AuditStore) -> None:
    crew = crew_of(ScriptedLLM([lookup()]), ToolLog())
    guard = make_guard(scenario_store)
    assert enable_step_guard(crew, guard) is enable_step_guard(crew, guard)
    with pytest.raises(TetherError, match="already guarded"):
        enable_step_guard(crew, make_guard(scenario_store))
    crew.kickoff()
    assert len(decisions(scenario_store)) == 1


def test_only_crews_agents_and_flows_can_be_guarded(scenario_store: AuditStore) -> None:
    with pytest.raises(TetherError, match="takes a Crew, an Agent or a Flow"):
        enable_step_guard(object(), make_guard(scenario_store))


def test_an_agent_delegating_over_a2a_is_refused(scenario_store: AuditStore) -> None:
    agent = agent_of(ScriptedLLM(), ToolLog())
    remote = agent.model_copy(update={"a2a": ["https://agents.example/a2a"]})  # as a2a= sets it
    with pytest.raises(TetherError, match="over A2A"):
        enable_step_guard(remote, make_guard(scenario_store))


# -- failures of the store, on each path ---------------------------------------------------------


def test_a_store_that_refuses_decisions_refuses_the_call_and_the_crew_goes_on(
    native: bool, scenario_store: AuditStore
) -> None:
    refuse(scenario_store, "'tool.decision'")
    log = ToolLog()
    llm = ScriptedLLM([lookup()], native=native)
    crew = crew_of(llm, log)
    enable_step_guard(crew, make_guard(scenario_store))

    crew.kickoff()  # the model calls still record; the tool's decision cannot

    assert log.calls == []
    assert llm.saw("Tether denied the call to 'lookup_order': audit store unavailable")


def test_a_store_that_refuses_results_withholds_the_output(native: bool, scenario_store: AuditStore) -> None:
    refuse(scenario_store, "'tool.result'")
    llm = ScriptedLLM([lookup()], native=native)
    crew = crew_of(llm, ToolLog())
    enable_step_guard(crew, make_guard(scenario_store))
    crew.kickoff()
    assert llm.saw("Tether could not record this output") and not llm.saw("order 42: shipped")


def test_a_store_that_is_down_stops_the_run_before_the_model_is_called(scenario_store: AuditStore) -> None:
    refuse(scenario_store)
    log = ToolLog()
    llm = ScriptedLLM([lookup()])
    crew = crew_of(llm, log)
    enable_step_guard(crew, make_guard(scenario_store))
    with pytest.raises(TetherError, match="could not record the model request"):
        crew.kickoff()
    assert llm.inputs == [] and log.calls == []


def test_monitor_mode_with_the_store_down_lets_everything_through(native: bool, scenario_store: AuditStore) -> None:
    refuse(scenario_store)
    log = ToolLog()
    llm = ScriptedLLM([lookup()], [Call("c2", "delete_account", {"user_id": "u1"})], native=native)
    crew = crew_of(llm, log)
    enable_step_guard(crew, make_guard(scenario_store, mode="monitor"))

    crew.kickoff()  # never raises into the agent, never blocks

    assert [name for name, _ in log.calls] == ["lookup_order", "delete_account"]
    assert llm.saw("order 42: shipped") and llm.saw("deleted u1")
    assert list(scenario_store.events()) == []
