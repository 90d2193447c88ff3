"""RTP's wrapping counters made monotonic: 16-bit sequence numbers, 32-bit timestamps.

Both counters wrap (RFC 3550 section 5.1): a sequence number every 65536 packets
(minutes of video), a timestamp every 2**32 ticks (13 hours at 90 kHz, but it starts
at a random value, so a wrap can come at any time). Ordering packets and placing
frames on a timeline need them extended past the wrap. The arithmetic lives here
only: the frame source (:mod:`gbmedia.sfu.frames`) extends sequence numbers to
reorder and timestamps to time frames; the recorder maps timestamps through sender
reports with :func:`wrap_delta`. (The forwarder's offsets are another thing: it
rewrites numbers modulo their width, it never extends them.)
"""

from __future__ import annotations

SEQUENCE_BITS = 16
TIMESTAMP_BITS = 32


def wrap_delta(a: int, b: int, bits: int) -> int:
    """``b - a`` the short way round the ``2**bits`` circle: in ``-2**(bits-1) .. 2**(bits-1) - 1``.

    ``a`` may be an extended value (only its low ``bits`` count).
    """
    half = 1 << (bits - 1)
    return ((b - a + half) & ((1 << bits) - 1)) - half


class Unwrapper:
    """Extends one wrapping counter: each value lands in the wrap cycle nearest the highest so far.

    The first value lands one whole cycle up, so a value a little older than it (a
    packet overtaken on the way) still extends to a positive number below it. Values
    may go back by up to half a cycle (reordering, a late packet); :attr:`highest`
    only goes forward.
    """

    __slots__ = ("bits", "highest")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.highest: int | None = None

    def __call__(self, value: int) -> int:
        highest = self.highest
        if highest is None:
            self.highest = value + (1 << self.bits)
            return self.highest
        extended = highest + wrap_delta(highest, value, self.bits)
        if extended > highest:
            self.highest = extended
        return extended
