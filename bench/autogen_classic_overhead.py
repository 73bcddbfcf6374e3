"""What Tether adds to a tool call in classic AutoGen (ag2 0.x / pyautogen 0.2), in the same run.

A chat between an assistant (scripted model client: no network) and an executor, in which the
model proposes CALLS no-op tool calls one after another and then stops. Per tool call, the
framework does a full turn: model call, message passing, reply functions, execution, the tool
response back. Reported: that turn unguarded, the same turn with ``register_guard`` (decision,
the model message and tool output recorded, each a durable SQLite audit write), and the ratio.

    python bench/autogen_classic_overhead.py
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import autogen
from _timing import latencies_us

from tether.autogen.classic import register_guard
from tether.core import AuditStore, Guard, Session

CALLS, CHATS, ROUNDS = 20, 15, 7
logging.getLogger("autogen.oai.client").setLevel(logging.WARNING)  # its notice about custom model clients
SINK = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run: ag2's log handler keeps the stream it first saw
POLICY = {
    "version": 1,
    "tools": {"noop": {"effects": ["read"]}},
    "agents": {"assistant": {"purpose": "bench", "owner": "bench@acme.example", "tools": {"noop": "allow"}}},
}


class LoopModel:
    """Proposes one `noop` call per model call until the chat holds CALLS tool responses."""

    def __init__(self, config: dict[str, Any], **_: Any) -> None:
        self.n = 0

    def create(self, params: dict[str, Any]) -> Any:
        self.n += 1
        done = sum(1 for m in params["messages"] if m.get("role") == "tool")
        if done >= CALLS:
            message: dict[str, Any] = {"role": "assistant", "content": "TERMINATE"}
        else:
            call = {"name": "noop", "arguments": json.dumps({"x": done})}
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": f"c{self.n}", "type": "function", "function": call}],
            }
        return SimpleNamespace(id=f"r{self.n}", choices=[SimpleNamespace(message=message)], model="loop")

    def message_retrieval(self, response: Any) -> list[Any]:
        return [choice.message for choice in response.choices]

    def cost(self, response: Any) -> float:
        return 0.0

    @staticmethod
    def get_usage(response: Any) -> dict[str, Any]:
        return {}


def noop(x: int) -> str:
    return "ok"


def pair() -> tuple[Any, Any]:
    llm = {"config_list": [{"model": "loop", "model_client_cls": "LoopModel"}], "cache_seed": None}
    done = lambda m: "TERMINATE" in str(m.get("content") or "")  # noqa: E731
    bot = autogen.ConversableAgent("assistant", llm_config=llm, human_input_mode="NEVER", is_termination_msg=done)
    user = autogen.ConversableAgent(
        "user", llm_config=False, human_input_mode="NEVER", code_execution_config=False, is_termination_msg=done
    )
    autogen.register_function(noop, caller=bot, executor=user, description="does nothing")
    bot.register_model_client(LoopModel)
    return bot, user


@contextlib.contextmanager
def unguarded() -> Iterator[None]:
    """No guard registered in the process (Tether decides every call once one is): the baseline."""
    from tether.autogen import classic

    saved = getattr(classic, "_latest", None)
    classic._latest = None
    try:
        yield
    finally:
        classic._latest = saved


def per_call(bot: Any, user: Any) -> list[float]:
    """Microseconds per tool call (a chat's time over its CALLS calls), one value per chat."""

    def one_chat() -> None:
        with contextlib.redirect_stdout(SINK):  # some versions print every execution even when silent
            result = user.initiate_chat(bot, message="go", max_turns=CALLS + 2, silent=True)
        assert sum(1 for m in result.chat_history if m.get("role") == "tool") == CALLS

    return [t / CALLS for t in latencies_us(one_chat, CHATS, warmup=2)]


def core_alone(guard: Guard) -> list[float]:
    """The core's share of one guarded call: record the proposal, decide, record the output."""
    session = guard.session("assistant", "core-alone", context={"framework": "autogen", "executor": "user"})
    message = {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": "noop"}}]}

    def one() -> None:
        event = session.after_model(message, tool_calls=[{"id": "c", "name": "noop"}])
        decision = session.before_tool("noop", {"x": 1}, call_id="c", caused_by=event)
        session.after_tool(decision, "ok")

    return latencies_us(one, CHATS * CALLS, warmup=20)  # its mean is compared: a chat's time includes the tail


class CoreClock:
    """Time spent inside the core's Session methods while the guarded chats run (a few ns per call
    to measure), so the adapter's own share is what remains."""

    METHODS = ("trusted_input", "before_model", "after_model", "before_tool", "resolve", "after_tool")

    def __init__(self) -> None:
        self.ns = 0
        self._saved = {name: getattr(Session, name) for name in self.METHODS}

    def __enter__(self) -> CoreClock:
        clock = time.perf_counter_ns
        for name, method in self._saved.items():

            def timed(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
                start = clock()
                try:
                    return _method(*args, **kwargs)
                finally:
                    self.ns += clock() - start

            setattr(Session, name, timed)
        return self

    def __exit__(self, *_: object) -> None:
        for name, method in self._saved.items():
            setattr(Session, name, method)


def main() -> None:
    version = getattr(autogen, "__version__", "?")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        guard = Guard(POLICY, store=AuditStore(f"sqlite:///{tmp}/bench.db", key=b"k" * 32))
        with contextlib.redirect_stdout(SINK):
            plain, guarded = pair(), pair()
        register_guard(list(guarded), guard)
        for _ in range(ROUNDS):  # interleaved, so both see the same machine noise
            with unguarded():
                bare = statistics.median(per_call(*plain))
            with CoreClock() as core:
                tethered = statistics.median(per_call(*guarded))
            in_core = core.ns / 1000 / ((CHATS + 2) * CALLS)  # every chat, warm-up included
            rows.append((bare, tethered, in_core, statistics.mean(core_alone(guard))))
        guard.close()
    bare, tethered, in_core, alone = (statistics.median(r[i] for r in rows) for i in range(4))
    ratio = statistics.median(r[1] / r[0] for r in rows)
    print(f"autogen {version}, Python {sys.version.split()[0]}; {ROUNDS} rounds x {CHATS} chats x {CALLS} calls\n")
    print("| per tool call (median of rounds) | µs |")
    print("|---|---:|")
    print(f"| unguarded full turn (model call, messages, execution) | {bare:.0f} |")
    print(f"| guarded full turn | {tethered:.0f} |")
    print(f"| of which in the core (model request and response, decision, result: 4 audit writes) | {in_core:.0f} |")
    print(f"| of which in the adapter (the rest) | {tethered - bare - in_core:.0f} |")
    print(f"| for reference: the same three core calls in a tight loop (mean) | {alone:.0f} |")
    each = ", ".join(f"{r[1] / r[0]:.2f}" for r in rows)
    print(f"\nratio guarded / unguarded, median of rounds: {ratio:.2f} (rounds: {each})")


if __name__ == "__main__":
    main()
