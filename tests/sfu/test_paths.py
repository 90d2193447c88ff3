"""Media paths: the client's report in one word, and no server path before ICE connects."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection

from gbmedia.sfu.paths import ClientPath, server_path
from tests.rtc import NO_STUN


@pytest.mark.parametrize(
    ("path", "label"),
    [
        (ClientPath("host", "udp"), "host"),
        (ClientPath("srflx", "udp"), "srflx"),
        (ClientPath("relay", "udp", "tls"), "relay_tls"),
        (ClientPath("relay", "udp", "tcp"), "relay_tcp"),
        (ClientPath("relay", "udp"), "relay_udp"),  # a browser that does not say: TURN's default
    ],
)
def test_labels(path: ClientPath, label: str):
    assert path.label == label and path.to_json()["label"] == label


async def test_no_path_before_ice_connects():
    pc = RTCPeerConnection(NO_STUN)
    try:
        assert server_path(pc) is None  # no transceiver
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        assert server_path(pc) is None  # gathered, not connected
    finally:
        await pc.close()
