"""Checking SDP text line by line before aiortc parses it.

aiortc's parser (``aiortc.sdp.SessionDescription.parse``) trusts its input: a
payload type of 300, a short ``a=candidate``, an ``a=fmtp`` for a payload type no
``a=rtpmap`` names or an ``a=group`` with no value end in ``AssertionError``,
``StopIteration`` or ``AttributeError`` deep inside it, and an offer without a DTLS
fingerprint is answered. Anything a client sends is checked here first, so a bad
description is refused with the line that is wrong (:class:`InvalidSdp`) and what
reaches aiortc is only what it can parse and connect with.

The rules are those of the SDP WebRTC speaks (RFC 8866, RFC 8829/9429, RFC 8842):
payload types 0-127 outside 64-95 (RFC 5761 section 4: with ``rtcp-mux`` they
clash with RTCP packet types), header extension ids 1-255 (RFC 8285) and 1-14 for
the extensions the forwarder writes in one-byte form (:mod:`gbmedia.sfu.rtp`), mids
of 1-16 token characters (the forwarder writes them in that form too), a
BUNDLE group naming only mids that exist, and every m-section with a mid of its own, ICE
credentials, a DTLS fingerprint and a DTLS role (``a=setup``); an audio or video
one with exactly one direction (aiortc fails on none, where RFC 8866 means sendrecv).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_PAYLOAD_TYPE = 127
RTCP_CLASH = range(64, 96)  # RFC 5761 section 4
MAX_SSRC = 2**32 - 1
MAX_PORT = 65535
EXTMAP_IDS = range(1, 256)  # RFC 8285
ONE_BYTE_IDS = range(1, 15)  # RFC 8285 one-byte header: how the forwarder writes the extensions below
FORWARDER_WRITES = (
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
)
MAX_MID_LENGTH = 16  # RFC 8285: what a one-byte header extension element carries (the forwarder writes the mid)
SETUP_ROLES = ("actpass", "active", "passive")
KINDS = ("audio", "video", "application")
DIRECTIONS = ("sendonly", "recvonly", "sendrecv", "inactive")
INT_FMTP_PARAMETERS = ("apt", "max-fr", "max-fs", "maxplaybackrate", "minptime", "stereo", "useinbandfec")

_LINE = re.compile(r"^[a-z]=")
_MLINE = re.compile(r"^m=([^ ]+) ([0-9]+) ([A-Z/]+) (.+)$")  # aiortc's own pattern
_CLINE = re.compile(r"^c=IN (IP4|IP6) ([^ ]+)$")
_INT = re.compile(r"^[0-9]{1,10}$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")  # RFC 8866 token
_FINGERPRINT = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+ [0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+$")


class InvalidSdp(ValueError):
    """A description refused, with the (1-based) line that is wrong (0: the whole) and the ``reason``."""

    def __init__(self, line_number: int, line: str, reason: str) -> None:
        self.line_number = line_number
        self.line = line
        self.reason = reason
        shown = line if len(line) <= 80 else line[:77] + "..."
        super().__init__(f"line {line_number} ({shown!r}): {reason}" if line_number else reason)


@dataclass
class _Section:
    """What one m-section (or the session, for ``kind`` None) has said so far."""

    kind: str | None
    line_number: int
    line: str
    mid: str | None = None
    payload_types: set[int] = field(default_factory=set)  # named by a=rtpmap
    fmtp: list[tuple[int, str, int]] = field(default_factory=list)  # (pt, line, line number): checked at the end
    fingerprint: bool = False
    setup: bool = False
    ufrag: bool = False
    pwd: bool = False
    directions: int = 0  # a=sendonly, a=recvonly, a=sendrecv, a=inactive lines
    bundle: list[str] = field(default_factory=list)  # the session's a=group:BUNDLE mids
    bundle_line: tuple[int, str] = (0, "")


def _int(text: str, low: int, high: int, what: str) -> int:
    if not _INT.match(text):
        raise ValueError(f"{what} {text[:20]!r} is not a number" + (" of 10 digits or fewer" if len(text) > 10 else ""))
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{what} {value} is not within {low}-{high}")
    return value


def payload_type(text: str) -> int:
    """An RTP payload type usable with rtcp-mux: 0-127, not 64-95."""
    value = _int(text, 0, MAX_PAYLOAD_TYPE, "payload type")
    if value in RTCP_CLASH:
        raise ValueError(f"payload type {value} clashes with RTCP packet types (64-95 are not allowed)")
    return value


def check_candidate(value: str) -> None:
    """An ``a=candidate`` value (without ``candidate:``), as RFC 8839 section 5.1 writes it."""
    bits = value.split()
    if len(bits) < 8:
        raise ValueError(
            "a candidate has 8 fields or more: foundation component transport priority address port typ type"
        )
    _int(bits[1], 1, 256, "component")
    _int(bits[3], 0, 2**32 - 1, "priority")
    _int(bits[5], 0, MAX_PORT, "port")
    if bits[6] != "typ":
        raise ValueError(f"the 7th field must be 'typ', not {bits[6]!r}")
    for name, text in zip(bits[8::2], bits[9::2], strict=False):
        if name == "rport":
            _int(text, 0, MAX_PORT, "rport")


def _needs(value: str | None, attr: str) -> str:
    if value is None or not value.strip():
        raise ValueError(f"a={attr} needs a value")
    return value


def _session_attr(section: _Section, attr: str, value: str | None) -> None:
    if attr == "fingerprint":
        if not _FINGERPRINT.match(_needs(value, attr)):
            raise ValueError("a fingerprint is '<hash function> <hex pairs separated by colons>'")
        section.fingerprint = True
    elif attr == "setup":
        if value not in SETUP_ROLES:
            raise ValueError(f"a=setup is one of {', '.join(SETUP_ROLES)}")
        section.setup = True
    elif attr in ("group", "msid-semantic"):
        semantic, *items = _needs(value, attr).split()
        if not _TOKEN.match(semantic):
            raise ValueError(f"a={attr} starts with a semantic token")
        if attr == "group" and semantic == "BUNDLE":
            section.bundle += items
    elif attr == "ice-ufrag":
        section.ufrag = bool(value and value.strip())
    elif attr == "ice-pwd":
        section.pwd = bool(value and value.strip())


def _ssrc(text: str) -> int:
    return _int(text, 0, MAX_SSRC, "SSRC")


def _media_attr(section: _Section, attr: str, value: str | None, line: str, number: int) -> None:
    if attr in ("fingerprint", "setup", "ice-ufrag", "ice-pwd"):
        _session_attr(section, attr, value)
        return
    check = _MEDIA_CHECKS.get(attr)
    if check is not None:
        check(section, _needs(value, attr), line, number)
    elif attr in DIRECTIONS:
        section.directions += 1
    elif attr == "mid":
        mid = _needs(value, attr)
        if not _TOKEN.match(mid) or len(mid) > MAX_MID_LENGTH:
            raise ValueError(f"a mid is a token of 1-{MAX_MID_LENGTH} characters")
        if section.mid is not None:
            raise ValueError("an m-section has one a=mid")
        section.mid = mid


def _candidate(section: _Section, value: str, line: str, number: int) -> None:
    check_candidate(value)


def _extmap(section: _Section, value: str, line: str, number: int) -> None:
    bits = value.split()
    if len(bits) != 2:
        raise ValueError("a=extmap is '<id>[/<direction>] <uri>'")
    ext_id, _slash, direction = bits[0].partition("/")
    ids = ONE_BYTE_IDS if bits[1] in FORWARDER_WRITES else EXTMAP_IDS
    _int(ext_id, ids.start, ids.stop - 1, "extension id" if ids is EXTMAP_IDS else f"the id of {bits[1]}")
    if "/" in direction:
        raise ValueError("a=extmap has one direction at most")


def _rtpmap(section: _Section, value: str, line: str, number: int) -> None:
    pt_text, _space, desc = value.partition(" ")
    section.payload_types.add(payload_type(pt_text))
    bits = desc.split("/")
    if len(bits) < 2 or not bits[0].strip():
        raise ValueError("a=rtpmap is '<payload type> <encoding>/<clock rate>[/<channels>]'")
    _int(bits[1], 1, 10**7, "clock rate")
    if section.kind == "audio" and len(bits) > 2:
        _int(bits[2], 1, 255, "channel count")


def _fmtp(section: _Section, value: str, line: str, number: int) -> None:
    pt_text, space, params = value.partition(" ")
    if not space:
        raise ValueError("a=fmtp is '<payload type> <parameters>'")
    section.fmtp.append((payload_type(pt_text), line, number))
    for param in params.split(";"):
        name, equals, text = param.partition("=")
        if equals and name in INT_FMTP_PARAMETERS:
            _int(text, 0, 2**31 - 1, name)


def _rtcp_fb(section: _Section, value: str, line: str, number: int) -> None:
    bits = value.split(" ", 2)
    if len(bits) < 2 or not bits[1]:
        raise ValueError("a=rtcp-fb is '<payload type or *> <type> [<parameter>]'")
    if bits[0] != "*":
        payload_type(bits[0])


def _rtcp(section: _Section, value: str, line: str, number: int) -> None:
    port, space, address = value.partition(" ")
    _int(port, 0, MAX_PORT, "RTCP port")
    if space and not _CLINE.match("c=" + address):
        raise ValueError("the RTCP address is 'IN IP4|IP6 <address>'")


def _ssrc_attr(section: _Section, value: str, line: str, number: int) -> None:
    ssrc, _space, desc = value.partition(" ")
    _ssrc(ssrc)
    if ":" not in desc:
        raise ValueError("a=ssrc is '<ssrc> <attribute>:<value>'")


def _ssrc_group(section: _Section, value: str, line: str, number: int) -> None:
    _semantic, *ssrcs = value.split()
    for ssrc in ssrcs:
        _ssrc(ssrc)


def _number(what: str, high: int) -> Callable[[_Section, str, str, int], None]:
    def check(section: _Section, value: str, line: str, number: int) -> None:
        _int(value.strip(), 0, high, what)

    return check


def _sctpmap(section: _Section, value: str, line: str, number: int) -> None:
    port, space, _desc = value.partition(" ")
    _int(port, 0, MAX_PORT, "SCTP port")
    if not space:
        raise ValueError("a=sctpmap is '<port> <protocol> [<streams>]'")


_MEDIA_CHECKS: dict[str, Callable[[_Section, str, str, int], None]] = {
    "candidate": _candidate,
    "extmap": _extmap,
    "rtpmap": _rtpmap,
    "fmtp": _fmtp,
    "rtcp-fb": _rtcp_fb,
    "rtcp": _rtcp,
    "ssrc": _ssrc_attr,
    "ssrc-group": _ssrc_group,
    "sctp-port": _number("SCTP port", MAX_PORT),
    "max-message-size": _number("max-message-size", 2**53),
    "sctpmap": _sctpmap,
}


def _media_line(line: str) -> _Section:
    m = _MLINE.match(line)
    if m is None:
        raise ValueError("an m-line is 'm=<media> <port> <proto> <formats>'")
    kind, port, profile, formats = m.groups()
    if kind not in KINDS:
        raise ValueError(f"the media kind is one of {', '.join(KINDS)}")
    _int(port, 0, MAX_PORT, "port")
    if kind != "application":
        for fmt in formats.split():
            payload_type(fmt)
    elif profile == "DTLS/SCTP":
        _int((formats.split() or [""])[0], 0, MAX_PORT, "SCTP port")
    return _Section(kind, 0, line)


def _attr(line: str) -> tuple[str, str | None]:
    """aiortc's own split of an ``a=`` line."""
    if ":" in line:
        name, value = line[2:].split(":", 1)
        return name, value
    return line[2:], None


