"""The gateway's OpenAPI document is its contract: schemathesis, with every check, generates requests from it (valid
and invalid bodies, with valid credentials and without) against the real server, and the server answers as the
document says: no 5xx, no valid request refused, no invalid one accepted, every answer of a documented shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig

from runbooks.gateway.app import create_app
from tests.runbooks.gateway.test_gateway import BEARER, gateway_settings
from tests.servers import serve

# Every check on (schemathesis's default). An invalid body is refused with one of these; 413 is the gateway's documented
# answer to a body over 1 MB, which generated bodies far over the schema's string limits reach (not in the default
# list); no 5xx, which schemathesis's default would let pass for an invalid request.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
CONFIG = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}})


@pytest.fixture(scope="module")
def gateway_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    db: Path = tmp_path_factory.mktemp("openapi") / "gw.sqlite3"
    with serve(create_app(gateway_settings(db))) as url:  # events go nowhere: delivery is not under test here
        yield schemathesis.openapi.from_url(f"{url}/openapi.json", config=CONFIG)


def test_the_document_describes_bodies_authentication_and_refusals(gateway_schema: schemathesis.BaseSchema) -> None:
    document = gateway_schema.raw_schema
    security = document["components"]["securitySchemes"]
    assert security["bearer"] == {"type": "http", "scheme": "bearer", "description": "RUNBOOKS_GATEWAY_TOKEN"}
    assert {security[s]["name"] for s in ("signature", "timestamp")} == {"X-Runbooks-Signature", "X-Runbooks-Timestamp"}
    for path, model in (
        ("/alerts/alertmanager", "AlertmanagerWebhook"),
        ("/alerts/grafana", "GrafanaWebhook"),
        ("/alerts/generic", "GenericAlert"),
    ):
        operation = document["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
        assert set(operation["responses"]) == {"202", "401", "409", "413", "422"}
        assert operation["security"] == [{"bearer": []}, {"signature": [], "timestamp": []}]
    assert document["components"]["schemas"]["AlertmanagerWebhook"]["properties"]["version"]["const"] == "4"


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
@pytest.mark.parametrize("credentials", [BEARER, {}], ids=["with-credentials", "without-credentials"])
def test_every_operation_answers_as_documented(
    gateway_schema: schemathesis.BaseSchema, mode: schemathesis.GenerationMode, credentials: dict[str, str]
) -> None:
    """Every check of schemathesis (its default set is all of them), 25 examples per operation and mode.

    The lazy ``schemathesis.pytest.from_fixture`` does not run on pytest 9 (it reads ``Function._nodeid``), so the
    cases come from each operation's hypothesis strategy."""
    operations = [result.ok() for result in gateway_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /alerts/alertmanager", "POST /alerts/generic", "GET /incidents"}
    for operation in operations:
        if mode is schemathesis.GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # no body, and a free string query: nothing there can be made invalid

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_as_documented(case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers=credentials)
            assert response.status_code < 500

        answers_as_documented()
