"""The operator dashboard (web/dashboard) in real Chromium against a live node.

One page session walks what an operator does: log in with the token, create a customer
and an instance (keys, features, suspension), watch a live room whose two participants
are real Chromium pages (their bitrate moving), mute one (the other page stops hearing
it), record the room (play, download, delete the recording) and remove the other,
webhook deliveries with a redelivery, usage, the audit log and the nodes. A second
context logs in as an instance's administrator and sees only its own customer, rooms
and log. Browser pages are the slowest tests, so the checks share these pages.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.browser import Browser, Tab
from tests.helpers import OPERATOR, OPERATOR_TOKEN, Tenant, create_tenant
from tests.recording.helpers import recorder_frames
from tests.rtc import wait_for
from tests.web.test_room_page import STATE_TIMEOUT, open_joined, tile, wait_hearing

QUALITY_TIMEOUT = 45.0  # first media and the node's first stats samples, two cores shared


def page_errors(tab: Tab) -> list[str]:
    """The page's errors but the network log of answers the test provoked (401, 404)."""
    return [e for e in tab.errors if "Failed to load resource" not in e]


async def api(site: TestClient, method: str, path: str, headers: dict[str, str] = OPERATOR) -> dict:
    resp = await site.request(method, path, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def go(tab: Tab, view: str) -> None:
    await tab.page.click(f"#nav button[data-view={view}]")
    await tab.wait_for(f"gbdash.view === {view!r}")


async def log_in(browser: Browser, site: TestClient, token: str) -> Tab:
    tab = await browser.open(str(site.make_url("/web/dashboard/")))
    await tab.wait_for("document.body.dataset.phase === 'login'")
    await tab.page.fill("#token-input", token)
    await tab.page.click("#login-button")
    return tab


async def test_the_operator_runs_tenants_rooms_webhooks_and_audit_from_the_dashboard(
    site: TestClient, node: Node, tenant: Tenant, browser: Browser
):
    # A wrong token is refused on the login form, naming the problem.
    dash = await log_in(browser, site, "not-a-token")
    await dash.wait_for("!document.getElementById('login-error').hidden")
    assert "token" in await dash.evaluate("document.getElementById('login-error').textContent")
    await dash.page.fill("#token-input", OPERATOR_TOKEN)
    await dash.page.click("#login-button")
    await dash.wait_for("document.body.dataset.phase === 'ready'")
    assert await dash.evaluate("gbdash.who.kind") == "operator"
    assert await dash.evaluate("sessionStorage.getItem('gbmedia.dashboard.token')") == OPERATOR_TOKEN
    assert OPERATOR_TOKEN not in await dash.evaluate("location.href")

    # Customers: create one, change its tier and quota, suspend and reactivate it.
    await go(dash, "customers")
    await dash.page.fill("#customer-form [name=name]", "Globex")
    await dash.page.select_option("#customer-form [name=tier]", "starter")
    await dash.page.click("#customer-form button[type=submit]")
    row = "#customer-table tr:has(.name:text-is('Globex'))"
    await dash.page.wait_for_selector(row)
    customer_id = await dash.page.get_attribute(row, "data-customer-id")
    await dash.page.select_option(f"{row} select.tier", "pro")
    await dash.page.fill(f"{row} input.max-instances", "5")
    await dash.page.click(f"{row} button.save")
    await dash.wait_for("document.getElementById('status').textContent === 'Customer Globex saved.'")
    detail = await api(site, "GET", f"/api/v1/customers/{customer_id}")
    assert (detail["customer"]["subscription_tier"], detail["customer"]["max_instances"]) == ("pro", 5)
    await dash.page.click(f"{row} button.suspend")
    await dash.page.wait_for_selector(f"tr[data-customer-id='{customer_id}'][data-status=suspended]")
    assert (await api(site, "GET", f"/api/v1/customers/{customer_id}"))["customer"]["status"] == "suspended"
    await dash.page.click(f"tr[data-customer-id='{customer_id}'] button.activate")
    await dash.page.wait_for_selector(f"tr[data-customer-id='{customer_id}'][data-status=active]")

    # Its instances: create one (key and secret shown once), switch a feature off, add and revoke a key.
    await dash.page.click(f"tr[data-customer-id='{customer_id}'] button.instances")
    await dash.page.wait_for_selector("#instance-form")
    await dash.page.fill("#instance-form [name=name]", "studio")
    await dash.page.click("#instance-form button[type=submit]")
    await dash.page.wait_for_selector("#credentials .secret-value input")
    secret = await dash.page.input_value("#credentials .secret-value input")
    assert len(secret) > 20
    instance_id = await dash.evaluate("document.getElementById('instance-detail').dataset.instanceId")
    await dash.page.uncheck("#instance-settings input[data-feature=bots]")
    await dash.page.click("#instance-settings button[type=submit]")
    await dash.wait_for(
        "document.querySelector('#instance-settings input[data-feature=bots]')?.checked === false"
        " && !document.getElementById('credentials')"
    )
    assert (await api(site, "GET", f"/api/v1/instances/{instance_id}"))["features"]["bots"] is False
    await dash.page.click("#create-key")
    await dash.page.wait_for_selector("#key-table tbody tr >> nth=1")
    await dash.page.click("#key-table tr[data-revoked=false] button.revoke >> nth=0")
    await dash.page.wait_for_selector("#key-table tr[data-revoked=true]")
    keys = (await api(site, "GET", f"/api/v1/instances/{instance_id}/keys"))["keys"]
    assert sorted(k["revoked_at"] is None for k in keys) == [False, True]

    # A live room: two real participants, their bitrate moving on the dashboard.
    alice = await open_joined(browser, site, tenant, "alice")
    bob = await open_joined(browser, site, tenant, "bob")
    await wait_hearing(bob, "Alice")
    await go(dash, "rooms")
    await dash.page.click("#room-table tr[data-name=standup] button.open")
    card = "#participants .participant[data-identity={}]"
    await dash.wait_for("document.getElementById('participants')?.dataset.count === '2'", timeout=STATE_TIMEOUT)
    first = await dash.wait_for(
        f"(() => {{ const c = document.querySelector({card.format('alice')!r}); "
        "return c && Number(c.dataset.bitrateIn) > 0 && {t: c.dataset.sampledAt, v: c.dataset.bitrateIn}; })()",
        timeout=QUALITY_TIMEOUT,
    )
    moved = await dash.wait_for(
        f"(() => {{ const c = document.querySelector({card.format('alice')!r}); return c && c.dataset.sampledAt !== "
        f"{first['t']!r} && Number(c.dataset.bitrateIn) > 0 && c.dataset.bitrateIn !== {first['v']!r} && "
        "c.querySelector('.bitrate-in').textContent; })()",
        timeout=QUALITY_TIMEOUT,
    )
    assert moved.endswith("b/s")
    await dash.wait_for(
        f"Number(document.querySelector({card.format('bob')!r})?.dataset.bitrateIn) > 0", timeout=QUALITY_TIMEOUT
    )
    await dash.wait_for(
        "document.querySelectorAll('#bitrate-chart polyline.series').length === 2 && "
        "document.querySelector('#bitrate-chart polyline.series').getAttribute('points').split(' ').length >= 2"
    )
    await dash.wait_for("document.querySelectorAll('#rtt-chart polyline.series').length >= 1", timeout=QUALITY_TIMEOUT)

    # Mute alice's microphone from the dashboard: bob's page, which hears her now, stops hearing her.
    silent = """(async () => {
        const bytes = async () => (await gbroom.stats()).audio.find(a => a.name === 'Alice')?.bytesReceived;
        const before = await bytes();
        await new Promise(r => setTimeout(r, 1500));
        return before !== undefined && (await bytes()) === before;
    })()"""
    assert await bob.evaluate(silent) is False
    await dash.page.click(f"{card.format('alice')} .track[data-kind=audio] button.mute")
    await dash.page.wait_for_selector(f"{card.format('alice')} .track[data-kind=audio][data-muted=true]")
    await bob.wait_for(tile("Alice", "?.querySelector('.badge.mic-muted')?.checkVisibility()"), timeout=STATE_TIMEOUT)
    assert await bob.wait_for(silent, timeout=STATE_TIMEOUT)

    # Record the room from the dashboard (bob watching alice keeps her video flowing), stop it,
    # then play, download and delete the recording.
    await dash.page.click("#record-room")
    await dash.page.wait_for_selector("#recordings .recording button.stop:visible")
    rid = await dash.page.get_attribute("#recordings .recording", "data-recording-id")
    await wait_for(lambda: max(recorder_frames(node, rid).values(), default=0) >= 30, within=QUALITY_TIMEOUT)
    await dash.page.click("#recordings .recording button.stop")
    done = f"#recordings .recording[data-recording-id='{rid}'][data-status=completed]"
    await dash.page.wait_for_selector(done, timeout=STATE_TIMEOUT * 1000)
    video_row = f"{done} tr[data-kind=video][data-status=completed]"
    await dash.page.click(f"{video_row} button.play")
    await dash.wait_for(
        "(() => { const v = document.querySelector('#recordings video.playback'); "
        "return v && v.readyState >= 1 && v.videoWidth > 0; })()",
        timeout=STATE_TIMEOUT,
    )
    name = await dash.page.get_attribute(video_row, "data-file")
    files = (await api(site, "GET", f"/api/v1/recordings/{rid}"))["files"]
    (size,) = [f["size_bytes"] for f in files if f["name"] == name]
    async with dash.page.expect_download() as download_info:
        await dash.page.click(f"{video_row} button.download")
    download = await download_info.value
    assert await asyncio.to_thread(os.path.getsize, await download.path()) == size > 0
    dash.page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await dash.page.click(f"{done} button.delete")
    await dash.wait_for(f"!document.querySelector(\"[data-recording-id='{rid}']\")")
    resp = await site.get(f"/api/v1/recordings/{rid}", headers=OPERATOR)
    assert resp.status == 404

    # And remove bob: his card goes, his page is told.
    await dash.page.click(f"{card.format('bob')} button.remove")
    await dash.wait_for("document.getElementById('participants').dataset.count === '1'", timeout=STATE_TIMEOUT)
    await bob.wait_for("document.body.dataset.phase === 'ended'", timeout=STATE_TIMEOUT)

    # Webhooks: add an endpoint, send a test event, see the delivery and redeliver it.
    await go(dash, "webhooks")
    await dash.page.select_option("#webhook-instance", tenant.instance_id)
    await dash.page.wait_for_selector("#webhook-form")
    await dash.page.fill("#webhook-form [name=url]", "https://hooks.example.invalid/gbmedia")
    await dash.page.click("#webhook-form button[type=submit]")
    await dash.page.wait_for_selector(".new-secret .secret input")
    await dash.page.click("#webhook-table button.test")
    delivery = "#delivery-table tr[data-event=test]"
    await dash.page.wait_for_selector(delivery)
    await dash.page.click(f"{delivery} button.redeliver")
    await dash.wait_for("document.getElementById('status').textContent.includes('queued again')")

    # Usage and invoices: this node has no metering routes, and says so.
    await go(dash, "usage")
    await dash.page.select_option("#usage-customer", tenant.customer_id)
    await dash.wait_for(
        "document.querySelector('#usage-chart .unavailable')?.textContent.includes('not available on this node')"
        " && document.querySelector('#invoices .unavailable')"
    )

    # What the chart draws once metering answers: one bar per bucket and kind, heights to scale.
    heights = await dash.evaluate("""(async () => {
        const { usageSeries } = await import('/web/dashboard/views/usage.js');
        const { lineChart } = await import('/web/dashboard/chart.js');
        const svg = lineChart(usageSeries([
            { start: '2026-12-01T00:00:00Z', amounts: { participant_minutes: 30, recording_minutes: 5 } },
            { start: '2026-12-02T00:00:00Z', amounts: { participant_minutes: 45, recording_minutes: 0 } },
        ]), { kind: 'bars' });
        return [...svg.querySelectorAll('rect.bar')].map(r => Number(r.getAttribute('height')));
    })()""")
    assert len(heights) == 4
    assert heights[1] == max(heights) > 0 and heights[3] == 0  # participant minutes 30, 45; recording 5, 0
    assert abs(heights[0] / heights[1] - 30 / 45) < 0.01 and abs(heights[2] / heights[1] - 5 / 45) < 0.01

    # The audit log, filtered by action: what the dashboard just did is there.
    await go(dash, "audit")
    await dash.page.fill("#audit-filter [name=action]", "webhook.")
    await dash.page.click("#audit-filter button[type=submit]")
    await dash.page.wait_for_selector("#audit-table tr[data-action='webhook.redeliver']")
    actions = await dash.evaluate("[...document.querySelectorAll('#audit-table tbody tr')].map(r => r.dataset.action)")
    assert actions and all(a.startswith("webhook.") for a in actions)
    await dash.page.fill("#audit-filter [name=action]", "")
    await dash.page.fill("#audit-filter [name=customer_id]", customer_id)
    await dash.page.click("#audit-filter button[type=submit]")
    await dash.page.wait_for_selector("#audit-table tr[data-action='api_key.revoke']")
    assert "participant.mute_track" not in await dash.evaluate(
        "[...document.querySelectorAll('#audit-table tbody tr')].map(r => r.dataset.action)"
    )

    # Nodes and their load, drawn over time.
    await go(dash, "nodes")
    await dash.page.wait_for_selector("#node-table tr[data-node-id]")
    await dash.page.wait_for_selector("#node-cpu-chart svg.chart")
    assert page_errors(dash) == []
    alice.assert_no_errors()
    for tab in (alice, bob):  # out of the room now: the node's stop at the end need not close their sessions
        await tab.close()

    # An instance's administrator sees its own customer, rooms and log, never another's.
    other = await create_tenant(site, "initech")
    resp = await site.post(
        "/api/v1/rooms", json={"name": "initech-board", "instance_id": other.instance_id}, headers=OPERATOR
    )
    assert resp.status == 201
    admin = await log_in(browser, site, tenant.token("ops"))
    await admin.wait_for("document.body.dataset.phase === 'ready'")
    assert await admin.evaluate("document.querySelector('#nav [data-view=nodes]').hidden") is True
    await go(admin, "customers")
    await admin.page.wait_for_selector("#customers tr[data-customer-id]")
    shown = await admin.evaluate(
        "[...document.querySelectorAll('#customers tr[data-customer-id]')].map(r => r.dataset.customerId)"
    )
    assert shown == [tenant.customer_id]
    await go(admin, "rooms")
    await admin.page.wait_for_selector("#room-table tr[data-name=standup]")
    assert await admin.evaluate("document.querySelector('#room-table tr[data-name=initech-board]')") is None
    await go(admin, "audit")
    await admin.page.wait_for_selector("#audit-table tbody tr")
    audited = await admin.evaluate(
        "[...document.querySelectorAll('#audit-table tbody tr td:nth-child(5)')].map(t => t.textContent)"
    )
    assert set(audited) <= {tenant.customer_id, ""}
    # Asking for the other customer by id is the API's 404, shown as such.
    answer = await admin.evaluate(
        "(async () => { const m = await import('/web/dashboard/api.js'); try { await m.get("
        f"'customers/{other.customer_id}'); return 'visible'; }} catch (e) {{ return e.status; }} }})()"
    )
    assert answer == 404
    # Its "Start a meeting" opens the room in its own instance.
    await go(admin, "meeting")
    await admin.page.click("#start-meeting")
    await admin.page.wait_for_selector("#join-links .guest-link input")
    opened = (await api(site, "GET", f"/api/v1/rooms?instance_id={tenant.instance_id}"))["rooms"]
    assert any(r["name"].startswith("meeting-") for r in opened)
    assert page_errors(admin) == []
    # A participant's token administers nothing: refused at the door.
    participant = await log_in(
        browser, site, mint_token(tenant.key, tenant.secret, "carol", Grants.participant("standup"))
    )
    await participant.wait_for("!document.getElementById('login-error').hidden")
    assert "instance_admin" in await participant.evaluate("document.getElementById('login-error').textContent")