def check_sdp(sdp: str) -> None:
    """Raise :class:`InvalidSdp` unless aiortc can parse ``sdp`` and connect with it."""
    lines = sdp.splitlines()
    if not lines or lines[0] != "v=0":
        raise InvalidSdp(1, lines[0] if lines else "", "an SDP description starts with 'v=0'")
    session = _Section(None, 0, "")
    sections: list[_Section] = []
    current = session
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            if not _LINE.match(line):
                raise ValueError("an SDP line is '<letter>=<value>'")
            if line.startswith("m="):
                current = _media_line(line)
                current.line_number = number
                sections.append(current)
            elif line.startswith("c="):
                if not _CLINE.match(line):
                    raise ValueError("a c-line is 'c=IN IP4|IP6 <address>'")
            elif line.startswith("a="):
                attr, value = _attr(line)
                if current is session:
                    _session_attr(session, attr, value)
                    if attr == "group":
                        session.bundle_line = (number, line)
                else:
                    _media_attr(current, attr, value, line, number)
        except ValueError as exc:
            raise InvalidSdp(number, line, str(exc)) from None
    if not sections:
        raise InvalidSdp(0, "", "the description has no media section (m-line)")
    mids: set[str | None] = set()
    for section in sections:
        _check_section(session, section)
        if section.mid in mids:
            raise InvalidSdp(section.line_number, section.line, f"mid {section.mid} is another m-section's too")
        mids.add(section.mid)
    unknown = [mid for mid in session.bundle if mid not in mids]
    if unknown:
        raise InvalidSdp(*session.bundle_line, f"a=group:BUNDLE names mids no m-section has: {', '.join(unknown)}")


def _check_section(session: _Section, section: _Section) -> None:
    for pt, line, number in section.fmtp:
        if pt not in section.payload_types:
            raise InvalidSdp(number, line, f"no a=rtpmap in this m-section names payload type {pt}")
    if section.kind != "application" and section.directions != 1:
        raise InvalidSdp(
            section.line_number,
            section.line,
            f"an audio or video m-section has one direction ({', '.join('a=' + d for d in DIRECTIONS)}), "
            f"not {section.directions}",
        )
    missing = [
        what
        for what, present in (
            ("a mid (a=mid)", section.mid is not None),
            ("a DTLS fingerprint (a=fingerprint)", section.fingerprint or session.fingerprint),
            ("a DTLS role (a=setup)", section.setup or session.setup),
            ("an ICE username fragment (a=ice-ufrag)", section.ufrag or session.ufrag),
            ("an ICE password (a=ice-pwd)", section.pwd or session.pwd),
        )
        if not present
    ]
    if missing:
        raise InvalidSdp(section.line_number, section.line, "the m-section lacks " + " and ".join(missing))
