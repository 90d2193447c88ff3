"""A socket's output: WebSocket frames as the server writes them (the bound and the cut-off are shown
end to end in tests/signaling/test_ws.py and tests/messaging/test_group_commit.py)."""

from __future__ import annotations

from gbmedia.http.ws_output import text_frame


def test_text_frames_of_every_length_class():
    assert text_frame("hi") == b"\x81\x02hi"
    medium = text_frame("é" * 100)  # 200 bytes of UTF-8: a 16-bit length
    assert medium[:4] == b"\x81\x7e\x00\xc8" and medium[4:].decode() == "é" * 100
    large = text_frame("x" * 70_000)
    assert large[:2] == b"\x81\x7f" and int.from_bytes(large[2:10], "big") == 70_000 and len(large) == 70_010
