"""Conditions: static name checks, and the two CEL runtimes agreeing with each other."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.core.expr import (
    ConditionError,
    ConditionFailed,
    _GoogleCel,
    _PureCel,
    compile_condition,
    engine,
    evaluate,
    make_activation,
    scan_names,
)


def test_scan_finds_variables_argument_fields_and_tools() -> None:
    names = scan_names('args.to.endsWith("@x") && has(args.cc) && session.tool_calls["send"] < 2 && !session.tainted')
    assert names.fields == {"args": {"to", "cc"}, "session": {"tool_calls", "tainted"}}
    assert names.tool_names == {"send"}


@pytest.mark.parametrize("source", ['args["to"] == "x"', "args.size() > 2", "'to' in args"])
def test_whole_args_use_is_recognised(source: str) -> None:
    assert scan_names(source).fields["args"] is None


def test_strings_and_comprehension_variables_are_not_names() -> None:
    names = scan_names('args.tags.exists(t, t == "session.bogus") && ["a"].all(x, x != "argz")')
    assert names.variables == {"args"}


@pytest.mark.parametrize(
    ("source", "column"),
    [("argz.x", 1), ("args.x && sesion.tainted", 11), ("session.bogus", 9)],
)
def test_unknown_names_are_located(source: str, column: int) -> None:
    with pytest.raises(ConditionError) as caught:
        scan_names(source)
    assert caught.value.column == column


def test_evaluation_is_boolean_only() -> None:
    condition = compile_condition("args.n")
    with pytest.raises(ConditionFailed, match="not true/false"):
        evaluate(condition, make_activation({"args": {"n": 3}}))


def test_surrogates_and_bytes_are_usable_once_cleaned() -> None:
    from tether.core.values import to_plain

    args = to_plain({"s": "caf\udce9", "b": b"\x01\xff"})
    assert evaluate(compile_condition('args.s.startsWith("caf") && size(args.b) == 2'), make_activation({"args": args}))


def test_bytes_with_nul_are_refused_rather_than_misread() -> None:
    condition = compile_condition("size(args.b) == 3")
    if isinstance(engine(), _GoogleCel):
        # cel-expr-python would cut b"a\x00b" to b"a"; a condition must not decide on that.
        with pytest.raises(ConditionFailed, match="NUL"):
            make_activation({"args": {"b": b"a\x00b"}})
    else:
        assert evaluate(condition, make_activation({"args": {"b": b"a\x00b"}}))


# -- the pure-Python runtime (used on Python 3.10) must never be more permissive ------------

compiled_available = sys.version_info >= (3, 11)
PURE = _PureCel()  # import cel-python before hypothesis runs: it raises the recursion limit
COMPILED = _GoogleCel() if compiled_available else None

fields = st.sampled_from(["n", "f", "s", "t", "missing"])
ints = st.integers(-1000, 1000).map(str)
floats = st.floats(-1000, 1000, allow_nan=False).map(lambda f: repr(float(f)))
strings = st.text(alphabet="ab@.x", max_size=6).map(lambda s: '"' + s + '"')
literals = st.one_of(ints, floats, strings)
comparisons = st.builds(
    lambda f, op, v: f"args.{f} {op} {v}", fields, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), literals
)
string_calls = st.builds(
    lambda f, m, v: f"args.{f}.{m}({v})",
    st.sampled_from(["s", "t", "n"]),
    st.sampled_from(["startsWith", "endsWith", "contains"]),
    strings,
)
atoms = st.one_of(
    comparisons,
    string_calls,
    fields.map(lambda f: f"has(args.{f})"),
    st.builds(lambda f, v: f'args.{f} in [{v}, 1, "a"]', fields, literals),
    st.builds(lambda f: f"size(args.{f}) > 2", fields),
)
expressions = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) && ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) || ({b})", inner, inner),
        inner.map(lambda a: f"!({a})"),
    ),
    max_leaves=4,
)
values = st.fixed_dictionaries(
    {
        "n": st.integers(-1000, 1000),
        "f": st.floats(-1000, 1000, allow_nan=False),
        "s": st.text(alphabet="ab@.x", max_size=6),
        # no NUL character: the compiled runtime reads a string only up to one, so a decision
        # refuses arguments holding one before any condition runs (test_decision.py)
        "t": st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=4),
    }
)


def _outcome(engine: Any, source: str, args: dict[str, Any]) -> object:
    try:
        program = engine.compile(source)
        result = engine.run(program, engine.activation({"args": args}))
    except (ConditionFailed, ConditionError):
        return "error"
    return result if isinstance(result, bool) else "error"


@pytest.mark.skipif(not compiled_available, reason="the compiled CEL runtime needs Python 3.11+")
@settings(max_examples=400, deadline=None)
@given(expressions, values)
def test_pure_runtime_agrees_or_fails_closed(source: str, args: dict[str, Any]) -> None:
    compiled = _outcome(COMPILED, source, args)
    pure = _outcome(PURE, source, args)
    # An error denies the call, so the pure runtime may fail where the compiled one answers
    # (it is stricter about int/double mixing) but must never answer where that one fails,
    # nor answer differently.
    assert pure == compiled or pure == "error", (source, args, compiled, pure)


@pytest.mark.parametrize("runtime", [PURE, COMPILED] if COMPILED else [PURE], ids=lambda r: r.name)
def test_each_runtime_runs_on_a_shared_activation_and_on_plain_variables(runtime: Any) -> None:
    variables = {"args": {"to": "a@acme.example", "n": 3}, "session": {"tainted": False}}
    first = runtime.compile('args.to.endsWith("@acme.example")')
    second = runtime.compile("!session.tainted && args.n < 5")
    shared = runtime.activation(variables)
    assert runtime.run(first, shared) is True
    assert runtime.run(second, shared) is True  # the same activation, used again
    assert runtime.run(second, variables) is True


@pytest.mark.skipif(engine().name != "cel-expr-python", reason="only the compiled runtime has an iteration budget")
def test_runtime_limits_are_reported_for_what_they_are() -> None:
    loop = compile_condition("args.items.all(x, x > 0)")
    for variables in (
        {"args": {"items": list(range(1, 100_000))}},
        make_activation({"args": {"items": [1] * 100_000}}),
    ):
        with pytest.raises(ConditionFailed) as failed:
            evaluate(loop, variables)
        message = str(failed.value)
        assert "iteration budget" in message
        assert "cannot pass these values" not in message and "INTERNAL" not in message
    with pytest.raises(ConditionFailed) as failed:
        evaluate(compile_condition("args.n > 1"), {"args": {"n": 4111111111111111 * 10**6}})
    assert "64-bit" in str(failed.value) and "4111111111111111" not in str(failed.value)  # no value in a reason
