"""Join links: the URL of the room page with a participant's access token in it.

The token rides in the query string because a link is what people send each other;
the page moves it out of the address bar (``history.replaceState``) once loaded.
"""

from __future__ import annotations

from urllib.parse import quote

ROOM_PAGE = "/web/room/"


def join_link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{ROOM_PAGE}?token={quote(token, safe='')}"
