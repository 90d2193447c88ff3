"""Which bandwidth estimator a published track runs: the native one (``_remb.c``) or aiortc's.

Every RTP packet a publisher sends feeds the receive-side estimate the node reports back
in REMB (aiortc's ``RemoteBitrateEstimator``: inter-arrival groups, a Kalman filter of
the queuing delay, an overuse detector, AIMD). In a running node that Python cost
35-40 µs per packet, 0.4 % of a core for one 640x480 publisher: a fifth of what the
node spends on a publisher nobody watches, and it grows with every publisher a node
holds. ``_remb.c`` is the same estimator in C with the same results bit for bit
(tests/sfu/test_remb.py drives both with the same packets). Where the extension is not
built, aiortc's own estimator runs, as it did before; the node says which at start-up.
"""

from __future__ import annotations

from types import ModuleType
from typing import Protocol

from aiortc.rate import RemoteBitrateEstimator

native: ModuleType | None
try:
    from gbmedia.sfu import _remb as native
except ImportError as exc:  # not built: no compiler or Python headers where it was installed
    native = None
    IMPORT_ERROR = str(exc)
else:
    IMPORT_ERROR = ""


class Estimator(Protocol):
    """What the receive path calls per packet: a REMB ``(bitrate, ssrcs)`` when one is due, else None."""

    def add(
        self, arrival_time_ms: int, abs_send_time: int, payload_size: int, ssrc: int
    ) -> tuple[int, list[int]] | None: ...


def new_estimator() -> Estimator:
    """The native estimator where the extension is built, else aiortc's."""
    if native is not None:
        return native.Estimator()  # type: ignore[no-any-return]
    return RemoteBitrateEstimator()


def describe() -> str:
    """Which estimator runs, for the node's start-up log."""
    if native is not None:
        return "REMB estimate: native (gbmedia.sfu._remb)"
    return f"REMB estimate: aiortc's, in Python, because the native extension is not built ({IMPORT_ERROR})"
