"""The operator dashboard (web/dashboard) in real Chromium against a live node.

One page session walks what an operator does: log in with the token, create a customer
and an instance (keys, features, suspension), watch a live room whose two participants
are real Chromium pages (their bitrate moving), mute one (the other page stops hearing
it), record the room (play, download, delete the recording) and remove the other,
webhook deliveries with a redelivery, usage and invoices (the chart's bars, the totals and the
invoice's lines equal to usage written through the meter's path), the audit log and the nodes. A second
context logs in as an instance's administrator and sees only its own customer, rooms
and log. Browser pages are the slowest tests, so the checks share these pages.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from decimal import Decimal

from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from gbmedia.tenancy import usage
from gbmedia.tenancy.tokens import Grants, mint_token
from gbmedia.tenancy.usage import UsageEvent
from tests.browser import Browser, Tab
from tests.helpers import OPERATOR, OPERATOR_TOKEN, Tenant, create_tenant
from tests.recording.helpers import recorder_frames
from tests.rtc import wait_for
from tests.web.test_room_page import STATE_TIMEOUT, open_joined, tile, wait_hearing

QUALITY_TIMEOUT = 45.0  # first media and the node's first stats samples, two cores shared


async def known_usage(node: Node, customer_id: str, instance_id: str) -> list[UsageEvent]:
    """Usage written as the meter writes it (usage.record): three hours of this month, so the
    chart's buckets and the invoice's lines have known values."""
    now = dt.datetime.now(dt.UTC)
    period_start = usage.period_bounds(now)[0]
    hours = [max(period_start, now - dt.timedelta(hours=back)) for back in (0, 1, 26)]
    cid, iid = uuid.UUID(customer_id), uuid.UUID(instance_id)
    events = [
        UsageEvent(cid, iid, "publish_minutes", Decimal("100000.25"), "dash-1", hours[2]),
        UsageEvent(cid, iid, "publish_minutes", Decimal("400"), "dash-2", hours[1]),
        UsageEvent(cid, iid, "publish_minutes", Decimal("102.5"), "dash-3", hours[0]),
        UsageEvent(cid, iid, "recording_minutes", Decimal("8000"), "dash-4", hours[1]),
        UsageEvent(cid, iid, "messages", Decimal("1200001"), "dash-5", hours[0]),
        UsageEvent(cid, iid, "bytes_out", Decimal(15 * 10**11), "dash-6", hours[2]),
    ]
    assert await usage.record(node.db.pool, events) == len(events)
    return events


def expected_bars(events: list[UsageEvent], granularity: str) -> dict[str, dict[str, float]]:
    """What the chart must draw: per kind, each bucket's start and its sum."""
    bars: dict[str, dict[str, float]] = {}
    for e in events:
        at = e.occurred_at.replace(minute=0, second=0, microsecond=0)
        if granularity == "day":
            at = at.replace(hour=0)
        key = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        per_kind = bars.setdefault(e.kind, {})
        per_kind[key] = per_kind.get(key, 0) + float(e.quantity)
    return bars


async def drawn_bars(tab: Tab) -> dict[str, dict[str, float]]:
    drawn = await tab.evaluate(
        "[...document.querySelectorAll('.usage-kind')].map(f => [f.dataset.kind, "
        "[...f.querySelectorAll('rect.bar')].map(r => [r.dataset.t, Number(r.dataset.v)])])"
    )
    return {kind: dict(bars) for kind, bars in drawn}


