"""A live decision API: uvicorn in a subprocess on 127.0.0.1, on a free port, for the tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import free_port, listening, wait_until
from tether.core import AuditStore, Credentials

POLICY: dict[str, Any] = {
    "version": 1,
    "approvals": {"timeout": "3s"},
    "tools": {
        "search": {"effects": ["read"]},
        "lookup_customer": {"effects": ["read"]},
        "delete_file": {"effects": ["delete"]},
        "refund": {"effects": ["money"]},
    },
    "agents": {
        "bot": {
            "purpose": "answer customers",
            "owner": "support@acme.example",
            "data": [],  # may see no personal data or secrets: tool output is redacted
            "tools": {"search": "allow", "lookup_customer": "allow", "refund": {"ask": "args.amount > 50"}},
        },
        "other-bot": {"purpose": "another team's agent", "owner": "ops@acme.example", "tools": {"search": "allow"}},
    },
}


SIGN_IN_TOKEN = "t" * 24  # an approver's, for the page served beside the API


@dataclass
class Server:
    url: str  # the API's base, ending in /v1
    store_url: str

    def store(self) -> AuditStore:
        return AuditStore(self.store_url)

    def credential(self, agent: str, **options: Any) -> str:
        store = self.store()
        try:
            return Credentials(store).create(agent, **options)[1]
        finally:
            store.close()


@contextlib.contextmanager
def serving(directory: Path, *, max_body: int = 65_536, cli: bool = False) -> Iterator[Server]:
    """The API served alone by uvicorn's factory, or (``cli``) by ``tether serve --policy`` beside
    the approvals page, as an operator runs it."""
    policy = directory / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    store_url = f"sqlite:///{directory / 'audit.db'}"
    AuditStore(store_url).close()  # created before the server and the tests open it
    port = free_port()
    env = {**os.environ, "TETHER_POLICY": str(policy), "TETHER_STORE": store_url, "TETHER_MAX_BODY": str(max_body)}
    if cli:
        command = [sys.executable, "-m", "tether.core.cli", "serve", "--policy", str(policy), "--store", store_url]
        command += ["--port", str(port), "--token", f"alice={SIGN_IN_TOKEN}"]
    else:
        command = [sys.executable, "-m", "uvicorn", "--factory", "tether.core.service.api:factory"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    log = (directory / "server.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: listening(port) or process.poll() is not None, 60, f"the decision API on port {port}")
        assert process.poll() is None, (directory / "server.log").read_text()
        yield Server(f"http://127.0.0.1:{port}/v1", store_url)
    finally:
        process.terminate()
        process.wait(30)
        log.close()
