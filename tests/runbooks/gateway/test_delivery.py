"""Delivery to Prefect at its boundary: a small loopback server stands in for Prefect's ``POST /api/events`` (it
validates a batch as a whole, as Prefect does, and refuses the events we name). A refused event goes to the dead
letters without holding back the alerts behind it; ``runbooks gateway status``/``replay`` read and move them; the
API key is sent; delivered rows are pruned after the retention."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr

from runbooks.cli import main
from runbooks.gateway.app import GatewaySettings, create_app
from tests.runbooks.gateway.test_gateway import BEARER, gateway_settings
from tests.servers import serve

LEAKED = "Bearer sk-live-0123456789abcdef"  # a secret Prefect's refusal quotes back: never stored or shown as is


class StubPrefect:
    """Prefect's events endpoint: 204 for a good batch, 422 for a batch holding a refused alert name (the whole batch,
    as Prefect validates it), 503 for a batch holding a "busy" one."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.requests = 0
        self.refuse: set[str] = set()
        self.busy: set[str] = set()
        self.app = FastAPI()
        self.app.post("/api/events")(self._events)

    async def _events(self, request: Request) -> Response:
        self.requests += 1
        self.authorizations.append(request.headers.get("authorization"))
        batch = await request.json()
        names = {e["payload"]["name"] for e in batch}
        if names & self.refuse:
            detail = [{"loc": ["body", 0, "payload"], "msg": "refused", "input": f"Authorization: {LEAKED}"}]
            return JSONResponse({"detail": detail}, status_code=422)
        if names & self.busy:
            return JSONResponse({"detail": "busy"}, status_code=503)
        self.events.extend(batch)
        return Response(status_code=204)


@pytest.fixture()
def prefect() -> Iterator[tuple[StubPrefect, str]]:
    stub = StubPrefect()
    with serve(stub.app) as url:
        yield stub, f"{url}/api"


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def webhook(*names: str) -> dict[str, Any]:
    """One Alertmanager notification with one alert per name (fingerprint = name): one outbox batch."""
    alerts = [{"status": "firing", "labels": {"alertname": n}, "fingerprint": n} for n in names]
    return {"version": "4", "status": "firing", "alerts": alerts}


