"""A live room's program: the one video and audio that everyone outside the room sees.

WHEP players and the LL-HLS rendition both show the program, so they must agree on
it; this is its only definition. The program is the first host's (in join order)
video, a camera preferred to a screen share, and the same host's audio; if that
host sends no audio, the first audio of any host. A host publishes and is seen
(``can_publish`` and not ``hidden``): a hidden publisher (a recorder, a bot at
work) never becomes the program, and neither does a viewer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gbmedia.rooms.participant import Participant
from gbmedia.sfu.track import PublishedTrack

VIDEO_SOURCES = ("camera", "unknown", "screen_share")  # program video, in order of preference


@dataclass(frozen=True)
class Program:
    """Two programs are equal when they hold the same track objects (tracks compare by identity)."""

    video: PublishedTrack | None = None
    audio: PublishedTrack | None = None

    def get(self, kind: str) -> PublishedTrack | None:
        return self.video if kind == "video" else self.audio if kind == "audio" else None


NO_PROGRAM = Program()


def _source_rank(track: PublishedTrack) -> int:
    return VIDEO_SOURCES.index(track.source) if track.source in VIDEO_SOURCES else len(VIDEO_SOURCES)


def program_of(participants: Iterable[Participant], *, without: PublishedTrack | None = None) -> Program:
    """The program of a room with these participants (in join order); ``without`` is a track ending now."""
    hosts = [p for p in participants if p.is_host]

    def tracks(host: Participant, kind: str) -> list[PublishedTrack]:
        return [t for t in host.published if t.kind == kind and t is not without]

    video: PublishedTrack | None = None
    audio: PublishedTrack | None = None
    for host in hosts:
        videos = tracks(host, "video")
        if videos:
            video = min(videos, key=_source_rank)  # the first of the best source, as the host published them
            audio = next(iter(tracks(host, "audio")), None)
            break
    if audio is None:
        audio = next((t for host in hosts for t in tracks(host, "audio")), None)
    return Program(video, audio)
