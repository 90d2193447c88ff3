"""Webhooks end to end: real events of a node reach a real receiver, signed, retried, dead-lettered.

The receiver is an aiohttp server on 127.0.0.1 (tests/tenancy/webhook_receiver.py), which
the node may reach only because these tests allow loopback with
``GBMEDIA_WEBHOOK_ALLOW_NETWORKS``; retries wait 0.2 s, doubling, and a delivery is dead
after 3 failed attempts. A node killed mid-delivery: tests/tenancy/test_webhook_crash.py.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.app import NODE
from gbmedia.config import Settings
from gbmedia.tenancy.tokens import Grants, mint_token
from gbmedia.tenancy.webhook_events import signature
from tests.conftest import make_settings
from tests.helpers import OPERATOR, Tenant, bearer, create_tenant
from tests.rtc import ColorVideoTrack
from tests.tenancy.test_isolation import _recording_of
from tests.tenancy.webhook_receiver import Received, Receiver, create_endpoint, delivered_or_dead, deliveries

MEETING_EVENTS = [
    "room_started",
    "participant_joined",
    "track_published",
    "message_created",
    "track_unpublished",
    "participant_left",
    "room_finished",
]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        webhook_allow_networks="127.0.0.0/8",
        webhook_backoff_seconds=0.2,
        webhook_max_attempts=3,
        webhook_timeout_seconds=5,
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.close()


def assert_signed(request: Received, secret: str) -> None:
    """The request carries the documented headers and a valid v1 signature of its exact body."""
    headers = request.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Gbmedia-Webhook-Id"] == request.json["id"]
    assert headers["X-Gbmedia-Webhook-Event"] == request.json["type"]
    expected = signature(secret, headers["X-Gbmedia-Webhook-Timestamp"], request.body)
    assert hmac.compare_digest(headers["X-Gbmedia-Webhook-Signature"], expected)


async def test_a_meeting_with_an_aiortc_peer_and_a_chat_message_is_told_signed(
    client: TestClient, tenant: Tenant, rtc, receiver: Receiver
):
    hook_id, secret = await create_endpoint(client, tenant, receiver.url(), MEETING_EVENTS)
    alice = await rtc()
    joined = await alice.join(mint_token(tenant.key, tenant.secret, "alice", Grants.participant("standup")))
    assert joined["type"] == "joined", joined
    published = await alice.publish(ColorVideoTrack((0, 200, 0)))
    track_id = published["tracks"][0]["id"]
    as_alice = bearer(mint_token(tenant.key, tenant.secret, "alice", Grants()))
    resp = await client.post("/api/v1/conversations", json={"members": ["bob"]}, headers=as_alice)
    assert resp.status == 201, await resp.text()
    conversation = (await resp.json())["id"]
    resp = await client.post(
        f"/api/v1/conversations/{conversation}/messages",
        json={"content": "hello hooks", "idempotency_key": "m1"},
        headers=as_alice,
    )
    assert resp.status == 201, await resp.text()
    room_id = joined["room"]["id"]
    resp = await client.delete(f"/api/v1/rooms/{room_id}", headers=tenant.admin)
    assert resp.status == 200, await resp.text()

    await receiver.wait_for(lambda: all(receiver.of_type(t) for t in MEETING_EVENTS))
    for request in receiver.requests:
        assert_signed(request, secret)
        assert request.json["instance_id"] == tenant.instance_id
    (started,) = receiver.of_type("room_started")
    assert started.json["data"]["room"] == {"id": room_id, "name": "standup", "kind": "meeting"}
    (came,) = receiver.of_type("participant_joined")
    assert came.json["data"]["participant"]["identity"] == "alice"
    assert came.json["data"]["participant"]["id"] == joined["participant"]["id"]
    (track,) = receiver.of_type("track_published")
    assert (track.json["data"]["track"]["id"], track.json["data"]["track"]["kind"]) == (track_id, "video")
    (message,) = receiver.of_type("message_created")
    assert message.json["data"]["message"]["content"] == "hello hooks"
    assert message.json["data"]["message"]["sender"] == "alice"
    assert message.json["data"]["message"]["conversation_id"] == conversation
    (went,) = receiver.of_type("participant_left")
    assert went.json["data"]["reason"] == "room_closed"
    (ended,) = receiver.of_type("track_unpublished")
    assert ended.json["data"]["track"]["id"] == track_id
    (finished,) = receiver.of_type("room_finished")
    assert finished.json["data"]["reason"] == "api"
    # Every event has its own id, and the listing shows each delivered at the first attempt.
    assert len({r.json["id"] for r in receiver.requests}) == len(receiver.requests)
    listed = await delivered_or_dead(client, tenant, hook_id)  # the node records an outcome after the answer
    assert {d["event_type"] for d in listed} == set(MEETING_EVENTS)
    assert all(d["status"] == "delivered" and d["attempts"] == 1 for d in listed), listed
    assert all(d["attempt_log"][0]["status_code"] == 200 for d in listed)


async def test_a_live_room_going_on_air_and_its_recording_are_told(
    client: TestClient, tenant: Tenant, rtc, receiver: Receiver
):
    events = ["live_started", "live_ended", "recording_started", "recording_finished"]
    _, secret = await create_endpoint(client, tenant, receiver.url(), events)
    star = await rtc()
    joined = await star.join(mint_token(tenant.key, tenant.secret, "star", Grants.participant("show")), kind="live")
    room_id = joined["room"]["id"]
    track_id = (await star.publish(ColorVideoTrack((200, 0, 0))))["tracks"][0]["id"]
    await receiver.wait_for(lambda: bool(receiver.of_type("live_started")))
    recording = await _recording_of(client, room_id, track_id)  # it has written frames of the track
    resp = await client.post(f"/api/v1/recordings/{recording}/stop", headers=tenant.admin)
    assert resp.status == 200, await resp.text()
    resp = await client.delete(f"/api/v1/rooms/{room_id}", headers=tenant.admin)
    assert resp.status == 200, await resp.text()
    await receiver.wait_for(lambda: all(receiver.of_type(t) for t in events))
    for request in receiver.requests:
        assert_signed(request, secret)
    assert receiver.of_type("live_started")[0].json["data"]["room"]["kind"] == "live"
    (started,) = receiver.of_type("recording_started")
    assert started.json["data"]["recording"]["id"] == recording
    (finished,) = receiver.of_type("recording_finished")
    assert finished.json["data"]["recording"]["id"] == recording
    assert finished.json["data"]["recording"]["status"] == "completed"
    assert len(receiver.of_type("live_ended")) == 1


async def test_a_500_is_retried_with_the_same_event_id_until_delivered(
    client: TestClient, tenant: Tenant, receiver: Receiver
):
    hook_id, secret = await create_endpoint(client, tenant, receiver.url(), ["room_started"])
    receiver.answer = lambda r: 500 if len(receiver.requests) == 1 else 200
    resp = await client.post("/api/v1/rooms", json={"name": "retry"}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    await receiver.wait_for(lambda: len(receiver.requests) >= 2)
    first, second = receiver.requests[:2]
    assert first.headers["X-Gbmedia-Webhook-Id"] == second.headers["X-Gbmedia-Webhook-Id"]
    assert first.body == second.body  # the same bytes, signed afresh
    assert (first.headers["X-Gbmedia-Webhook-Attempt"], second.headers["X-Gbmedia-Webhook-Attempt"]) == ("1", "2")
    assert_signed(first, secret)
    assert_signed(second, secret)

    (delivery,) = await delivered_or_dead(client, tenant, hook_id)
    assert (delivery["status"], delivery["attempts"], delivery["next_attempt_at"]) == ("delivered", 2, None)
    log = delivery["attempt_log"]
    assert [(a["attempt"], a["status_code"], a["error"]) for a in log] == [
        (1, 500, "the receiver answered 500"),
        (2, 200, None),
    ]
    assert all(a["finished_at"] is not None for a in log)
    figures = {sample.name: sample.value for sample in client.app[NODE].webhooks.samples()}
    assert (figures["gbmedia_webhook_delivered_total"], figures["gbmedia_webhook_failed_attempts_total"]) == (1, 1)


async def test_a_delivery_is_dead_after_the_last_attempt_and_redelivered_by_hand(
    client: TestClient, tenant: Tenant, receiver: Receiver
):
    hook_id, secret = await create_endpoint(client, tenant, receiver.url(), ["room_started"])
    receiver.answer = lambda r: 503
    base = f"/api/v1/instances/{tenant.instance_id}/webhooks/{hook_id}"
    resp = await client.post(f"{base}/test", headers=tenant.admin)
    assert resp.status == 202, await resp.text()
    queued = await resp.json()
    assert (queued["event_type"], queued["status"]) == ("test", "pending")
    (dead,) = await delivered_or_dead(client, tenant, hook_id)
    assert (dead["status"], dead["attempts"], dead["id"]) == ("dead", 3, queued["id"])  # GBMEDIA_WEBHOOK_MAX_ATTEMPTS
    assert [a["status_code"] for a in dead["attempt_log"]] == [503, 503, 503]
    assert len(receiver.requests) == 3
    assert {r.headers["X-Gbmedia-Webhook-Id"] for r in receiver.requests} == {str(dead["event_id"])}
    assert receiver.requests[0].json["data"] == {"webhook_id": hook_id}
    resp = await client.get(f"{base}/deliveries", params={"status": "dead"}, headers=tenant.admin)
    assert [d["id"] for d in (await resp.json())["deliveries"]] == [dead["id"]]
    figures = {sample.name: sample.value for sample in client.app[NODE].webhooks.samples()}
    assert (figures["gbmedia_webhook_dead_total"], figures["gbmedia_webhook_failed_attempts_total"]) == (1, 3)
    assert "gbmedia_webhook_dead_total" in await (await client.get("/metrics")).text()

    receiver.answer = lambda r: 204  # the receiver is fixed; the operator sends the dead letter again
    resp = await client.post(f"{base}/deliveries/{dead['id']}/redeliver", headers=tenant.admin)
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["status"] == "pending"
    await receiver.wait_for(lambda: len(receiver.requests) == 4)
    (delivered,) = await delivered_or_dead(client, tenant, hook_id)
    assert (delivered["status"], delivered["attempts"]) == ("delivered", 4)
    assert [a["status_code"] for a in delivered["attempt_log"]] == [503, 503, 503, 204]
    assert_signed(receiver.requests[3], secret)
    # Housekeeping: finished deliveries older than the retention go (here: any age), with their events.
    assert await client.app[NODE].webhooks.trim(older_than=0) == 1
    assert await deliveries(client, tenant, hook_id) == []


async def test_redirects_are_not_followed(client: TestClient, tenant: Tenant, receiver: Receiver):
    hook_id, _ = await create_endpoint(client, tenant, receiver.url(), ["room_started"])
    receiver.answer = lambda r: 302  # Location: /elsewhere
    resp = await client.post(f"/api/v1/instances/{tenant.instance_id}/webhooks/{hook_id}/test", headers=tenant.admin)
    assert resp.status == 202, await resp.text()
    (dead,) = await delivered_or_dead(client, tenant, hook_id)
    assert dead["status"] == "dead"
    assert dead["attempt_log"][0]["error"] == "the receiver answered 302: redirects are not followed"
    assert [r.path for r in receiver.requests] == ["/hook"] * 3  # never /elsewhere


async def test_a_disabled_endpoint_gets_nothing_until_enabled(client: TestClient, tenant: Tenant, receiver: Receiver):
    hook_id, _ = await create_endpoint(client, tenant, receiver.url(), ["room_started", "room_finished"])
    base = f"/api/v1/instances/{tenant.instance_id}/webhooks/{hook_id}"
    resp = await client.patch(base, json={"enabled": False, "events": ["room_started"]}, headers=tenant.admin)
    assert resp.status == 200, await resp.text()
    assert ((await resp.json())["enabled"], (await resp.json())["events"]) == (False, ["room_started"])
    resp = await client.post(f"{base}/test", headers=tenant.admin)
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "webhook_disabled")
    resp = await client.post("/api/v1/rooms", json={"name": "quiet"}, headers=tenant.admin)
    assert resp.status == 201
    assert await deliveries(client, tenant, hook_id) == []  # disabled: no event was written for it
    resp = await client.patch(base, json={"enabled": True}, headers=tenant.admin)
    assert resp.status == 200
    resp = await client.post("/api/v1/rooms", json={"name": "loud"}, headers=tenant.admin)
    assert resp.status == 201
    await receiver.wait_for(lambda: len(receiver.requests) == 1)
    assert receiver.requests[0].json["data"]["room"]["name"] == "loud"
    resp = await client.patch(base, json={"enabled": None}, headers=tenant.admin)
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "null_field")


async def test_crud_shows_the_secret_once_and_audits_every_change(client: TestClient, tenant: Tenant):
    base = f"/api/v1/instances/{tenant.instance_id}/webhooks"
    hook_id, secret = await create_endpoint(client, tenant, "https://hooks.example.invalid/a", ["live_started"])
    assert secret.startswith("whsec_") and len(secret) > 40
    for path in (base, f"{base}/{hook_id}"):
        resp = await client.get(path, headers=tenant.admin)
        assert resp.status == 200
        assert secret not in await resp.text()
    resp = await client.post(base, json={"url": "https://x.example.invalid/", "events": ["nope"]}, headers=tenant.admin)
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "validation_failed")
    resp = await client.post(base, json={"url": "https://x.example.invalid/", "events": []}, headers=tenant.admin)
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "validation_failed")
    resp = await client.delete(f"{base}/{hook_id}", headers=tenant.admin)
    assert resp.status == 200
    resp = await client.get(f"{base}/{hook_id}", headers=tenant.admin)
    assert (resp.status, (await resp.json())["error"]["code"]) == (404, "webhook_not_found")
    resp = await client.get(f"{base}/{hook_id}/deliveries", headers=tenant.admin)
    assert resp.status == 404
    resp = await client.get(f"{base}/{uuid.uuid4()}/deliveries", params={"status": "lost"}, headers=tenant.admin)
    assert resp.status == 404
    resp = await client.post(f"{base}/{hook_id}/deliveries/abc/redeliver", headers=tenant.admin)
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "invalid_id")
    resp = await client.get("/api/v1/audit", headers=tenant.admin)
    actions = [e["action"] for e in (await resp.json())["entries"] if e["target_type"] == "webhook"]
    assert actions == ["webhook.delete", "webhook.create"]


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://[::ffff:192.168.1.1]/hook",
        "http://100.64.0.1/hook",
        "ftp://hooks.example.invalid/hook",
        "https://user:pass@hooks.example.invalid/hook",
        "not a url",
    ],
)
async def test_urls_to_private_addresses_are_refused(client: TestClient, tenant: Tenant, url: str):
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/webhooks",
        json={"url": url, "events": ["room_started"]},
        headers=tenant.admin,
    )
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "webhook_url_refused"), url


async def test_an_endpoint_of_another_instance_is_404(client: TestClient, tenant: Tenant):
    other = await create_tenant(client, "other")
    hook_id, _ = await create_endpoint(client, tenant, "https://hooks.example.invalid/a", ["room_started"])
    resp = await client.post(f"/api/v1/instances/{tenant.instance_id}/webhooks/{hook_id}/test", headers=tenant.admin)
    delivery = (await resp.json())["id"]
    mine = f"/api/v1/instances/{other.instance_id}/webhooks/{hook_id}"  # the other admin's instance, A's endpoint
    theirs = f"/api/v1/instances/{tenant.instance_id}/webhooks/{hook_id}"  # A's instance and endpoint
    for method, path, body in [
        ("GET", mine, None),
        ("PATCH", mine, {"enabled": False}),
        ("DELETE", mine, None),
        ("POST", f"{mine}/test", None),
        ("GET", f"{mine}/deliveries", None),
        ("POST", f"{mine}/deliveries/{delivery}/redeliver", None),
    ]:
        resp = await client.request(method, path, json=body, headers=other.admin)
        assert (resp.status, (await resp.json())["error"]["code"]) == (404, "webhook_not_found"), (method, path)
    for method, path in [("GET", theirs), ("DELETE", theirs), ("GET", f"{theirs}/deliveries")]:
        resp = await client.request(method, path, headers=other.admin)
        assert (resp.status, (await resp.json())["error"]["code"]) == (404, "instance_not_found"), (method, path)
    resp = await client.get(f"/api/v1/instances/{other.instance_id}/webhooks", headers=other.admin)
    assert (await resp.json())["webhooks"] == []
    resp = await client.get(theirs, headers=OPERATOR)  # untouched
    assert (await resp.json())["enabled"] is True


async def test_a_recording_a_crash_interrupted_is_told_finished_at_the_next_start(
    client: TestClient, tenant: Tenant, receiver: Receiver
):
    """What a crash leaves (a row still 'recording', as tests/recording/test_failures.py makes it) is
    closed out by the node's recovery, in a transaction that also writes its recording_finished event."""
    node = client.app[NODE]
    _, secret = await create_endpoint(client, tenant, receiver.url(), ["recording_finished"])
    resp = await client.post("/api/v1/rooms", json={"name": "cut"}, headers=tenant.admin)
    room = await resp.json()
    rid = uuid.uuid4()
    await node.db.pool.execute(
        """INSERT INTO recordings (id, customer_id, instance_id, room_id, kinds, status, storage, node_id,
                                   started_by, started_at)
           VALUES ($1, $2, $3, $4, '{tracks}', 'recording', 'local', $5, 'x', now() - interval '5 seconds')""",
        rid,
        uuid.UUID(tenant.customer_id),
        uuid.UUID(tenant.instance_id),
        uuid.UUID(room["id"]),
        node.settings.node_id,
    )
    assert await node.recordings.recover() == 1
    await receiver.wait_for(lambda: len(receiver.requests) == 1)
    (told,) = receiver.requests
    assert_signed(told, secret)
    recording = told.json["data"]["recording"]
    assert (recording["id"], recording["status"], recording["stop_reason"]) == (str(rid), "failed", "interrupted")
    assert recording["duration_seconds"] >= 5 and recording["error"].startswith("interrupted")
    assert told.json["data"]["room"] == {"id": room["id"], "name": "cut", "kind": "meeting"}
