"""The meeting page (web/room) in real Chromium tabs against a real node.

The node serves the page and the signaling socket on the machine's interface address
(ICE uses that address here; tests/browser.py explains why), every tab joins with its
own participant token, and the assertions read what the page itself reports through
``window.gbroom``, its DOM, and WebRTC statistics. Timeouts are generous (the machines
running this have two shared cores); nothing asserts how long anything took.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from gbmedia.sfu import fanout
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.browser import Browser, Tab
from tests.helpers import OPERATOR, Tenant

# A server bug (not the page's): gbmedia/sfu/peers.py builds its RTCPeerConnections with
# aiortc's default bundle policy, "balanced". aiortc then gives a second transceiver of a
# kind the transport of the first one and marks it bundled; when the answer's BUNDLE moves
# the first one onto the primary transport, the second is skipped and stays on a transport
# that is stopped. So a subscriber whose FIRST offer holds two tracks of the kind that is
# not first (a late joiner in a room with two publishers: the second video) never
# receives that track: the server's DownTrack never binds (sender not started, mid None).
# The same holds for a publisher whose first offer has two video m-lines. The fix is
# bundlePolicy=RTCBundlePolicy.MAX_BUNDLE for both peers (browsers always bundle).
MEDIA_TIMEOUT = 45.0  # seconds: first frames, with three tabs encoding and decoding on two cores
STATE_TIMEOUT = 20.0


def subscriber_bundle_split(node: Node, identity: str) -> bool:
    """True when the server's subscriber connection for ``identity`` sends on more than one transport."""
    for live in node.live_rooms.live.values():
        for participant in live.participants.values():
            if participant.identity == identity and participant.subscriber is not None:
                transceivers = participant.subscriber.pc.getTransceivers()
                return len({t.sender.transport for t in transceivers}) > 1
    return False


def join_link(
    site: TestClient,
    tenant: Tenant,
    identity: str,
    room: str = "standup",
    *,
    grants: Grants | None = None,
    **query: str,
) -> str:
    token = mint_token(tenant.key, tenant.secret, identity, grants or Grants.participant(room), name=identity.title())
    return str(site.make_url("/web/room/")) + "?" + urlencode({"token": token, **query})


async def open_joined(browser: Browser, site: TestClient, tenant: Tenant, identity: str, **query: str) -> Tab:
    tab = await browser.open(join_link(site, tenant, identity, autojoin="1", **query))
    await tab.wait_for("window.gbroom && gbroom.joined", timeout=STATE_TIMEOUT)
    return tab


def video_of(name: str) -> str:
    """JS: the stats of the camera video this page receives from ``name`` (undefined until it does)."""
    return f"(await gbroom.stats()).video.find(v => v.name === {name!r} && v.source === 'camera')"


async def wait_decoding(tab: Tab, name: str) -> dict:
    """Until the page decodes and renders ``name``'s camera, and keeps decoding it."""
    first = await tab.wait_for(
        f"(async () => {{ const v = {video_of(name)}; return v && v.framesDecoded > 0 && v.videoWidth > 0 && v; }})()",
        timeout=MEDIA_TIMEOUT,
    )
    later = await tab.wait_for(
        f"(async () => {{ const v = {video_of(name)}; return v && v.framesDecoded >= {first['framesDecoded'] + 10}"
        " && v; })()",
        timeout=MEDIA_TIMEOUT,
    )
    assert later["videoWidth"] > 0 and later["frameWidth"] > 0, later
    return later


async def wait_hearing(tab: Tab, name: str) -> dict:
    """Until audio from ``name`` arrives, keeps arriving, and plays in an ``<audio>`` element."""
    js = f"(await gbroom.stats()).audio.find(a => a.name === {name!r})"
    first = await tab.wait_for(
        f"(async () => {{ const a = {js}; return a && a.bytesReceived > 0 && a; }})()", timeout=MEDIA_TIMEOUT
    )
    later = await tab.wait_for(
        f"(async () => {{ const a = {js}; return a && a.bytesReceived > {first['bytesReceived']}"
        f" && a.packetsReceived > {first['packetsReceived'] + 20} && a; }})()",
        timeout=MEDIA_TIMEOUT,
    )
    assert later["playing"] and later["totalSamplesReceived"] > 0, later  # played out, not only received
    return later


