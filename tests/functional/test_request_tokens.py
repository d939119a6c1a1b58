"""CloudFormation refuses a ClientRequestToken outside [a-zA-Z0-9][-a-zA-Z0-9]* (at most 128 characters;
CreateStack API reference), which moto does not check: the request itself is asserted.

An operator's incident id may hold . _ : (starter.INCIDENT_ID), and it flows into the execution id.
"""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.workflow.steps.common import TOKEN_PATTERN, client_request_token
from tests.functional.test_recovery_chain import Env, _Hooks, hooks  # noqa: F401 - the chain's fixtures
from tests.functional.test_recovery_chain import env as chain_env  # noqa: F401


@pytest.fixture
def env(chain_env: Env) -> Env:  # noqa: F811 - the chain tests' world
    return chain_env


@pytest.mark.parametrize("execution_id", [
    "rec-inc.2026:12_05", "rec-manual-20261205T101010Z", "drill-game-day-1", "rb-rec-a.b",
    "rec-" + "x" * 130, "rec-...:::___",
])
def test_tokens_always_match_what_cloudformation_accepts(execution_id: str) -> None:
    token = client_request_token(execution_id, "create")
    assert TOKEN_PATTERN.fullmatch(token) and len(token) <= 128, token
    assert client_request_token(execution_id, "create") == token  # the same request, the same token


def test_ids_that_differ_only_in_forbidden_characters_get_different_tokens() -> None:
    tokens = {client_request_token(f"rec-inc{sep}1", "create") for sep in (".", "_", ":", "-")}
    assert len(tokens) == 4


def test_a_recovery_for_an_incident_id_with_dots_and_colons_creates_its_stack(
    env: Env, hooks: _Hooks  # noqa: F811
) -> None:
    sent: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sent.append(str(params.get("ClientRequestToken")))

    hooks.on("before-parameter-build.cloudformation.CreateStack", record)
    execution = env.recover("inc.2026-12-05:us_east_1")
    assert execution.status == "succeeded", execution.error
    assert sent and all(TOKEN_PATTERN.fullmatch(token) and len(token) <= 128 for token in sent), sent
