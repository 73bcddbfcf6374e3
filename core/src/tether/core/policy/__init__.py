"""Policy: the schema, the YAML loader and the compiler."""

from .compile import CompiledPolicy, compile_policy, load_policy
from .loader import parse_policy, read_policy
from .schema import AgentSpec, Effect, Grant, Limits, Mode, Policy, Rule, ToolSpec, Trust, Verdict, mcp_tool

__all__ = [
    "AgentSpec",
    "CompiledPolicy",
    "Effect",
    "Grant",
    "Limits",
    "Mode",
    "Policy",
    "Rule",
    "ToolSpec",
    "Trust",
    "Verdict",
    "compile_policy",
    "load_policy",
    "mcp_tool",
    "parse_policy",
    "read_policy",
]