def tile(name: str, attribute: str = "") -> str:
    """JS: the remote camera tile captioned ``name``."""
    return (
        "[...document.querySelectorAll('#grid .tile:not(.self):not(.screen)')]"
        f".find(t => t.querySelector('.name').textContent === {name!r})" + attribute
    )


async def test_two_tabs_see_and_hear_each_other_and_a_late_joiner_sees_both(
    site: TestClient, tenant: Tenant, browser: Browser, node: Node
):
    alice = await open_joined(browser, site, tenant, "alice")
    bob = await open_joined(browser, site, tenant, "bob")

    await wait_decoding(alice, "Bob")
    await wait_decoding(bob, "Alice")
    await wait_hearing(alice, "Bob")
    await wait_hearing(bob, "Alice")

    # The grid: own tile first, muted and mirrored; the other's tile plays their video.
    own = await bob.evaluate("""() => {
        const tile = document.querySelector('#grid .tile.self');
        const video = tile.querySelector('video');
        return {name: tile.querySelector('.name').textContent, muted: video.muted,
                mirrored: getComputedStyle(video).transform !== 'none',
                first: tile === document.querySelector('#grid .tile'),
                width: video.videoWidth};
    }""")
    assert own == {"name": "Bob (you)", "muted": True, "mirrored": True, "first": True, "width": own["width"]}
    assert own["width"] > 0
    assert await bob.evaluate(tile("Alice", ".querySelector('video').videoWidth")) > 0
    assert [p["name"] for p in await bob.evaluate("gbroom.participants")] == ["Alice"]

    # A late joiner sees both, and both see it.
    carol = await open_joined(browser, site, tenant, "carol")
    assert sorted(p["name"] for p in await carol.evaluate("gbroom.participants")) == ["Alice", "Bob"]
    await carol.wait_for("document.querySelectorAll('#grid .tile').length === 3", timeout=STATE_TIMEOUT)
    # Its subscriber connection carries four tracks, and media flows on it.
    await carol.wait_for(
        """(async () => {
        const s = await gbroom.stats(), all = [...s.video, ...s.audio];
        return all.length === 4 && all.some(t => t.packetsReceived > 0);
    })()""",
        timeout=MEDIA_TIMEOUT,
    )
    for tab in (alice, bob):
        await wait_decoding(tab, "Carol")
        await wait_hearing(tab, "Carol")
        assert await tab.evaluate("document.querySelectorAll('#grid .tile').length") == 3
    await wait_decoding(alice, "Bob")
    for tab in (alice, bob, carol):
        tab.assert_no_errors()

    # One transport for all four tracks (max-bundle): with aiortc's default the second camera never flowed.
    assert not subscriber_bundle_split(node, "carol")
    for name in ("Alice", "Bob"):
        await wait_decoding(carol, name)
        await wait_hearing(carol, name)
    carol.assert_no_errors()
    # All twelve down tracks (each tab receives the two others' camera and microphone) went through the
    # native fan-out (gbmedia/sfu/_fanout.c), the default wherever it is built (scripts/test builds it).
    path = "native" if fanout.native is not None else "python"
    assert node.live_rooms.down_tracks_by_path()[path] == 12


async def test_muting_shows_on_the_other_page(site: TestClient, tenant: Tenant, browser: Browser):
    alice = await open_joined(browser, site, tenant, "alice")
    bob = await open_joined(browser, site, tenant, "bob")
    await wait_decoding(bob, "Alice")
    await bob.wait_for(tile("Alice", "?.dataset.micMuted === undefined"), timeout=STATE_TIMEOUT)

    await alice.page.click("#mic")
    assert await alice.evaluate("gbroom.micMuted") is True
    assert await alice.evaluate("document.querySelector('#mic').getAttribute('aria-pressed')") == "true"
    assert await alice.evaluate("document.querySelector('#grid .tile.self').dataset.micMuted") == "true"
    await bob.wait_for(tile("Alice", "?.dataset.micMuted === 'true'"), timeout=STATE_TIMEOUT)
    assert await bob.evaluate(tile("Alice", ".querySelector('.badge.mic-muted').checkVisibility()"))
    mic = next(t for t in (await bob.evaluate("gbroom.participants"))[0]["tracks"] if t["source"] == "microphone")
    assert mic["muted"] is True

    await alice.evaluate("gbroom.toggleCamera()")
    await bob.wait_for(tile("Alice", "?.dataset.cameraOff === 'true'"), timeout=STATE_TIMEOUT)
    assert await bob.evaluate(tile("Alice", ".querySelector('.avatar').checkVisibility()"))

    await alice.page.click("#mic")
    await alice.evaluate("gbroom.toggleCamera()")
    await bob.wait_for(tile("Alice", "?.dataset.micMuted === undefined"), timeout=STATE_TIMEOUT)
    await bob.wait_for(tile("Alice", "?.dataset.cameraOff === undefined"), timeout=STATE_TIMEOUT)
    await wait_decoding(bob, "Alice")
    alice.assert_no_errors()
    bob.assert_no_errors()


