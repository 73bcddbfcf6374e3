"""Every public way to run CrewAI work, and every multi-agent construct, either governed (a
denied call does not run, and is audited) or refused with a clear error.

The inventory below classifies each public method of CrewAI's run classes. A method a future
CrewAI release adds is unclassified, and the inventory test fails until someone decides what
it is and, for a run entry point, adds it to the governed ones."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from crewai import Agent, Crew, Process, Task
from crewai.flow.flow import Flow, start
from crewai.lite_agent import LiteAgent

from tests.conformance.scenario import AGENT, Call, ToolLog, make_guard, policy
from tether.core import AuditStore, Guard
from tether.crewai import FRAMEWORK_AGENT, enable_step_guard

from .conftest import ScriptedLLM, agent_of, crew_of, decisions

DELETE = Call("c1", "delete_account", {"user_id": "u1"})  # the scenario's policy always denies it

RUN = "run: opens the run's session (tested below)"
PER_INPUT = "runs a guarded copy per input, each its own session (tested below)"
COPIES = "runs copy().kickoff(): the copy keeps the step guard (copy tested below)"
DERIVES = "derives an object that keeps the step guard (tested below)"
THROUGH_KICKOFF = "runs the flow through kickoff / kickoff_async / handle_turn (checked in its source below)"
MODEL_ONLY = "one model call for a conversational flow's turn, no tools: recorded within the flow's run"
THROUGH_AGENT = "runs through Agent.execute_task, which opens the agent's frame (tested below)"
RESTORES = "restores from a checkpoint: keeps the step guard, or its runs are refused (test_checkpoints.py)"
FROM_PENDING = "rebuilds a flow awaiting human feedback from its persisted state: guard it, as any new flow"
NOT_A_RUN = "not a run: configuration, validation, builders, memory, knowledge, rendering"


def names(text: str) -> list[str]:
    return text.split()


INVENTORY: dict[type[Any], dict[str, str]] = {
    Crew: {
        **dict.fromkeys(["kickoff", "kickoff_async", "akickoff", "replay"], RUN),
        **dict.fromkeys(["kickoff_for_each", "kickoff_for_each_async", "akickoff_for_each"], PER_INPUT),
        **dict.fromkeys(["train", "test"], COPIES),
        "copy": DERIVES,
        **dict.fromkeys(["from_checkpoint", "fork"], RESTORES),
        **dict.fromkeys(
            names(
                """aquery_knowledge calculate_usage_metrics check_config check_config_type check_manager_llm
            coerce_skill_strings create_crew_knowledge create_crew_memory fetch_inputs query_knowledge
            reset_knowledge reset_memories set_private_attrs validate_async_tasks_not_async
            validate_async_task_cannot_include_sequential_async_tasks_in_context validate_context_no_future_tasks
            validate_end_with_at_most_one_async_task validate_first_task validate_must_have_non_conditional_task
            validate_tasks"""
            ),
            NOT_A_RUN,
        ),
    },
    Agent: {
        **dict.fromkeys(["execute_task", "aexecute_task", "kickoff", "kickoff_async", "akickoff", "message"], RUN),
        "copy": DERIVES,
        **dict.fromkeys(["from_checkpoint", "fork"], RESTORES),
        **dict.fromkeys(
            names(
                """coerce_skill_strings create_agent_executor get_code_execution_tools get_delegation_tools
            get_mcp_tools
            get_multimodal_tools get_output_converter get_platform_tools interpolate_inputs post_init_setup
            process_model_config reset_tool_failures resolve_memory set_cache_handler set_fingerprint set_knowledge
            set_private_attrs set_rpm_controller set_skills validate_and_set_attributes validate_apps
            validate_from_repository validate_mcps validate_tools"""
            ),
            NOT_A_RUN,
        ),
    },
    LiteAgent: {
        **dict.fromkeys(["kickoff", "kickoff_async", "akickoff"], RUN),
        **dict.fromkeys(
            names(
                """ensure_guardrail_is_callable parse_tools resolve_memory setup_a2a_support setup_llm
            validate_guardrail_function"""
            ),
            NOT_A_RUN,
        ),
    },
    Task: {
        **dict.fromkeys(["execute_sync", "execute_async", "aexecute_sync"], THROUGH_AGENT),
        **dict.fromkeys(
            names(
                """check_output check_tools ensure_guardrail_is_callable ensure_guardrails_is_list_of_callables
            handle_max_retries_deprecation increment_delegations increment_tools_errors
            interpolate_inputs_and_add_conversation_history output_file_validation process_model_config prompt
            set_attributes_based_on_config validate_guardrail_function validate_required_fields"""
            ),
            NOT_A_RUN,
        ),
    },
    Flow: {
        **dict.fromkeys(["kickoff", "kickoff_async", "akickoff", "resume", "resume_async"], RUN),
        **dict.fromkeys(["chat", "handle_turn", "stream_turn", "stream_events", "astream"], THROUGH_KICKOFF),
        "converse_turn": MODEL_ONLY,
        **dict.fromkeys(["from_checkpoint", "fork"], RESTORES),
        "from_pending": FROM_PENDING,
        **dict.fromkeys(
            names(
                """answer_from_history_turn append_agent_result append_assistant_message append_message ask
            build_agent_context build_router_context can_answer_from_history classify_intent conversation_start
            end_conversation extract_memories finalize_session_traces flow_definition from_declaration plot recall
            receive_user_message reload remember route_conversation route_turn"""
            ),
            NOT_A_RUN,
        ),
    },
}


def public_methods(cls: type[Any]) -> set[str]:
    inherited = set(dir(pydantic.BaseModel))
    return {n for n in dir(cls) if not n.startswith("_") and n not in inherited and callable(getattr(cls, n, None))}


@pytest.mark.parametrize("cls", list(INVENTORY), ids=lambda c: c.__name__)
def test_every_public_method_of_the_run_classes_is_classified(cls: type[Any]) -> None:
    unclassified = public_methods(cls) - set(INVENTORY[cls])
    assert not unclassified, f"{cls.__name__} has methods Tether has not classified: {sorted(unclassified)}"


@pytest.mark.parametrize("cls", list(INVENTORY), ids=lambda c: c.__name__)
def test_every_run_entry_point_opens_the_runs_session(cls: type[Any], scenario_store: AuditStore) -> None:
    enable_step_guard(crew_of(ScriptedLLM(), ToolLog()), make_guard(scenario_store))  # installs Tether
    present = public_methods(cls)
    for name, kind in INVENTORY[cls].items():
        if kind == RUN and name in present:
            assert getattr(getattr(cls, name), "_tether_installed", False), f"{cls.__name__}.{name} is not wrapped"
    if "from_checkpoint" in present:  # fork and kickoff(from_checkpoint=...) restore through it
        wrapped = getattr(cls.from_checkpoint, "_tether_installed", False)
        assert wrapped, f"{cls.__name__}.from_checkpoint is not wrapped"


def test_flow_methods_that_run_it_go_through_kickoff() -> None:
    for name, kind in INVENTORY[Flow].items():
        if kind == THROUGH_KICKOFF and hasattr(Flow, name):
            source = inspect.getsource(getattr(Flow, name))
            runs = ("self.kickoff", "self.handle_turn")
            assert any(r in source for r in runs), f"Flow.{name} no longer runs through kickoff: classify it again"


# -- each run entry point, governed -----------------------------------------------------------


def denied_once(store: AuditStore, log: ToolLog, runs: int = 1) -> None:
    """``runs`` runs each proposed the denied call: none ran, each was decided in its own session."""
    made = decisions(store, "delete_account")
    assert log.ran("delete_account") == []
    assert [d.verdict for d in made] == ["deny"] * runs
    assert len({d.session_id for d in made}) == runs


def crew_with(log: ToolLog, *turns: Any, native: bool = False) -> Crew:
    return crew_of(ScriptedLLM(*turns, native=native), log)


def delete_until_refused(messages: Any, tools: Any) -> list[Call]:
    return [] if "accounts are deleted by people" in json.dumps(messages, default=str) else [DELETE]


CREW_RUNS: dict[str, Callable[[Crew], Any]] = {
    "kickoff": lambda crew: crew.kickoff(),
    "kickoff_async": lambda crew: asyncio.run(crew.kickoff_async()),
    "akickoff": lambda crew: asyncio.run(crew.akickoff()),
}


@pytest.mark.parametrize("entry", list(CREW_RUNS))
def test_each_crew_run_is_governed_in_its_own_session_in_both_modes(
    entry: str, native: bool, scenario_store: AuditStore
) -> None:
    log = ToolLog()
    crew = crew_with(log, [DELETE], [], [DELETE], [], native=native)
    enable_step_guard(crew, make_guard(scenario_store))
    CREW_RUNS[entry](crew)
    CREW_RUNS[entry](crew)  # a second run of the same crew: a new session, taint and limits do not carry over
    denied_once(scenario_store, log, runs=2)


@pytest.mark.parametrize("entry", ["kickoff_for_each", "kickoff_for_each_async", "akickoff_for_each"])
def test_each_input_of_kickoff_for_each_is_governed_in_its_own_session(entry: str, scenario_store: AuditStore) -> None:
    """kickoff_for_each runs crew.copy() per input: the copies keep the step guard."""
    log = ToolLog()
    crew = crew_of(ScriptedLLM(respond=delete_until_refused), log)  # copies share the model: per conversation
    enable_step_guard(crew, make_guard(scenario_store))
    result = getattr(crew, entry)(inputs=[{"n": "1"}, {"n": "2"}])
    if inspect.iscoroutine(result):
        asyncio.run(result)
    denied_once(scenario_store, log, runs=2)


def test_replay_is_a_governed_run(scenario_store: AuditStore) -> None:
    log = ToolLog()
    crew = crew_with(log, [DELETE], [], [DELETE], [])
    enable_step_guard(crew, make_guard(scenario_store))
    crew.kickoff()
    crew.replay(task_id=str(crew.tasks[0].id))
    denied_once(scenario_store, log, runs=2)


def test_a_copy_of_a_guarded_crew_stays_guarded(scenario_store: AuditStore) -> None:
    log = ToolLog()
    crew = crew_with(log, [DELETE])
    enable_step_guard(crew, make_guard(scenario_store))
    crew.copy().kickoff()
    denied_once(scenario_store, log)


AGENT_RUNS: dict[str, Callable[[Agent], Any]] = {
    "kickoff": lambda agent: agent.kickoff("Please help with order 42."),
    "kickoff_async": lambda agent: asyncio.run(agent.kickoff_async("Please help with order 42.")),
    "akickoff": lambda agent: asyncio.run(agent.akickoff("Please help with order 42.")),
    "message": lambda agent: agent.message("Please help with order 42."),
    "execute_task": lambda agent: agent.execute_task(Task(description="help", expected_output="x", agent=agent)),
    "aexecute_task": lambda agent: asyncio.run(
        agent.aexecute_task(Task(description="help", expected_output="x", agent=agent))
    ),
    "Task.execute_sync": lambda agent: Task(description="help", expected_output="x", agent=agent).execute_sync(),
    "Task.execute_async": lambda agent: (
        Task(description="help", expected_output="x", agent=agent).execute_async().result(timeout=60)
    ),
    "Task.aexecute_sync": lambda agent: asyncio.run(
        Task(description="help", expected_output="x", agent=agent).aexecute_sync()
    ),
}


@pytest.mark.parametrize("entry", list(AGENT_RUNS))
def test_each_agent_run_is_governed(entry: str, native: bool, scenario_store: AuditStore) -> None:
    if not hasattr(Agent, entry.removeprefix("Task.")) and not entry.startswith("Task."):
        pytest.skip(f"Agent.{entry} is not in this CrewAI version")
    log = ToolLog()
    agent = agent_of(ScriptedLLM([DELETE], native=native), log)
    enable_step_guard(agent, make_guard(scenario_store))
    AGENT_RUNS[entry](agent)
    denied_once(scenario_store, log)
    assert {d.agent for d in decisions(scenario_store)} == {AGENT}


class SupportFlow(Flow):  # type: ignore[type-arg]
    """A flow that builds its crew on the fly, in a step: the crew itself is never guarded."""

    log: Any = None
    native: bool = False

    @start()
    def handle(self) -> Any:
        return crew_with(self.log, [DELETE], native=self.native).kickoff()


@pytest.mark.parametrize("entry", ["kickoff", "kickoff_async", "akickoff"])
def test_a_guarded_flow_governs_the_crews_it_builds(entry: str, scenario_store: AuditStore) -> None:
    log = ToolLog()
    flow = SupportFlow()
    flow.log = log
    enable_step_guard(flow, make_guard(scenario_store))
    result = getattr(flow, entry)()
    if inspect.iscoroutine(result):
        asyncio.run(result)
    denied_once(scenario_store, log)


class ToolStepFlow(Flow):  # type: ignore[type-arg]
    """A flow whose step calls a tool itself, outside any agent."""

    tool: Any = None

    @start()
    def handle(self) -> Any:
        return self.tool.run(user_id="u1")


def test_a_tool_a_flow_step_calls_itself_is_decided_as_the_flow(scenario_store: AuditStore) -> None:
    log = ToolLog()
    flow = ToolStepFlow()
    flow.tool = next(t for t in crew_with(log).agents[0].tools if t.name == "delete_account")
    enable_step_guard(flow, make_guard(scenario_store))
    flow.kickoff()
    (decision,) = decisions(scenario_store, "delete_account")
    assert decision.agent == "ToolStepFlow" and decision.verdict == "deny" and log.calls == []


def test_a_differently_guarded_crew_run_inside_a_guarded_flow_names_the_flows_session(
    scenario_store: AuditStore,
) -> None:
    log = ToolLog()
    inner = crew_with(log, [DELETE])
    flow = CrewStepFlow()
    flow.crew = inner
    guard = make_guard(scenario_store)
    flows = enable_step_guard(flow, guard)
    enable_step_guard(inner, guard)  # its own step guard: its own session, linked to the flow's
    flow.kickoff()
    (decision,) = decisions(scenario_store, "delete_account")
    (start,) = [e for e in scenario_store.events() if e.kind == "session.start" and e.session_id == decision.session_id]
    assert flows.session_id and decision.session_id != flows.session_id
    assert start.details["parent_session"] == flows.session_id


class CrewStepFlow(Flow):  # type: ignore[type-arg]
    crew: Any = None

    @start()
    def handle(self) -> Any:
        return self.crew.kickoff()


# -- multi-agent constructs ---------------------------------------------------------------------


def test_delegation_is_a_governed_call_and_the_coworker_acts_in_the_same_session(scenario_store: AuditStore) -> None:
    log = ToolLog()
    delegate = Call("d1", "Delegate work to coworker", {"task": "delete u1", "context": "asked", "coworker": "ops"})
    writer = agent_of(ScriptedLLM([delegate]), log, allow_delegation=True)
    ops = agent_of(ScriptedLLM([DELETE]), log, role="ops")
    crew = Crew(agents=[writer, ops], tasks=[Task(description="help", expected_output="x", agent=writer)])
    spec = policy(tools={"delegate_work_to_coworker": "allow", "delete_account": "allow"})
    spec["tools"]["delegate_work_to_coworker"] = {"effects": ["read"]}
    enable_step_guard(crew, Guard(spec, store=scenario_store))
    crew.kickoff()
    made = {(d.agent, d.tool): d for d in decisions(scenario_store)}
    assert made[(AGENT, "delegate_work_to_coworker")].verdict == "allow"  # CrewAI's sanitised name
    assert made[("ops", "delete_account")].verdict == "deny"  # ops is not in the policy
    assert log.ran("delete_account") == []
    assert len({d.session_id for d in made.values()}) == 1


def test_the_hierarchical_manager_delegates_as_crew_manager(scenario_store: AuditStore) -> None:
    log = ToolLog()
    delegate = Call("d1", "Delegate work to coworker", {"task": "delete u1", "context": "asked", "coworker": AGENT})
    worker = agent_of(ScriptedLLM([DELETE]), log)
    crew = Crew(
        agents=[worker],
        tasks=[Task(description="help", expected_output="x")],
        process=Process.hierarchical,
        manager_llm=ScriptedLLM([delegate]),
    )
    enable_step_guard(crew, make_guard(scenario_store))
    crew.kickoff()
    made = [(d.agent, d.tool, d.verdict) for d in decisions(scenario_store)]
    assert ("Crew Manager", "delegate_work_to_coworker", "deny") in made  # not granted to the manager
    assert log.ran("delete_account") == []


def test_an_async_task_is_governed(scenario_store: AuditStore) -> None:
    log = ToolLog()
    agent = agent_of(ScriptedLLM([DELETE], []), log)
    first = Task(description="help", expected_output="x", agent=agent, async_execution=True)
    last = Task(description="sum up", expected_output="x", agent=agent, context=[first])
    crew = Crew(agents=[agent], tasks=[first, last])
    enable_step_guard(crew, make_guard(scenario_store))
    crew.kickoff()
    denied_once(scenario_store, log)


def test_a_guarded_agent_is_governed_in_a_crew_nobody_guarded(scenario_store: AuditStore) -> None:
    log = ToolLog()
    agent = agent_of(ScriptedLLM([DELETE]), log)
    enable_step_guard(agent, make_guard(scenario_store))
    Crew(agents=[agent], tasks=[Task(description="help", expected_output="x", agent=agent)]).kickoff()
    denied_once(scenario_store, log)


def test_a_guarded_tool_called_outside_any_run_is_decided_in_a_fallback_session(scenario_store: AuditStore) -> None:
    log = ToolLog()
    crew = crew_with(log)
    enable_step_guard(crew, make_guard(scenario_store))
    delete = next(t for t in crew.agents[0].tools if t.name == "delete_account")

    said = delete.run(user_id="u1")

    assert log.ran("delete_account") == [] and "Tether denied" in str(said)
    (decision,) = decisions(scenario_store, "delete_account")
    assert decision.agent == FRAMEWORK_AGENT and decision.verdict == "deny"


def test_a_tool_class_with_its_own_run_is_governed(native: bool, scenario_store: AuditStore) -> None:
    from crewai.tools import BaseTool

    log = ToolLog()

    class DeleteAccount(BaseTool):  # overrides run itself, bypassing BaseTool.run
        name: str = "delete_account"
        description: str = "Delete a customer's account."

        def run(self, *args: Any, **kwargs: Any) -> Any:
            return self._run(**kwargs)

        def _run(self, user_id: str) -> str:
            log.record("delete_account", user_id=user_id)
            return f"deleted {user_id}"

    agent = agent_of(ScriptedLLM([DELETE], native=native), log)
    agent.tools = [DeleteAccount()]
    crew = Crew(agents=[agent], tasks=[Task(description="help", expected_output="x", agent=agent)])
    enable_step_guard(crew, make_guard(scenario_store))
    crew.kickoff()
    denied_once(scenario_store, log)


def test_a_tool_that_kicks_off_a_crew_with_itself_is_decided_again_inside(scenario_store: AuditStore) -> None:
    """A call running after its decision is not decided again when the same tool is re-entered
    by the same agent; a crew it kicks off is other agents' work, and decided."""
    from crewai.tools import tool

    log = ToolLog()
    inner: list[Crew] = []

    @tool("lookup_order")
    def nested_lookup(order_id: str) -> str:
        """Look up an order's status."""
        log.record("lookup_order", order_id=order_id)
        if len(log.calls) == 1:
            inner[0].kickoff()
        return f"order {order_id}: shipped"

    outer_agent = agent_of(ScriptedLLM([Call("c1", "lookup_order", {"order_id": "1"})]), log)
    outer_agent.tools = [nested_lookup]
    inner_agent = agent_of(ScriptedLLM([Call("c2", "lookup_order", {"order_id": "2"})]), log, role="ops")
    inner_agent.tools = [nested_lookup]
    inner.append(Crew(agents=[inner_agent], tasks=[Task(description="x", expected_output="x", agent=inner_agent)]))
    outer = Crew(agents=[outer_agent], tasks=[Task(description="help", expected_output="x", agent=outer_agent)])
    enable_step_guard(outer, make_guard(scenario_store))
    outer.kickoff()
    assert [(d.agent, d.verdict) for d in decisions(scenario_store, "lookup_order")] == [
        (AGENT, "allow"),
        ("ops", "deny"),
    ]
    assert log.ran("lookup_order") == [{"order_id": "1"}]


