"""The MCP gateway's tests: a real FastMCP server behind ``tether mcp proxy`` (a real process),
spoken to by the SDK's own client."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import require

require("mcp")

from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

from tests.conformance import mcp_server  # noqa: E402
from tests.core.conftest import pg_url as pg_url  # noqa: E402 - the PostgreSQL schema fixture
from tests.mcp import server as web_server  # noqa: E402
from tether.core import AuditStore  # noqa: E402

HELPDESK = mcp_server.NAME


def policy() -> dict[str, Any]:
    def h(tool: str) -> str:
        return f"{HELPDESK}/{tool}"

    def w(tool: str) -> str:
        return f"{web_server.NAME}/{tool}"

    return {
        "version": 1,
        "approvals": {"timeout": "30s"},
        "tools": {
            h("lookup_order"): {"effects": ["read"], "output": "trusted"},
            h("read_ticket"): {"effects": ["read"]},  # untrusted: MCP's default
            h("send_email"): {"effects": ["external"]},
            h("delete_account"): {"effects": ["delete"]},
            w("fetch_page"): {"effects": ["read"]},
            w("send_email"): {"effects": ["external"]},
            w("noop"): {"effects": ["read"]},
            w("resources/read"): {"effects": ["read"]},
        },
        "agents": {
            "support-bot": {
                "purpose": "answer support tickets",
                "owner": "support@acme.example",
                "tools": {
                    h("lookup_order"): "allow",
                    h("read_ticket"): "allow",
                    h("send_email"): {"ask": 'args.to.endsWith("@partner.example")'},
                    h("delete_account"): "allow",
                    w("fetch_page"): "allow",
                    w("send_email"): {"ask": 'args.to.endsWith("@partner.example")'},
                    w("noop"): "allow",
                    w("resources/read"): "allow",
                },
            }
        },
        "rules": [
            {"id": "no-deletion", "tools": [h("delete_account")], "action": "deny", "reason": "people delete"},
        ],
    }


@dataclass
class Proxy:
    """Everything a test needs to start a proxy in front of a server and check what happened."""

    folder: Path
    store_url: str
    log: Path
    policy_file: Path

    def store(self) -> AuditStore:
        return AuditStore(self.store_url)  # the key file next to it, which the proxy made

    def events(self, kind: str | None = None) -> list[Any]:
        store = self.store()
        try:
            return [e for e in store.events() if kind is None or e.kind == kind]
        finally:
            store.close()

    def ran(self) -> list[tuple[str, dict[str, Any]]]:
        return mcp_server.ran(self.log)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "TETHER_TEST_MCP_LOG": str(self.log), **extra}

    def params(self, script: str = mcp_server.SCRIPT, *options: str, **env: str) -> StdioServerParameters:
        command = ["-m", "tether.core.cli", "mcp", "proxy", "--policy", str(self.policy_file)]
        command += ["--agent", "support-bot", "--store", self.store_url, *options, "--", sys.executable, script]
        return StdioServerParameters(command=sys.executable, args=command, env=self.env(**env), cwd=self.folder)

    @contextlib.asynccontextmanager
    async def client(self, script: str = mcp_server.SCRIPT, *options: str, **env: str) -> AsyncIterator[ClientSession]:
        async with (
            stdio_client(self.params(script, *options, **env)) as (read, write),
            ClientSession(read, write, read_timeout_seconds=timedelta(seconds=60)) as session,
        ):
            await session.initialize()
            yield session


@pytest.fixture
def proxy(tmp_path: Path) -> Proxy:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy()))
    return Proxy(tmp_path, f"sqlite:///{tmp_path / 'tether.db'}", tmp_path / "ran.jsonl", policy_file)


def text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)
