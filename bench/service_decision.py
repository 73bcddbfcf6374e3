"""What asking Tether over HTTP costs: a before_tool through the decision API (uvicorn on
loopback, one keep-alive connection, httpx.Client) against the same before_tool in process,
in one run, on the same kind of store (SQLite files in a temporary directory).

    pip install -e "./core[serve,client]" && python bench/service_decision.py [--calls 500] [--rounds 3] \
        [--http auto|h11|httptools] [--loop auto|asyncio|uvloop]

Prints a Markdown table: median and p99 per decision, and the ratio remote/in-process. The
remote figure includes the credential check (one store read per request), JSON both ways, the
HTTP round trip and the server's thread hop; both figures include the audit commit.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import latencies_us, summary

from tether.core import AuditStore, Credentials, Guard
from tether.core.service.client import RemoteGuard

POLICY = {
    "version": 1,
    "tools": {"search": {"effects": ["read"]}},
    "agents": {"bench": {"purpose": "measure", "owner": "bench@acme.example", "tools": {"search": "allow"}}},
}
CALL = {"tool": "search", "args": {"q": "quarterly invoices", "limit": 10}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(directory: Path, policy: Path, server: list[str]) -> tuple[subprocess.Popen[bytes], str, str]:
    """The API on a free port; its process, base URL and a credential for ``bench``."""
    store_url = f"sqlite:///{directory / 'remote.db'}"
    store = AuditStore(store_url)
    secret = Credentials(store).create("bench")[1]
    store.close()
    port = free_port()
    env = {**os.environ, "TETHER_POLICY": str(policy), "TETHER_STORE": store_url}
    command = [sys.executable, "-m", "uvicorn", "--factory", "tether.core.service.api:factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log", *server]
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            httpx.get(f"{url}/openapi.json")
            return process, url, secret
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("the decision API did not start")


def remote(url: str, secret: str, calls: int) -> list[float]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}) as client:
        session = client.post("/sessions", json={}).json()["session_id"]

        def decide() -> None:
            answer = client.post(f"/sessions/{session}/tool-calls", json=CALL)
            assert answer.status_code == 200 and answer.json()["allowed"], answer.text

        return latencies_us(decide, calls, warmup=100)


def remote_guard(url: str, secret: str, calls: int) -> list[float]:
    with RemoteGuard(url, secret) as guard:
        session = guard.session("bench")

        def decide() -> None:
            decision = session.before_tool(CALL["tool"], CALL["args"])
            assert decision.allowed, decision.reason

        return latencies_us(decide, calls, warmup=100)


def local(directory: Path, policy: Path, calls: int) -> list[float]:
    with Guard(policy, store=f"sqlite:///{directory / 'local.db'}") as guard:
        session = guard.session("bench")

        def decide() -> None:
            assert session.before_tool(CALL["tool"], CALL["args"]).allowed

        return latencies_us(decide, calls, warmup=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--http", default="auto", help="uvicorn's HTTP protocol: auto, h11 or httptools")
    parser.add_argument("--loop", default="auto", help="uvicorn's event loop: auto, asyncio or uvloop")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        policy = directory / "policy.yaml"
        policy.write_text(yaml.safe_dump(POLICY))
        process, url, secret = serve(directory, policy, ["--http", options.http, "--loop", options.loop])
        try:
            far: list[float] = []
            client: list[float] = []
            near: list[float] = []
            for _ in range(options.rounds):  # alternate, so drift on a shared machine hits both
                far += remote(url, secret, options.calls)
                client += remote_guard(url, secret, options.calls)
                near += local(directory, policy, options.calls)
        finally:
            process.terminate()
            process.wait(30)
    (far_median, far_p99), (near_median, near_p99) = summary(far), summary(near)
    client_median, client_p99 = summary(client)
    server = f"uvicorn --http {options.http} --loop {options.loop}"
    print(f"{len(far)} decisions each, {options.rounds} alternating rounds, {server}\n")
    print("| before_tool | median | p99 |")
    print("|---|---:|---:|")
    print(f"| in process | {near_median:.0f} µs | {near_p99:.0f} µs |")
    print(f"| decision API (HTTP, loopback, keep-alive) | {far_median:.0f} µs | {far_p99:.0f} µs |")
    print(f"| RemoteGuard.before_tool (same server) | {client_median:.0f} µs | {client_p99:.0f} µs |")
    print(f"| ratio (decision API / in process) | {far_median / near_median:.1f}x | {far_p99 / near_p99:.1f}x |")


if __name__ == "__main__":
    main()
