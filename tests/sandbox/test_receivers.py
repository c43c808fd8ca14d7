"""The notification receivers check credentials like the real services and record what arrives."""

from __future__ import annotations

import httpx

from sandbox.manager import Sandbox


def test_slack_webhook_and_bot_api(sandbox: Sandbox, receivers_url: str) -> None:
    secrets = sandbox.state.secrets()
    ok = httpx.post(f"{receivers_url}/slack/webhook/{secrets['slack_webhook_token']}", json={"text": "hi"})
    assert ok.status_code == 200 and ok.text == "ok"
    assert httpx.post(f"{receivers_url}/slack/webhook/wrong", json={"text": "hi"}).status_code == 404
    bot = {"Authorization": f"Bearer {secrets['slack_bot_token']}"}
    posted = httpx.post(
        f"{receivers_url}/slack/api/chat.postMessage", headers=bot, json={"channel": "#c", "text": "first"}
    ).json()
    assert posted["ok"] and posted["ts"]
    refused = httpx.post(
        f"{receivers_url}/slack/api/chat.postMessage",
        headers={"Authorization": "Bearer no"},
        json={"channel": "#c", "text": "x"},
    ).json()
    assert refused == {"ok": False, "error": "invalid_auth"}
    got = httpx.get(f"{receivers_url}/_received", params={"system": "slack"}).json()
    assert [e["kind"] for e in got] == ["webhook", "chat.postMessage"]


def test_pagerduty_and_opsgenie(sandbox: Sandbox, receivers_url: str) -> None:
    secrets = sandbox.state.secrets()
    event = {
        "routing_key": secrets["pagerduty_routing_key"],
        "event_action": "trigger",
        "dedup_key": "k1",
        "payload": {"summary": "s", "severity": "critical", "source": "t"},
    }
    answer = httpx.post(f"{receivers_url}/pagerduty/v2/enqueue", json=event)
    assert answer.status_code == 202 and answer.json()["dedup_key"] == "k1"
    assert httpx.post(f"{receivers_url}/pagerduty/v2/enqueue", json={**event, "routing_key": "bad"}).status_code == 400
    genie = {"Authorization": f"GenieKey {secrets['opsgenie_api_key']}"}
    assert httpx.post(f"{receivers_url}/opsgenie/v2/alerts", headers=genie, json={"message": "m"}).status_code == 202
    assert httpx.post(f"{receivers_url}/opsgenie/v2/alerts", json={"message": "m"}).status_code == 401
    recorded = httpx.get(f"{receivers_url}/_received").json()
    assert [(e["system"], e["kind"]) for e in recorded] == [("pagerduty", "trigger"), ("opsgenie", "create")]
    assert secrets["pagerduty_routing_key"] not in str(recorded)
