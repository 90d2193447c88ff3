"""Malformed SDP offers, each made from a real aiortc offer by changing one thing.

Each made aiortc's parser fail inside (``AssertionError``, ``StopIteration``,
``AttributeError``: a 500 ``internal_error``) or, without a fingerprint, be answered.
The SDP checker's tests, the socket's and WHIP/WHEP's use the same cases.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Malformed:
    change: Callable[[str], str]
    reason: str  # a part of the error message that names the problem


def _first_format(pt: str) -> Callable[[str], str]:
    """The first m-line gets ``pt`` as its first payload type."""
    return lambda sdp: re.sub(r"^(m=\w+ \d+ \S+ )", rf"\g<1>{pt} ", sdp, count=1, flags=re.M)


def _after_first_mid(line: str) -> Callable[[str], str]:
    """``line`` added to the first m-section (after its ``a=mid``)."""
    return lambda sdp: re.sub(r"^(a=mid:[^\r\n]*)", rf"\g<1>\r\n{line}", sdp, count=1, flags=re.M)


MALFORMED: dict[str, Malformed] = {
    "payload_type_300": Malformed(_first_format("300"), "payload type 300 is not within 0-127"),
    "payload_type_above_127": Malformed(_first_format("128"), "payload type 128 is not within 0-127"),
    "payload_type_clashing_with_rtcp": Malformed(_first_format("72"), "clashes with RTCP"),
    "garbage_m_line": Malformed(
        lambda sdp: re.sub(r"^m=video", "m=video garbage", sdp, count=1, flags=re.M), "an m-line is"
    ),
    "garbage_c_line": Malformed(lambda sdp: re.sub(r"^c=IN IP4", "c=garbage", sdp, count=1, flags=re.M), "a c-line is"),
    "short_candidate": Malformed(_after_first_mid("a=candidate:1 1 udp"), "a candidate has 8 fields or more"),
    "fmtp_for_unknown_payload_type": Malformed(
        _after_first_mid("a=fmtp:35 minptime=10"), "no a=rtpmap in this m-section names payload type 35"
    ),
    "group_without_value": Malformed(
        lambda sdp: re.sub(r"^a=group:[^\r\n]*", "a=group", sdp, flags=re.M), "a=group needs a value"
    ),
    "no_dtls_fingerprint": Malformed(
        lambda sdp: re.sub(r"^a=fingerprint:[^\r\n]*\r?\n", "", sdp, flags=re.M), "lacks a DTLS fingerprint"
    ),
}