def test_unguarded_crews_are_left_alone(scenario_store: AuditStore) -> None:
    enable_step_guard(crew_with(ToolLog()), make_guard(scenario_store))  # Tether now installed
    log = ToolLog()
    crew_with(log, [DELETE]).kickoff()
    assert log.ran("delete_account") == [{"user_id": "u1"}]  # not ours to decide
    assert decisions(scenario_store) == []


# -- runs driven twice: each its own session ----------------------------------------------------


@pytest.mark.parametrize("entry", ["kickoff", "kickoff_async", "akickoff"])
def test_two_runs_of_a_guarded_flow_are_two_sessions(entry: str, native: bool, scenario_store: AuditStore) -> None:
    log = ToolLog()
    flow = SupportFlow()
    flow.log, flow.native = log, native
    enable_step_guard(flow, make_guard(scenario_store))
    for _ in range(2):
        result = getattr(flow, entry)()
        if inspect.iscoroutine(result):
            asyncio.run(result)
    denied_once(scenario_store, log, runs=2)


@pytest.mark.parametrize("entry", ["kickoff", "kickoff_async", "akickoff"])
def test_two_kickoffs_of_a_guarded_agent_are_two_sessions(entry: str, native: bool, scenario_store: AuditStore) -> None:
    log = ToolLog()
    agent = agent_of(ScriptedLLM([DELETE], [], [DELETE], [], native=native), log)
    enable_step_guard(agent, make_guard(scenario_store))
    AGENT_RUNS[entry](agent)
    AGENT_RUNS[entry](agent)
    denied_once(scenario_store, log, runs=2)
    assert {d.agent for d in decisions(scenario_store)} == {AGENT}