async def test_leaving_removes_the_tile_on_the_other_page(site: TestClient, tenant: Tenant, browser: Browser):
    alice = await open_joined(browser, site, tenant, "alice")
    bob = await open_joined(browser, site, tenant, "bob")
    await wait_decoding(bob, "Alice")

    await alice.page.click("#leave")
    await alice.wait_for("gbroom.phase === 'left'", timeout=STATE_TIMEOUT)
    await bob.wait_for(tile("Alice") + " === undefined", timeout=STATE_TIMEOUT)
    assert await bob.evaluate("gbroom.participants") == []
    await bob.wait_for("(async () => (await gbroom.stats()).video.length === 0)()", timeout=STATE_TIMEOUT)
    assert await bob.evaluate("document.querySelectorAll('#grid .tile').length") == 1
    # Alice's page is back in the lobby with her camera released, and can join again.
    assert await alice.evaluate("document.querySelector('#lobby').hidden") is False
    assert "left" in await alice.evaluate("document.querySelector('#status').textContent")
    assert await alice.evaluate("join()") is True
    await wait_decoding(bob, "Alice")
    await wait_decoding(alice, "Bob")
    alice.assert_no_errors()
    bob.assert_no_errors()


async def test_a_page_without_a_token_asks_for_a_join_link(site: TestClient, browser: Browser):
    tab = await browser.open(str(site.make_url("/web/room/")))
    await tab.wait_for("window.gbroom && gbroom.phase === 'no_token'", timeout=STATE_TIMEOUT)
    notice = await tab.evaluate("""() => ({visible: document.querySelector('#notice').checkVisibility(),
                                            text: document.querySelector('#notice').textContent,
                                            lobby: document.querySelector('#lobby').checkVisibility(),
                                            grid: document.querySelector('#grid').checkVisibility()})""")
    assert notice["visible"] and not notice["lobby"] and not notice["grid"], notice
    assert "join link" in notice["text"]
    assert await tab.evaluate("gbroom.joined") is False
    tab.assert_no_errors()


async def test_a_page_with_a_token_previews_and_joins_on_the_button(site: TestClient, tenant: Tenant, browser: Browser):
    tab = await browser.open(join_link(site, tenant, "dora"))
    await tab.wait_for("document.querySelector('#preview').videoWidth > 0", timeout=STATE_TIMEOUT)
    assert "Dora" in await tab.evaluate("document.querySelector('#identity').textContent")
    assert await tab.evaluate("gbroom.joined") is False
    await tab.page.click("#join")
    await tab.wait_for("gbroom.joined", timeout=STATE_TIMEOUT)
    assert await tab.evaluate("gbroom.room.name") == "standup"
    await tab.wait_for("Object.keys(gbroom.localTracks).sort().join() === 'camera,microphone'", timeout=STATE_TIMEOUT)
    tab.assert_no_errors()


def viewer_grants(room: str = "standup") -> Grants:
    """A participant that may watch and listen but not publish (can_publish false)."""
    return Grants(room=room, room_join=True, can_subscribe=True, can_publish_data=True)


# Counts the page's calls for a camera or microphone (window.gumCalls).
COUNT_GET_USER_MEDIA = """
window.gumCalls = 0;
const original = navigator.mediaDevices && navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
if (original) navigator.mediaDevices.getUserMedia = (...args) => { window.gumCalls += 1; return original(...args); };
"""


