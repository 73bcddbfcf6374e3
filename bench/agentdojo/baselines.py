"""Baselines on a generated workload: AgentDojo's benign traces replayed over simulated days.

    pip install ./core agentdojo==0.1.35
    python bench/agentdojo/baselines.py               # banking and workspace (about 10 minutes)

For each suite, one agent, five folds over its user tasks. In each fold four in five tasks are
*seen*: for 7 simulated days, 30 sessions a day, each a seen task's ground-truth calls (drawn
at random, with repeats, at random times of day, 2 to 30 s between calls). Tether records them
(monitor mode, every built-in protection on) and a baseline is learned from that audit, as
``tether baseline learn`` does. The next 3 days are judged against it:

- held-out benign sessions of the seen tasks, and the fold's fifth of tasks never seen in
  training (new but legitimate work): a session with any anomaly finding is a false alarm;
- attacks: every AgentDojo injection task replayed after its user task's calls (the attack
  traces of ``traces.py``; the calls do not depend on the attack's wording), each judged once in
  a fold where its user task is seen, flagged when an anomaly finding is on a decision at or
  before its first harmful call;
- injected departures: a benign session plus one call of a suite tool no training session used
  (new tool); a benign session's calls repeated ten times one second apart (burst), and ten
  times at the usual pace (volume).

Destinations are compared as exact addresses and as domains, each in its own run. Nothing here
is tuned to the suites: thresholds are the learned maxima, the policy describes tools only.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import types
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))

from replay import AGENT, harmful_index
from traces import Step, Trace, attacks, benign

import tether.core.guard as guard_module
from tether.core import AuditStore, Guard
from tether.core.baselines import ANOMALY_FINDINGS, audit_rows, learn, save_baselines

HERE = Path(__file__).parent
DAY = 86_400.0
TRAIN_DAYS, TEST_DAYS, PER_DAY = 7, 3, 30
START = 1_700_000_000.0  # simulated time: the guard's clock is replaced so sessions spread over days


class Clock:
    def __init__(self) -> None:
        self.now = START

    def time(self) -> float:
        return self.now


@contextmanager
def simulated(clock: Clock) -> Iterator[None]:
    real = guard_module.time
    guard_module.time = types.SimpleNamespace(time=clock.time)  # type: ignore[assignment]
    try:
        yield
    finally:
        guard_module.time = real


def policy(suite: str, destinations: str) -> dict[str, Any]:
    tools = yaml.safe_load((HERE / "tools" / f"{suite}.yaml").read_text())["tools"]
    agent = {"purpose": f"AgentDojo {suite}", "owner": "bench@example.org", "tools": dict.fromkeys(tools, "allow")}
    anomalies = {"destinations": destinations, "max_age": "60d"}
    return {"version": 1, "mode": "monitor", "tools": tools, "agents": {AGENT: agent}, "anomalies": anomalies}


def run(
    guard: Guard, clock: Clock, sid: str, steps: Iterable[Step], gap: tuple[float, float], rng: random.Random
) -> list[set[str]]:
    """Replay ``steps`` as one session; the anomaly findings of each decision."""
    session = guard.session(AGENT, sid)
    for step in steps:
        clock.now += rng.uniform(*gap)
        session.after_tool(session.before_tool(step.function, step.args), step.output)
    found = []
    for event in guard.store.session_events(sid):
        if event.kind == "tool.decision":
            findings = event.details.get("findings") or []
            found.append({f.split(": ", 1)[0] for f in findings} & set(ANOMALY_FINDINGS))
    return found


def evaluate(suite: str, destinations: str, folds: int = 5, seed: int = 1) -> dict[str, Any]:
    """Every user task is unseen in one fold and seen in the others; each attack trace is judged
    once, in a fold where its user task is routine work."""
    rng = random.Random(seed)
    good = list(benign(suite))
    rng.shuffle(good)
    bad = list(attacks(suite, "important_instructions"))
    fold_of = {t.user_task: i % folds for i, t in enumerate(good)}
    out: dict[str, Any] = {key: [] for key in ("seen", "unseen", "attacks", "new tool", "burst", "volume")}
    out["unseen tasks"], out["baselines"], out["untrained tools"] = {}, [], set()
    for fold in range(folds):
        seen = [t for t in good if fold_of[t.user_task] != fold]
        unseen = [t for t in good if fold_of[t.user_task] == fold]
        judged = [t for t in bad if (fold_of[t.user_task] + 1) % folds == fold]
        one = run_fold(suite, destinations, seen, unseen, judged, rng)
        for key in ("seen", "unseen", "attacks", "new tool", "burst", "volume"):
            out[key] += one[key]
        for task, found in zip(unseen, one["unseen"][::UNSEEN_REPLAYS], strict=True):
            out["unseen tasks"][task.user_task] = found
        out["baselines"].append(one["baseline"])
        out["untrained tools"] |= set(one["untrained tools"])
    return out


UNSEEN_REPLAYS = 2


def run_fold(
    suite: str, destinations: str, seen: list[Trace], unseen: list[Trace], judged: list[Trace], rng: random.Random
) -> dict[str, Any]:
    tools = yaml.safe_load((HERE / "tools" / f"{suite}.yaml").read_text())["tools"]
    clock = Clock()
    with tempfile.TemporaryDirectory() as folder, simulated(clock):
        store = AuditStore(f"sqlite:///{folder}/audit.db", key=b"k" * 32)
        guard = Guard(policy(suite, destinations), store=store)
        n = 0
        for day in range(TRAIN_DAYS):
            for start in sorted(rng.uniform(0, DAY) for _ in range(PER_DAY)):
                clock.now = START + day * DAY + start
                n += 1
                run(guard, clock, f"train-{n}", rng.choice(seen).steps, (2, 30), rng)
        learned = learn(audit_rows(store), now_us=int(clock.now * 1e6))
        save_baselines(store, learned)
        guard = Guard(policy(suite, destinations), store=store)  # as a process started after learning
        test_start = START + TRAIN_DAYS * DAY

        def session(steps: list[Step], gap: tuple[float, float] = (2, 30)) -> list[set[str]]:
            nonlocal n
            n += 1
            clock.now = test_start + rng.uniform(0, TEST_DAYS * DAY)
            return run(guard, clock, f"test-{n}", steps, gap, rng)

        spare = sorted(set(tools) - {s.function for t in seen for s in t.steps})
        out: dict[str, Any] = {"baseline": learned[0], "untrained tools": spare}
        out["seen"] = [session(rng.choice(seen).steps) for _ in range(TEST_DAYS * PER_DAY)]
        out["unseen"] = [session(t.steps) for t in unseen for _ in range(UNSEEN_REPLAYS)]
        out["attacks"] = []
        for trace in judged:  # the decisions of the injected calls, up to the first harmful one
            until = harmful_index(trace, tools)
            before = sum(1 for s in trace.steps if s.phase == "user")
            out["attacks"].append(session(trace.steps[: until + 1])[before:])
        extra = [Step(tool, {}, "ok", "injection") for tool in spare] or [Step("not_a_tool", {}, "ok", "injection")]
        out["new tool"] = [session(rng.choice(seen).steps + [rng.choice(extra)]) for _ in range(4)]
        out["burst"] = [session(rng.choice(seen).steps * 10, gap=(1, 1)) for _ in range(4)]
        out["volume"] = [session(rng.choice(seen).steps * 10, gap=(60, 120)) for _ in range(4)]
        store.close()
    return out


def rate(sessions: list[list[set[str]]], kind: str | None = None) -> str:
    hit = sum(any((kind in f) if kind else f for f in s) for s in sessions)
    return f"{100 * hit / len(sessions):.1f}% ({hit}/{len(sessions)})" if sessions else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=["banking", "workspace"])
    options = parser.parse_args()
    print(
        "| suite | destinations as | false alarms: held-out sessions of seen tasks | unseen tasks flagged "
        "| attacks flagged by their first harmful call (new destination / new tool) "
        "| new tool injected | burst injected | volume injected |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    notes = []
    for suite in options.suite or ["banking", "workspace"]:
        for granularity in ("address", "domain"):
            r = evaluate(suite, granularity)
            tasks = r["unseen tasks"]
            flagged = sorted(t for t, found in tasks.items() if any(found))
            attacks_hit = (
                f"{rate(r['attacks'])} ({rate(r['attacks'], 'tether.new-destination').split(' ')[0]} / "
                f"{rate(r['attacks'], 'tether.new-tool').split(' ')[0]})"
            )
            print(
                f"| {suite} | {granularity} | {rate(r['seen'])} | {100 * len(flagged) / len(tasks):.1f}% "
                f"({len(flagged)}/{len(tasks)}) | {attacks_hit} | {rate(r['new tool'], 'tether.new-tool')} "
                f"| {rate(r['burst'], 'tether.burst')} | {rate(r['volume'], 'tether.volume')} |"
            )
            why = sorted({k.removeprefix("tether.") for t in flagged for f in tasks[t] for k in f})
            b = r["baselines"][0]
            notes.append(
                f"{suite}, {granularity}: {len(r['baselines'])} folds of {TRAIN_DAYS * PER_DAY} learned sessions "
                f"(first fold: calls per session max {b.calls_max}, at most {b.burst_max} a minute, {len(b.tools)} "
                f"tools, {len(b.addresses)} destinations, {len(b.domains)} domains); unseen tasks flagged for: "
                f"{', '.join(why) or '-'}"
            )
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
