"""Property-based tests of the decision API from its own OpenAPI document (schemathesis), against
a live server: generated requests never get a server error, and none is answered without a
valid credential."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings

from tests.support import require

require("fastapi", "the decision API needs tether[serve]")
schemathesis = require("schemathesis", "property-based API tests need schemathesis")

from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from tether.core import Guard  # noqa: E402
from tether.core.service.api import api_app  # noqa: E402

from .service_server import POLICY, Server, serving  # noqa: E402

CHECKS = [not_a_server_error, ignored_auth, status_code_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("openapi")) as running:
        yield running


@pytest.fixture(scope="module")
def context(server: Server) -> dict[str, Any]:
    """A credential, and an open session of its agent for the generated requests to land in."""
    headers = {"Authorization": f"Bearer {server.credential('bot')}"}
    session = httpx.post(f"{server.url}/sessions", json={}, headers=headers).json()["session_id"]
    return {"headers": headers, "session": session}


def _document() -> dict[str, Any]:
    """The API's OpenAPI document, built in process (the tests are generated before any server runs)."""
    with (
        tempfile.TemporaryDirectory() as directory,
        Guard(POLICY, store=f"sqlite:///{Path(directory) / 'a.db'}") as guard,
    ):
        return api_app(guard).openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_server_publishes_this_document(server: Server) -> None:
    assert httpx.get(f"{server.url}/openapi.json").json() == {**DOCUMENT, "servers": [{"url": "/v1"}]}


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_auth_everywhere(case: Any, server: Server, context: dict[str, Any]) -> None:
    if case.path_parameters and "session_id" in case.path_parameters:
        case.path_parameters["session_id"] = context["session"]  # reach past the 404 most of the time
    case.call_and_validate(base_url=server.url, headers=context["headers"], checks=CHECKS)
    if case.method.upper() != case.operation.method.upper():
        return  # a method the path does not have (405 whoever asks)
    if any("\n" in str(value) for value in (case.path_parameters or {}).values()):
        return  # a path with a newline matches no route of the server (404 whoever asks)
    anonymous = case.call(base_url=server.url, headers={"Authorization": ""})
    assert anonymous.status_code == 401, (
        f"{case.method} {case.path} answered {anonymous.status_code} without a credential"
    )