async def test_a_viewer_is_never_asked_for_a_camera_and_sees_no_publish_controls(
    site: TestClient, tenant: Tenant, browser: Browser, node: Node
):
    alice = await open_joined(browser, site, tenant, "alice")
    vera = await browser.open(join_link(site, tenant, "vera", grants=viewer_grants()), init_script=COUNT_GET_USER_MEDIA)
    await vera.wait_for("window.gbroom && gbroom.phase === 'idle'", timeout=STATE_TIMEOUT)
    lobby = await vera.evaluate("""() => ({preview: document.querySelector('#preview-box').checkVisibility(),
                                          identity: document.querySelector('#identity').textContent,
                                          canPublish: gbroom.canPublish})""")
    assert lobby == {"preview": False, "identity": "You will join as Vera to watch and listen.", "canPublish": False}
    await vera.page.click("#join")
    await vera.wait_for("gbroom.joined", timeout=STATE_TIMEOUT)
    await wait_decoding(vera, "Alice")
    await wait_hearing(vera, "Alice")
    shown = await vera.evaluate("""() => ({
        self: document.querySelectorAll('#grid .tile.self').length,
        tiles: document.querySelectorAll('#grid .tile').length,
        mic: document.querySelector('#mic').checkVisibility(),
        camera: document.querySelector('#camera').checkVisibility(),
        screen: document.querySelector('#screen').checkVisibility(),
        leave: document.querySelector('#leave').checkVisibility(),
        localTracks: gbroom.localTracks, gumCalls: window.gumCalls})""")
    assert shown == {
        "self": 0,
        "tiles": 1,
        "mic": False,
        "camera": False,
        "screen": False,
        "leave": True,
        "localTracks": {},
        "gumCalls": 0,
    }, shown
    # Alice sees a participant that sends nothing; nothing of vera's reached the server.
    await alice.wait_for("gbroom.participants.some(p => p.identity === 'vera' && p.tracks.length === 0)")
    vera_there = [
        p for live in node.live_rooms.live.values() for p in live.participants.values() if p.identity == "vera"
    ]
    assert len(vera_there) == 1 and vera_there[0].published == []
    alice.assert_no_errors()
    vera.assert_no_errors()


async def test_an_expired_link_explains_itself(site: TestClient, tenant: Tenant, browser: Browser):
    import time

    token = mint_token(
        tenant.key, tenant.secret, "late", Grants.participant("standup"), ttl_seconds=60, now=time.time() - 3600
    )
    tab = await browser.open(str(site.make_url("/web/room/")) + "?" + urlencode({"token": token, "autojoin": "1"}))
    await tab.wait_for("gbroom.phase === 'error'", timeout=STATE_TIMEOUT)
    assert await tab.evaluate("gbroom.errorCode") == "token_expired"
    assert "expired" in await tab.evaluate("document.querySelector('#lobby-message').textContent")
    tab.assert_no_errors()  # an expected refusal is explained, not logged as an error


async def test_a_dropped_socket_resumes_without_the_others_noticing(site: TestClient, tenant: Tenant, browser: Browser):
    alice = await open_joined(browser, site, tenant, "alice")
    bob = await open_joined(browser, site, tenant, "bob")
    await wait_decoding(alice, "Bob")
    await wait_decoding(bob, "Alice")
    alice_id = await alice.evaluate("gbroom.participantId")
    await bob.evaluate("window.seenLeft = false")

    await alice.evaluate("gbroom.simulateNetworkLoss(1000)")
    await alice.wait_for("gbroom.resumes === 1 && gbroom.joined", timeout=STATE_TIMEOUT)
    assert await alice.evaluate("gbroom.participantId") == alice_id
    assert await alice.evaluate("gbroom.rejoins") == 0
    await wait_decoding(alice, "Bob")
    await wait_decoding(bob, "Alice")
    assert [p["id"] for p in await bob.evaluate("gbroom.participants")] == [alice_id]
    # Signaling works again on the new socket: a mute reaches bob.
    await alice.evaluate("gbroom.toggleMicrophone(true)")
    await bob.wait_for(tile("Alice", "?.dataset.micMuted === 'true'"), timeout=STATE_TIMEOUT)
    alice.assert_no_errors()
    bob.assert_no_errors()