@pytest.mark.parametrize("entry", ["kickoff_for_each", "kickoff_for_each_async", "akickoff_for_each"])
def test_kickoff_for_each_with_native_function_calling_is_one_session_per_input(
    entry: str, scenario_store: AuditStore
) -> None:
    log = ToolLog()
    crew = crew_of(ScriptedLLM(respond=delete_until_refused, native=True), log)
    enable_step_guard(crew, make_guard(scenario_store))
    result = getattr(crew, entry)(inputs=[{"n": "1"}, {"n": "2"}])
    if inspect.iscoroutine(result):
        asyncio.run(result)
    denied_once(scenario_store, log, runs=2)
    assert all(d.details.get("call_id") == DELETE.id for d in decisions(scenario_store, "delete_account"))


class JudgeLLM(ScriptedLLM):
    """The evaluator model of ``Crew.test``: scores every task 9."""

    def call(self, messages: Any, tools: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.inputs.append(json.dumps(messages, default=str))
        return 'Thought: I know the answer\nFinal Answer: {"quality": 9.0}'


def test_crew_test_runs_a_governed_copy(scenario_store: AuditStore) -> None:
    log = ToolLog()
    crew = crew_of(ScriptedLLM(respond=delete_until_refused), log)
    enable_step_guard(crew, make_guard(scenario_store))
    judge = JudgeLLM()
    crew.test(n_iterations=2, eval_llm=judge)
    denied_once(scenario_store, log, runs=2)  # each iteration a run of its own
    assert judge.inputs, "the evaluator never ran"


def test_crew_train_runs_a_governed_copy(
    scenario_store: AuditStore, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        from crewai.agents.agent_executor import AgentExecutor
    except ImportError:  # CrewAI 1.14
        from crewai.experimental.agent_executor import AgentExecutor
    if not hasattr(AgentExecutor, "_format_feedback_message"):
        pytest.skip("CrewAI 1.14's agent executor fails on a trainer's feedback (no _format_feedback_message)")
    monkeypatch.chdir(tmp_path)  # CrewAI writes its training data to the working directory
    monkeypatch.setattr("builtins.input", lambda *args: "fine")  # the trainer's feedback
    log = ToolLog()
    crew = crew_of(ScriptedLLM(respond=delete_until_refused), log)
    enable_step_guard(crew, make_guard(scenario_store))
    crew.train(n_iterations=2, filename=str(tmp_path / "trained.pkl"))
    denied_once(scenario_store, log, runs=2)
