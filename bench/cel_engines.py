"""The CEL runtimes Tether could use, on the pattern a decision runs: bind a call's variables,
evaluate two conditions. Runtimes that are not installed are skipped.

    pip install cel-expr-python common-expression-language cel-python
    python bench/cel_engines.py
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _timing import latencies_us, summary

ARGS = {"to": "bob@acme.example", "amount": 42, "body": "Hello Bob, " * 30}
SESSION = {"tainted": False, "calls": 3}
SOURCES = ['args.to.endsWith("@acme.example") && args.amount <= 100', "!session.tainted && session.calls < 50"]


def google() -> Callable[[], object]:
    from cel_expr_python import cel

    dyn = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
    env = cel.NewEnv(variables={"args": dyn, "session": dyn})
    programs = [env.compile(s) for s in SOURCES]

    def run() -> object:
        activation = env.Activation({"args": ARGS, "session": SESSION})
        return [p.eval(activation).value() for p in programs]

    return run


def hardbyte() -> Callable[[], object]:
    import cel

    programs = [cel.compile(s) for s in SOURCES]

    def run() -> object:
        context = cel.Context(variables={"args": ARGS, "session": SESSION})
        return [p.execute(context) for p in programs]

    return run


def pure() -> Callable[[], object]:
    import celpy

    env = celpy.Environment()
    programs = [env.program(env.compile(s)) for s in SOURCES]

    def run() -> object:
        activation = {"args": celpy.json_to_cel(ARGS), "session": celpy.json_to_cel(SESSION)}
        return [p.evaluate(activation) for p in programs]

    return run


RUNTIMES = [
    ("cel-expr-python (Google's C++ CEL)", "cel_expr_python", google),
    ("common-expression-language (Rust)", "cel", hardbyte),
    ("cel-python (pure Python)", "celpy", pure),
]


def import_ms(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1000)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    def bare() -> None:
        pass

    base = summary(latencies_us(bare, 100_000))[0]
    print("| runtime | median µs (bind + 2 conditions) | p99 µs | import ms |")
    print("|---|---:|---:|---:|")
    print(f"| bare Python call (baseline) | {base:.2f} | | |")
    for name, module, make in RUNTIMES:
        if importlib.util.find_spec(module) is None:
            print(f"| {name} | not installed | | |")
            continue
        median, p99 = summary(latencies_us(make(), 2_000 if module == "celpy" else 20_000))
        print(f"| {name} | {median:.1f} | {p99:.1f} | {import_ms(module):.0f} |")


if __name__ == "__main__":
    main()