def money(cents: int, currency: str) -> str:
    return f"{cents // 100:,}.{cents % 100:02d} {currency}"


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

    # Usage, invoices and the subscription of Globex, from known usage written through the meter's own path.
    written = await known_usage(node, customer_id, instance_id)
    await go(dash, "usage")
    await dash.page.select_option("#usage-customer", customer_id)
    await dash.wait_for(f"document.getElementById('usage-box').dataset.loaded === '{customer_id}/day'")
    assert await drawn_bars(dash) == expected_bars(written, "day")
    await dash.page.select_option("#usage-granularity", "hour")
    await dash.wait_for(f"document.getElementById('usage-box').dataset.loaded === '{customer_id}/hour'")
    assert await drawn_bars(dash) == expected_bars(written, "hour")
    # Bar heights are to scale within each kind's chart; the totals table shows each kind's sum.
    heights = await dash.evaluate(
        "[...document.querySelectorAll('.usage-kind[data-kind=publish_minutes] rect.bar')]"
        ".map(r => [Number(r.dataset.v), Number(r.getAttribute('height'))])"
    )
    tallest = max(heights)
    assert all(abs(h / tallest[1] - v / tallest[0]) < 0.01 for v, h in heights)
    totals = await dash.evaluate(
        "[...document.querySelectorAll('#usage-totals tbody tr')].map(r => [r.dataset.kind, r.cells[1].textContent])"
    )
    assert totals == [
        ["publish_minutes", "100502.75 min"],
        ["recording_minutes", "8000 min"],
        ["messages", "1200001"],
        ["bytes_out", "1.5 TB"],
    ]
    shown = await dash.evaluate("document.getElementById('subscription').dataset.status")
    subscription = (await api(site, "GET", f"/api/v1/customers/{customer_id}/subscription"))["subscription"]
    assert shown == subscription["status"] == "active" and subscription["plan_id"] == "pro"
    assert "pro tier" in await dash.evaluate("document.getElementById('subscription').textContent")

    # Generate this month's invoice: its lines and total are the pro tier's prices of that usage.
    assert await dash.evaluate("document.getElementById('invoice-table')") is None
    await dash.page.fill("#invoice-form [name=period]", written[0].occurred_at.strftime("%Y-%m"))
    await dash.page.click("#invoice-form button[type=submit]")
    await dash.page.wait_for_selector(
        "#invoice-detail[data-invoice-id] #invoice-total"
    )  # a draft (open past its month)
    lines = await dash.evaluate(
        "[...document.querySelectorAll('#invoice-lines tbody tr')].map(r => "
        "[r.dataset.kind, ...[...r.cells].map(c => c.textContent)])"
    )
    by_kind = {line[0]: line[1:] for line in lines}
    assert by_kind["subscription"][-1] == "199.00 USD"
    # pro: 100,000 publishing minutes included, 0.32 cents each beyond -> 502.75 x 0.32 = 160.88 -> 161
    assert by_kind["publish_minutes"] == [
        "Publishing minutes",
        "100502.75 minute",
        "100000",
        "502.75",
        "0.32¢",
        "1.61 USD",
    ]
    # 6,000 recording minutes included, 0.8 cents beyond -> 2,000 x 0.8 = 1,600
    assert by_kind["recording_minutes"][1:] == ["8000 minute", "6000", "2000", "0.8¢", "16.00 USD"]
    # 1,000,000 messages included, 0.008 cents beyond -> 200,001 x 0.008 = 1,600.008 -> 1,600
    assert by_kind["messages"][1:] == ["1200001 message", "1000000", "200001", "0.008¢", "16.00 USD"]
    # 1,000 GB included, 4 cents a GB beyond -> 500 x 4 = 2,000
    assert by_kind["bytes_out"][1:] == ["1500 GB", "1000", "500", "4¢", "20.00 USD"]
    assert {k: v[-1] for k, v in by_kind.items() if k not in ("subscription", *(e.kind for e in written))} == {
        "subscribe_minutes": "0.00 USD",
        "viewer_minutes": "0.00 USD",
        "storage_bytes": "0.00 USD",
    }
    total = 19900 + 161 + 1600 + 1600 + 2000
    assert await dash.evaluate("document.getElementById('invoice-total').textContent") == money(total, "USD")
    invoice_id = await dash.evaluate("document.getElementById('invoice-detail').dataset.invoiceId")
    number = (await api(site, "GET", f"/api/v1/invoices/{invoice_id}"))["number"]
    assert (await api(site, "GET", f"/api/v1/invoices/{invoice_id}"))["total_cents"] == total
    row = f"#invoice-table tr[data-invoice-id='{invoice_id}']"
    await dash.page.wait_for_selector(row)
    assert await dash.evaluate(f'document.querySelector("{row}").cells[3].textContent') == money(total, "USD")
    # The printable page opens in a new tab, fetched with the token (never in its URL).
    async with dash.page.context.expect_page() as opened:
        await dash.page.click("#invoice-detail button.print")
    printed = await opened.value
    await printed.wait_for_function("document.getElementById('total')")
    assert await printed.evaluate("document.getElementById('total').textContent") == money(total, "USD")
    assert OPERATOR_TOKEN not in printed.url and await printed.title() == f"Invoice {number}"
    assert await printed.evaluate("getComputedStyle(document.body).marginTop") == "28px"  # its own style applies
    await printed.close()
    # Reloaded (per day again), the list opens the same invoice; a period not begun is the API's 400, shown.
    await dash.page.select_option("#usage-granularity", "day")
    await dash.wait_for(f"document.getElementById('usage-box').dataset.loaded === '{customer_id}/day'")
    assert await dash.evaluate("document.getElementById('invoice-detail').dataset.invoiceId") is None
    await dash.page.click(f"{row} button.open")
    await dash.wait_for(
        f"document.getElementById('invoice-detail').dataset.invoiceId === '{invoice_id}' && "
        f"document.getElementById('invoice-total').textContent === {money(total, 'USD')!r}"
    )
    await dash.page.fill("#invoice-form [name=period]", "2999-01")
    await dash.page.click("#invoice-form button[type=submit]")
    await dash.wait_for("document.getElementById('status').textContent.startsWith('period_in_future')")
    assert len((await api(site, "GET", f"/api/v1/customers/{customer_id}/invoices"))["invoices"]) == 1

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
    # Its usage view: its own customer only, the invoice the operator made (read-only), its subscription.
    resp = await site.post(
        f"/api/v1/customers/{tenant.customer_id}/invoices",
        json={"period": dt.datetime.now(dt.UTC).strftime("%Y-%m")},
        headers=OPERATOR,
    )
    assert resp.status == 201
    theirs = await resp.json()
    await go(admin, "usage")
    await admin.wait_for(f"document.getElementById('usage-box')?.dataset.loaded === '{tenant.customer_id}/day'")
    assert await admin.evaluate("[...document.querySelectorAll('#usage-customer option')].map(o => o.value)") == [
        tenant.customer_id
    ]
    assert await admin.evaluate("document.getElementById('invoice-form')") is None
    assert await admin.evaluate("document.getElementById('subscription').dataset.status") == "active"
    listed = await admin.evaluate(
        "[...document.querySelectorAll('#invoice-table tbody tr')]"
        ".map(r => [r.dataset.invoiceId, r.cells[3].textContent])"
    )
    assert listed == [[theirs["id"], money(theirs["total_cents"], "USD")]]
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
