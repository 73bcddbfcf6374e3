"""The core stays framework-free: checked on its source and on what importing it loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tether.core

FRAMEWORKS = (
    "langgraph",
    "langchain",
    "langchain_core",
    "crewai",
    "autogen",
    "autogen_agentchat",
    "autogen_core",
    "ag2",
    "openai",
    "anthropic",
)
CORE = Path(tether.core.__file__).parent


def test_no_core_module_imports_an_agent_framework() -> None:
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            )
            offenders += [f"{path.relative_to(CORE)}: {n}" for n in names if n.split(".")[0] in FRAMEWORKS]
    assert offenders == []


def test_importing_the_whole_core_loads_no_framework() -> None:
    modules = sorted(
        "tether.core." + ".".join(p.relative_to(CORE).with_suffix("").parts)
        for p in CORE.rglob("*.py")
        if "migrations" not in p.parts and p.name != "__init__.py"
    )
    script = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {FRAMEWORKS!r}))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