def runbooks(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(["gateway", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_a_refused_event_is_dead_lettered_and_the_100_behind_it_are_delivered(
    prefect: tuple[StubPrefect, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stub, prefect_url = prefect
    stub.refuse = {"Poison"}
    db = tmp_path / "gw.sqlite3"
    monkeypatch.setenv("RUNBOOKS_GATEWAY_DB_PATH", str(db))
    app = create_app(gateway_settings(db, prefect_url))
    with serve(app) as url:
        good = [f"Good{n:03d}" for n in range(100)]
        r = httpx.post(f"{url}/alerts/alertmanager", json=webhook("Poison", *good), headers=BEARER)
        assert r.status_code == 202
        poison_incident = r.json()["incidents"][0]["incident_id"]
        wait_for(lambda: len(stub.events) == 100)
        assert sorted(e["payload"]["name"] for e in stub.events) == good
        wait_for(lambda: app.state.store.pending() == 0)
        (letter,) = app.state.store.dead_letters()
        assert (letter.status, letter.incident_id, letter.event) == (422, poison_incident, "runbooks.incident.opened")
        assert "refused" in letter.reason and LEAKED not in letter.reason
        assert _outbox(db).keys() == set(good)  # out of the outbox: never tried again, nothing waits behind it

        code, out, _ = runbooks(capsys, "status")
        assert code == 2  # there are dead letters, as `check` exits on a FAIL
        assert out[0] == "pending 0, delivered 100, dead-lettered 1"
        assert len(out) == 2 and out[1].startswith(
            f"dead letter {letter.id}: runbooks.incident.opened incident {poison_incident}, Prefect answered 422 at "
        )
        assert "refused" in out[1] and "sk-live" not in out[1]

        code, _, err = runbooks(capsys, "replay", "--id", "999999")
        assert code == 2 and err[0] == "error: no dead letter 999999 (see `runbooks gateway status`)" and len(err) == 1
        assert len(app.state.store.dead_letters()) == 1

        stub.refuse = set()  # fixed on Prefect's side: the operator replays it
        code, _, err = runbooks(capsys, "replay", "--id", str(letter.id))
        assert code == 0 and err == [f"1 dead letter(s) back in the outbox: {letter.id}"]
        wait_for(lambda: len(stub.events) == 101)
        assert stub.events[-1]["payload"]["incident_id"] == poison_incident
        wait_for(lambda: app.state.store.pending() == 0)  # Prefect has it; the store marks it delivered just after
        code, out, _ = runbooks(capsys, "status")
        assert (code, out) == (0, ["pending 0, delivered 101, dead-lettered 0"])


def test_status_without_a_database_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNBOOKS_GATEWAY_DB_PATH", str(tmp_path / "absent.sqlite3"))
    for argv in (["status"], ["replay", "--all"]):
        code, out, err = runbooks(capsys, *argv)
        assert code == 2 and out == [] and len(err) == 1
        assert "RUNBOOKS_GATEWAY_DB_PATH" in err[0] and "absent.sqlite3" in err[0]
    assert not (tmp_path / "absent.sqlite3").exists()


def test_a_busy_prefect_keeps_the_events_and_a_refused_request_dead_letters_them(
    prefect: tuple[StubPrefect, str], tmp_path: Path
) -> None:
    stub, prefect_url = prefect
    stub.busy = {"Busy"}
    app = create_app(gateway_settings(tmp_path / "gw.sqlite3", prefect_url))
    with serve(app) as url:
        assert httpx.post(f"{url}/alerts/alertmanager", json=webhook("Busy"), headers=BEARER).status_code == 202
        wait_for(lambda: stub.requests >= 2)  # retried, backing off
        assert app.state.store.pending() == 1 and app.state.store.dead_letters() == []
        stub.busy = set()
        wait_for(lambda: app.state.store.pending() == 0)
        assert [e["payload"]["name"] for e in stub.events] == ["Busy"]
    # a 401 (a wrong API key) refuses the request, whatever is in it: the batch goes to the dead letters in one step
    unauthorized = FastAPI()
    unauthorized.post("/api/events")(lambda: JSONResponse({"detail": "Unauthorized"}, status_code=401))
    with serve(unauthorized) as refusing:
        app = create_app(gateway_settings(tmp_path / "gw2.sqlite3", f"{refusing}/api"))
        with serve(app) as url:
            assert httpx.post(f"{url}/alerts/alertmanager", json=webhook("A", "B"), headers=BEARER).status_code == 202
            wait_for(lambda: len(app.state.store.dead_letters()) == 2)
            assert {d.status for d in app.state.store.dead_letters()} == {401}


def test_prefect_api_key_is_sent_as_a_bearer_token_and_never_shown(
    prefect: tuple[StubPrefect, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, prefect_url = prefect
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_gateway_test_key")
    settings = gateway_settings(tmp_path / "gw.sqlite3", prefect_url)
    assert settings.prefect_api_key is not None and "pnu_gateway_test_key" not in repr(settings)
    with serve(create_app(settings)) as url:
        assert httpx.post(f"{url}/alerts/alertmanager", json=webhook("Keyed"), headers=BEARER).status_code == 202
        wait_for(lambda: len(stub.events) == 1)
    assert stub.authorizations == ["Bearer pnu_gateway_test_key"]

    monkeypatch.delenv("PREFECT_API_KEY")
    assert GatewaySettings(token=SecretStr("t")).prefect_api_key is None
    with serve(create_app(gateway_settings(tmp_path / "gw2.sqlite3", prefect_url))) as url:
        assert httpx.post(f"{url}/alerts/alertmanager", json=webhook("Open"), headers=BEARER).status_code == 202
        wait_for(lambda: len(stub.events) == 2)
    assert stub.authorizations[1] is None


def _outbox(db: Path) -> dict[str, float | None]:
    """Alert name -> delivered_at, for every row of the outbox."""
    import json

    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT event, delivered_at FROM outbox").fetchall()
    return {json.loads(event)["payload"]["name"]: delivered for event, delivered in rows}


def test_delivered_rows_older_than_the_retention_are_pruned(prefect: tuple[StubPrefect, str], tmp_path: Path) -> None:
    stub, prefect_url = prefect
    stub.busy, stub.refuse = {"Pending"}, {"Refused"}
    db = tmp_path / "gw.sqlite3"
    settings = gateway_settings(db, prefect_url).model_copy(
        update={"delivered_retention_s": 3600.0, "prune_interval_s": 0.05}
    )
    app = create_app(settings)
    with serve(app) as url:
        for name in ("Old", "Recent", "Refused"):
            assert httpx.post(f"{url}/alerts/alertmanager", json=webhook(name), headers=BEARER).status_code == 202
        wait_for(lambda: len(stub.events) == 2 and len(app.state.store.dead_letters()) == 1)
        assert httpx.post(f"{url}/alerts/alertmanager", json=webhook("Pending"), headers=BEARER).status_code == 202
        wait_for(lambda: stub.requests >= 5)  # tried (and kept: Prefect is busy)
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # two hours ago, as if delivered then
            conn.execute("UPDATE outbox SET created_at = created_at - 7200")  # every row made long ago...
            conn.execute("UPDATE outbox SET delivered_at = delivered_at - 7200 WHERE id = (SELECT min(id) FROM outbox)")
            conn.execute("UPDATE dead_letters SET created_at = created_at - 7200, dead_at = dead_at - 7200")
        wait_for(lambda: "Old" not in _outbox(db))
        rows = _outbox(db)
    assert set(rows) == {"Recent", "Pending"}  # ...only the one delivered long ago goes; the undelivered one stays
    assert rows["Recent"] is not None and rows["Pending"] is None
    with contextlib.closing(sqlite3.connect(db)) as conn:  # a dead letter waits for the operator, however old
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 1
