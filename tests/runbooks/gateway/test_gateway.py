"""The alert gateway on a real server: authentication, replays, validation, dedup across restarts, and no alert
lost while Prefect is down."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from runbooks.gateway.app import GatewaySettings, create_app, sign
from tests.servers import serve

TOKEN = "gateway-test-token"
SECRET = "gateway-test-hmac-secret"


NO_PREFECT = "http://127.0.0.1:9/api"  # the discard port: a privileged port nothing of ours can listen on


def gateway_settings(db: Path, prefect_url: str = NO_PREFECT) -> GatewaySettings:
    """The gateway's settings for an app built in this process: no GC freeze, events to ``prefect_url``
    (the harness's server where a test reads them back, else an address where nothing answers)."""
    return GatewaySettings(
        token=SecretStr(TOKEN),
        hmac_secret=SecretStr(SECRET),
        db_path=db,
        prefect_api_url=prefect_url,
        delivery_interval_s=0.1,
        max_backoff_s=0.5,
        freeze_gc=False,
    )


def alertmanager(
    alertname: str = "HighErrorRate", status: str = "firing", fingerprint: str = "fp-1", **labels: str
) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "status": status,
        "receiver": "runbooks",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": alertname, "severity": "critical", **labels},
                "annotations": {"summary": f"{alertname} on ai-multimodel-api"},
                "startsAt": "2026-11-26T10:00:00Z",
                "fingerprint": fingerprint,
            }
        ],
    }


BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def gateway(tmp_path: Path) -> Any:
    app = create_app(gateway_settings(tmp_path / "gw.sqlite3"))
    with serve(app) as url:
        yield url, app