async def test_a_failed_resume_joins_again_from_scratch(site: TestClient, tenant: Tenant, node: Node, browser: Browser):
    alice = await open_joined(browser, site, tenant, "alice")
    bob = await open_joined(browser, site, tenant, "bob")
    await wait_decoding(alice, "Bob")
    alice_id = await alice.evaluate("gbroom.participantId")

    node.live_rooms.resume_grace = 0.2  # the server forgets alice before she is back
    await alice.evaluate("gbroom.simulateNetworkLoss(2000)")
    await alice.wait_for("gbroom.rejoins === 1 && gbroom.joined", timeout=STATE_TIMEOUT)
    new_id = await alice.evaluate("gbroom.participantId")
    assert new_id != alice_id
    await bob.wait_for(f"gbroom.participants.map(p => p.id).join() === {new_id!r}", timeout=STATE_TIMEOUT)
    await wait_decoding(alice, "Bob")
    await wait_decoding(bob, "Alice")
    alice.assert_no_errors()
    bob.assert_no_errors()


async def test_screen_share_is_another_tile_and_goes_when_stopped(site: TestClient, tenant: Tenant, browser: Browser):
    alice = await open_joined(browser, site, tenant, "alice")
    bob = await open_joined(browser, site, tenant, "bob")
    await wait_decoding(bob, "Alice")

    await alice.page.click("#screen")
    await alice.wait_for("gbroom.sharingScreen && gbroom.localTracks.screen_share", timeout=STATE_TIMEOUT)
    assert await alice.evaluate("document.querySelector('#screen').textContent") == "Stop sharing"
    assert await alice.evaluate("document.querySelectorAll('#grid .tile.self').length") == 2
    screen = "(await gbroom.stats()).video.find(v => v.name === 'Alice' && v.source === 'screen_share')"
    shared = await bob.wait_for(
        f"(async () => {{ const v = {screen}; return v && v.framesDecoded > 0 && v.videoWidth > 0 && v; }})()",
        timeout=MEDIA_TIMEOUT,
    )
    tile_js = f"document.querySelector('#grid .tile.screen[data-participant-id=\"{shared['participantId']}\"]')"
    assert await bob.evaluate(f"{tile_js}.querySelector('.name').textContent") == "Alice (screen)"
    await wait_decoding(bob, "Alice")  # the camera goes on

    await alice.page.click("#screen")
    await alice.wait_for("!gbroom.sharingScreen && !gbroom.localTracks.screen_share", timeout=STATE_TIMEOUT)
    await bob.wait_for(f"{tile_js} === null", timeout=STATE_TIMEOUT)
    await bob.wait_for(f"(async () => !({screen}))()", timeout=STATE_TIMEOUT)
    await wait_decoding(bob, "Alice")
    alice.assert_no_errors()
    bob.assert_no_errors()


async def test_joining_from_a_second_tab_ends_the_first(site: TestClient, tenant: Tenant, browser: Browser):
    first = await open_joined(browser, site, tenant, "alice")
    second = await open_joined(browser, site, tenant, "alice")
    await first.wait_for("gbroom.phase === 'ended'", timeout=STATE_TIMEOUT)
    assert "another tab" in await first.evaluate("document.querySelector('#lobby-message').textContent")
    assert await first.evaluate("document.querySelector('#grid').hidden") is True
    assert await second.evaluate("gbroom.joined") is True
    first.assert_no_errors()
    second.assert_no_errors()


async def test_closing_the_room_ends_the_meeting_on_the_page(site: TestClient, tenant: Tenant, browser: Browser):
    alice = await open_joined(browser, site, tenant, "alice")
    room_id = await alice.evaluate("gbroom.room.id")
    resp = await site.delete(f"/api/v1/rooms/{room_id}", headers=OPERATOR)
    assert resp.status == 200, await resp.text()
    await alice.wait_for("gbroom.phase === 'ended'", timeout=STATE_TIMEOUT)
    assert "ended" in await alice.evaluate("document.querySelector('#lobby-message').textContent")
    alice.assert_no_errors()
