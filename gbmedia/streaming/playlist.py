"""One LL-HLS rendition's state (init, segments, parts) and its media playlist.

Lives on the event loop: the packaging thread hands finished parts over with
``loop.call_soon_threadsafe``, so every read here (HTTP handlers, blocking reloads)
sees a consistent state without locks. Names carry the rendition id, so a name
always means the same bytes and CDNs may cache media as immutable even when a room's
program restarts with a new rendition.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gbmedia.waits import wait_for_event

PLAYLIST_NAME = "live.m3u8"
_PART_NAME = re.compile(r"^(?P<rid>[0-9a-f]{8})-(?P<msn>\d{1,9})(?:\.(?P<part>\d{1,4}))?\.m4s$")


@dataclass(frozen=True)
class HlsConfig:
    segment_seconds: float = 2.0
    part_seconds: float = 0.5
    window_segments: int = 6

    @property
    def target_duration(self) -> int:
        """EXT-X-TARGETDURATION: room for a keyframe that comes late (remuxed sources)."""
        return max(1, math.ceil(self.segment_seconds * 1.5))

    @property
    def part_hold_back(self) -> float:
        return 3 * self.part_seconds

    @property
    def blocking_timeout(self) -> float:
        """How long a blocking reload or part request may wait (RFC 8216bis: 3 target durations)."""
        return 3 * self.target_duration


@dataclass
class Part:
    msn: int
    index: int
    duration: float
    independent: bool
    data: bytes


@dataclass
class Segment:
    msn: int
    started_at: dt.datetime  # wall-clock time of its first sample (EXT-X-PROGRAM-DATE-TIME)
    parts: list[Part] = field(default_factory=list)
    duration: float | None = None  # set when complete
    data: bytes | None = None

    @property
    def complete(self) -> bool:
        return self.duration is not None


@dataclass(frozen=True)
class HlsFile:
    body: bytes
    content_type: str


def _fmt(seconds: float) -> str:
    return f"{seconds:.5f}".rstrip("0").rstrip(".") if seconds else "0"


class Rendition:
    """The segments of one program, a sliding window of them, and who waits for what."""

    def __init__(self, config: HlsConfig) -> None:
        self.config = config
        self.id = secrets.token_hex(4)
        self.init: bytes | None = None
        self.codecs = ""
        self.resolution: tuple[int, int] | None = None
        self.segments: deque[Segment] = deque()
        self.ended = False
        self.parts_total = 0
        self.bytes_total = 0
        self._changed = asyncio.Event()

    # --- produced by the packager (on the loop) ----------------------------------------------

    def set_init(self, data: bytes, codecs: str, resolution: tuple[int, int]) -> None:
        self.init, self.codecs, self.resolution = data, codecs, resolution
        self._notify()

    def add_part(self, part: Part, started_at: dt.datetime) -> None:
        if self.ended:
            return
        current = self.segments[-1] if self.segments else None
        if current is None or current.complete:
            if current is not None and part.msn != current.msn + 1:
                raise ValueError(f"part of segment {part.msn} after segment {current.msn}")
            current = Segment(part.msn, started_at)
            self.segments.append(current)
        if part.msn != current.msn or part.index != len(current.parts):
            raise ValueError(f"part {part.msn}.{part.index} out of order")
        current.parts.append(part)
        self.parts_total += 1
        self.bytes_total += len(part.data)
        self._notify()

    def end_segment(self, msn: int, duration: float) -> None:
        if self.ended or not self.segments or self.segments[-1].msn != msn:
            return
        segment = self.segments[-1]
        segment.duration = duration
        segment.data = b"".join(p.data for p in segment.parts)
        complete = [s for s in self.segments if s.complete]
        # Keep two segments beyond the window so a player with a slightly old playlist still finds them.
        while len(complete) > self.config.window_segments + 2:
            self.segments.popleft()
            complete.pop(0)
        self._notify()

    def end(self) -> None:
        self.ended = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- read by players ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.init is not None and any(s.parts for s in self.segments)

    def _listed(self) -> list[Segment]:
        complete = [s for s in self.segments if s.complete][-self.config.window_segments :]
        tail = [s for s in self.segments if not s.complete]
        return complete + tail

    @property
    def last_complete_msn(self) -> int:
        complete = [s.msn for s in self.segments if s.complete]
        return complete[-1] if complete else (self.segments[0].msn - 1 if self.segments else -1)

    def _segment(self, msn: int) -> Segment | None:
        if not self.segments:
            return None
        index = msn - self.segments[0].msn
        return self.segments[index] if 0 <= index < len(self.segments) else None

    def reached(self, msn: int, part: int | None) -> bool:
        """Whether the playlist already holds segment ``msn`` (complete) or its part ``part``."""
        if self.ended:
            return True
        if self.segments and msn < self.segments[0].msn:
            return True
        segment = self._segment(msn)
        if segment is None:
            return False
        if part is None:
            return segment.complete
        if part < len(segment.parts):
            return True
        # RFC 8216bis 6.2.5.2: a part index past the segment's last part means part 0 of the next one.
        return segment.complete and self.reached(msn + 1, 0)

    async def wait_until(self, predicate: Callable[[], bool], within: float) -> bool:
        """Wait (at most ``within`` seconds) until ``predicate`` holds; re-checked on every change."""
        deadline = time.monotonic() + within
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.ended:
                return bool(predicate())
            if not await wait_for_event(self._changed, remaining):
                return bool(predicate())
        return True

    def next_part(self) -> tuple[int, int]:
        """(msn, part index) of the part being produced now: the preload hint."""
        if not self.segments:
            return 0, 0
        last = self.segments[-1]
        return (last.msn + 1, 0) if last.complete else (last.msn, len(last.parts))

    def playlist(self) -> str:
        """The media playlist (RFC 8216bis, version 9 for EXT-X-PART and blocking reloads)."""
        config = self.config
        listed = self._listed()
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:9",
            f"#EXT-X-TARGETDURATION:{config.target_duration}",
            f"#EXT-X-PART-INF:PART-TARGET={_fmt(config.part_seconds)}",
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={_fmt(config.part_hold_back)}",
            f"#EXT-X-MEDIA-SEQUENCE:{listed[0].msn if listed else 0}",
            f'#EXT-X-MAP:URI="{self.id}-init.mp4"',
        ]
        # Parts are listed only near the live edge (the spec: within three target durations of it).
        with_parts = set()
        edge = 0.0
        for segment in reversed(listed):
            if segment.complete:
                edge += segment.duration or 0.0
            with_parts.add(segment.msn)
            if edge >= 3 * config.target_duration:
                break
        for segment in listed:
            # On every segment: after a stall the media timeline has a hole, and players map times by these.
            lines.append(
                "#EXT-X-PROGRAM-DATE-TIME:"
                + segment.started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            )
            if segment.msn in with_parts:
                for part in segment.parts:
                    attributes = f'DURATION={_fmt(part.duration)},URI="{self.part_name(part.msn, part.index)}"'
                    lines.append("#EXT-X-PART:" + attributes + (",INDEPENDENT=YES" if part.independent else ""))
            if segment.complete:
                lines.append(f"#EXTINF:{_fmt(segment.duration or 0.0)},")
                lines.append(self.segment_name(segment.msn))
        if not self.ended:
            msn, index = self.next_part()
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{self.part_name(msn, index)}"')
        else:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def segment_name(self, msn: int) -> str:
        return f"{self.id}-{msn}.m4s"

    def part_name(self, msn: int, index: int) -> str:
        return f"{self.id}-{msn}.{index}.m4s"

    def parse_name(self, name: str) -> tuple[int, int | None] | None:
        """(msn, part or None) for a media name of this rendition, else None."""
        match = _PART_NAME.match(name)
        if match is None or match["rid"] != self.id:
            return None
        return int(match["msn"]), (int(match["part"]) if match["part"] is not None else None)

    def file(self, name: str) -> HlsFile | None:
        if name == f"{self.id}-init.mp4":
            return HlsFile(self.init, "video/mp4") if self.init is not None else None
        parsed = self.parse_name(name)
        if parsed is None:
            return None
        segment = self._segment(parsed[0])
        if segment is None:
            return None
        if parsed[1] is None:
            return HlsFile(segment.data, "video/iso.segment") if segment.data is not None else None
        if parsed[1] < len(segment.parts):
            return HlsFile(segment.parts[parsed[1]].data, "video/iso.segment")
        return None

    def media_seconds(self, name: str) -> float:
        """The media time a part or complete segment named ``name`` holds (0 for the init segment)."""
        parsed = self.parse_name(name)
        segment = self._segment(parsed[0]) if parsed is not None else None
        if parsed is None or segment is None:
            return 0.0
        if parsed[1] is None:
            return segment.duration or 0.0
        return segment.parts[parsed[1]].duration if parsed[1] < len(segment.parts) else 0.0

    def is_upcoming(self, name: str) -> bool:
        """A part or segment that does not exist yet but will soon: worth a blocking wait."""
        parsed = self.parse_name(name)
        if parsed is None or self.ended:
            return False
        msn, part = parsed
        next_msn, next_index = self.next_part()
        if part is None:
            return self.last_complete_msn < msn <= next_msn
        return (msn == next_msn and part <= next_index + 1) or (msn == next_msn + 1 and part == 0)