def test_bearer_token(gateway: Any) -> None:
    url, app = gateway
    assert httpx.post(f"{url}/alerts/alertmanager", json=alertmanager()).status_code == 401
    wrong = httpx.post(f"{url}/alerts/alertmanager", json=alertmanager(), headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = httpx.post(f"{url}/alerts/alertmanager", json=alertmanager(), headers=BEARER)
    assert ok.status_code == 202 and ok.json()["incidents"][0]["action"] == "opened"
    assert len(app.state.store.incidents()) == 1
    assert httpx.get(f"{url}/incidents").status_code == 401
    assert [i["status"] for i in httpx.get(f"{url}/incidents", headers=BEARER).json()] == ["open"]


def test_hmac_signature_window_and_replay(gateway: Any) -> None:
    url, app = gateway
    body = json.dumps(alertmanager(fingerprint="fp-hmac")).encode()
    headers = {**sign(SECRET, body), "Content-Type": "application/json"}
    assert httpx.post(f"{url}/alerts/alertmanager", content=body, headers=headers).status_code == 202
    replay = httpx.post(f"{url}/alerts/alertmanager", content=body, headers=headers)
    assert replay.status_code == 409 and "replayed" in replay.text
    stale = {**sign(SECRET, body, stamp=time.time() - 3600), "Content-Type": "application/json"}
    assert httpx.post(f"{url}/alerts/alertmanager", content=body, headers=stale).status_code == 401
    tampered = body.replace(b"fp-hmac", b"fp-evil")
    assert httpx.post(f"{url}/alerts/alertmanager", content=tampered, headers=headers).status_code == 401
    assert [i["fingerprint"] for i in app.state.store.incidents()] == ["fp-hmac"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=json_values, path=st.sampled_from(["alertmanager", "grafana", "generic"]))
def test_malformed_alerts_get_4xx_and_trigger_nothing(gateway: Any, payload: Any, path: str) -> None:
    url, app = gateway
    before = app.state.store.pending()
    response = httpx.post(f"{url}/alerts/{path}", json=payload, headers=BEARER)
    if response.status_code == 202:  # hypothesis found a valid alert: it must then be a real one
        assert path == "generic" and isinstance(payload, dict) and payload.get("name")
        return
    assert 400 <= response.status_code < 500, response.text
    assert app.state.store.pending() == before


def test_garbage_bytes_are_422(gateway: Any) -> None:
    url, _ = gateway
    response = httpx.post(f"{url}/alerts/alertmanager", content=b"\xff\xfe{not json", headers=BEARER)
    assert response.status_code == 422


def test_dedup_survives_restart_and_resolution(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite3"
    with serve(create_app(gateway_settings(db))) as url:
        first = httpx.post(f"{url}/alerts/alertmanager", json=alertmanager(fingerprint="fp-r"), headers=BEARER).json()
        again = httpx.post(f"{url}/alerts/alertmanager", json=alertmanager(fingerprint="fp-r"), headers=BEARER).json()
    assert again["incidents"][0] == {**first["incidents"][0], "action": "repeated"}
    app = create_app(gateway_settings(db))
    with serve(app) as url:  # a restarted gateway still knows the open incident
        after = httpx.post(f"{url}/alerts/alertmanager", json=alertmanager(fingerprint="fp-r"), headers=BEARER)
        assert after.json()["incidents"][0]["incident_id"] == first["incidents"][0]["incident_id"]
        resolved = httpx.post(
            f"{url}/alerts/alertmanager", json=alertmanager(status="resolved", fingerprint="fp-r"), headers=BEARER
        ).json()
        assert resolved["incidents"][0]["action"] == "resolved"
        reopened = httpx.post(f"{url}/alerts/alertmanager", json=alertmanager(fingerprint="fp-r"), headers=BEARER)
        assert reopened.json()["incidents"][0]["action"] == "opened"
        assert [i["status"] for i in app.state.store.incidents()] == ["resolved", "open"]


async def _events(name: str, incident_ids: set[str]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=str(PREFECT_API_URL.value())) as client:
        response = await client.post(
            "/events/filter",
            json={"filter": {"event": {"name": [name]}, "occurred": {"since": "2026-01-01T00:00:00Z"}}, "limit": 50},
        )
        response.raise_for_status()
    return [
        e
        for e in response.json()["events"]
        if e["resource"]["prefect.resource.id"].removeprefix("runbooks.incident.") in incident_ids
    ]


def _failed_attempts(db: Path) -> int:
    """Outbox events not delivered after at least one attempt."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        query = "SELECT count(*) FROM outbox WHERE attempts > 0 AND delivered_at IS NULL"
        return int(conn.execute(query).fetchone()[0])


def test_an_app_built_in_process_leaves_the_gc_alone(tmp_path: Path) -> None:
    import gc

    frozen = gc.get_freeze_count()
    with serve(create_app(gateway_settings(tmp_path / "gw.sqlite3"))):
        assert gc.get_freeze_count() == frozen
    assert GatewaySettings(token=SecretStr(TOKEN)).freeze_gc  # on by default: `runbooks gateway serve`


@pytest.mark.usefixtures("prefect_harness")
async def test_alerts_sent_while_prefect_is_down_are_delivered_after(tmp_path: Path) -> None:
    import asyncio

    db = tmp_path / "gw.sqlite3"
    down = create_app(gateway_settings(db))
    ids = set()
    with serve(down) as url:
        async with httpx.AsyncClient() as client:
            for n in range(5):
                r = await client.post(
                    f"{url}/alerts/generic",
                    headers=BEARER,
                    json={"name": "ServiceDown", "fingerprint": f"down-{n}", "severity": "critical"},
                )
                assert r.status_code == 202
                ids.add(r.json()["incidents"][0]["incident_id"])
        deadline = time.monotonic() + 20
        while _failed_attempts(db) < 5 and time.monotonic() < deadline:  # every event tried, and refused
            await asyncio.sleep(0.05)
        assert _failed_attempts(db) == 5
        assert down.state.store.pending() == 5  # accepted, kept, not lost
    up = create_app(gateway_settings(db, str(PREFECT_API_URL.value())))  # Prefect is back (and the gateway restarted)
    with serve(up) as url:
        deadline = time.monotonic() + 20
        while up.state.store.pending() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert up.state.store.pending() == 0
        deadline = time.monotonic() + 20
        found: list[dict[str, Any]] = []
        while len(found) < 5 and time.monotonic() < deadline:
            found = await _events("runbooks.incident.opened", ids)
            await asyncio.sleep(0.5)
    assert {e["resource"]["prefect.resource.id"] for e in found} == {f"runbooks.incident.{i}" for i in ids}
    assert all(e["payload"]["severity"] == "critical" for e in found)


async def test_concurrent_duplicates_make_one_incident_each_and_every_alert_counts(
    gateway: Any, tmp_path: Path
) -> None:
    import asyncio
    import sqlite3

    url, app = gateway
    async with httpx.AsyncClient(base_url=url, headers=BEARER, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post("/alerts/alertmanager", json=alertmanager(fingerprint=f"fp-c{n % 10}")) for n in range(200))
        )
    assert {r.status_code for r in responses} == {202}
    incidents = app.state.store.incidents()
    assert sorted(i["fingerprint"] for i in incidents) == sorted(f"fp-c{n}" for n in range(10))
    assert sum(i["alerts"] for i in incidents) == 200  # group commits: every acknowledged alert was written
    actions = [r.json()["incidents"][0]["action"] for r in responses]
    assert actions.count("opened") == 10 and actions.count("repeated") == 190
    with contextlib.closing(sqlite3.connect(tmp_path / "gw.sqlite3")) as db:  # delivered or not
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 10  # one event per incident, none per repeat


def test_metrics_count_alerts_and_the_outbox(gateway: Any) -> None:
    """``/metrics`` is Prometheus text (read back with prometheus_client's parser): what Prometheus scrapes."""
    from prometheus_client.parser import text_string_to_metric_families

    url, _ = gateway
    for fingerprint in ("fp-a", "fp-a", "fp-b"):
        sent = httpx.post(f"{url}/alerts/alertmanager", json=alertmanager(fingerprint=fingerprint), headers=BEARER)
        assert sent.status_code == 202
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    opened = samples[("runbooks_gateway_alerts_total", (("action", "opened"), ("source", "alertmanager")))]
    assert opened == 2  # two fingerprints, two incidents; the repeat is counted under its own outcome
    assert sum(v for (name, _), v in samples.items() if name == "runbooks_gateway_alerts_total") == 3
    assert samples[("runbooks_gateway_outbox_events", (("state", "pending"),))] == 2  # nothing answers for Prefect
