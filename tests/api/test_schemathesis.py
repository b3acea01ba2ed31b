"""Property-based requests generated from our OpenAPI document: no input may cause a 5xx.

The operations are listed at collection time from ``create_app().openapi()`` (no server
needed), and ``test_served_schema_is_the_one_tested`` proves the running stack serves that same
document at /openapi.json. Each operation gets a bounded number of examples so the whole run
stays around a minute on 2 cores. (schemathesis' own ``from_fixture`` loader fails under
pytest 9 — ``Function._nodeid`` is gone — so hypothesis is driven directly.)
"""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from api.main import create_app
from tests.support.auth import login_admin
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC: dict[str, Any] = create_app().openapi()
MAX_EXAMPLES = 40
OPERATIONS = [
    cast(Any, result).ok() for result in schemathesis.openapi.from_dict(SPEC).get_all_operations()
]


def test_served_schema_is_the_one_tested(client: httpx.Client) -> None:
    assert client.get("/openapi.json").json() == SPEC


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_no_server_errors(operation: Any, stack: Stack) -> None:
    # Valid inputs and schema-violating ones alike: neither may produce a 5xx. Requests carry
    # an admin token (a session of their own: generated logouts may end it), so they get past
    # authentication and reach the handlers.
    with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
        headers = login_admin(http).headers
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=cases)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=stack.base_url, headers=headers, checks=[not_a_server_error], timeout=30
        )

    check()
