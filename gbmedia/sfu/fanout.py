"""Which fan-out path a node runs: the native extension (``_fanout.c``) or Python.

The native path does the per-packet, per-subscriber work of forwarding (header
rewrite, SRTP protect, NACK history, one ``sendmmsg`` for the whole batch) in C; the
decisions stay in :mod:`gbmedia.sfu.forwarder`. It needs single-port mode: the batch
goes out of the one shared socket (:mod:`gbmedia.sfu.udp_mux`). The Python path stays
as the fallback where the extension is not built, and as the reference the native one
is tested against (tests/sfu/test_fanout.py).
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any, Literal

log = logging.getLogger(__name__)

native: ModuleType | None
try:
    from gbmedia.sfu import _fanout as native
except ImportError as exc:  # not built: no compiler, headers or libsrtp2-dev where it was installed
    native = None
    IMPORT_ERROR = str(exc)
else:
    IMPORT_ERROR = ""

Mode = Literal["auto", "on", "off"]


class NativeUnavailable(RuntimeError):
    """GBMEDIA_NATIVE_FORWARDING=on, and the native path cannot run."""


def choose(mode: Mode, single_port: bool) -> bool:
    """True when the node should forward natively; logs which path runs and why.

    ``auto``: native when the extension imports and single-port mode is on; ``on``:
    refuse to start otherwise; ``off``: Python.
    """
    if mode == "off":
        log.info("RTP fan-out: Python path (GBMEDIA_NATIVE_FORWARDING=off)")
        return False
    reason = ""
    if native is None:
        reason = f"the native extension is not built ({IMPORT_ERROR or 'gbmedia.sfu._fanout missing'})"
    elif not single_port:
        reason = "single-port mode is off (GBMEDIA_UDP_PORT=off)"
    if reason:
        if mode == "on":
            raise NativeUnavailable(f"GBMEDIA_NATIVE_FORWARDING=on, but {reason}")
        log.warning("RTP fan-out: Python path, because %s", reason)
        return False
    log.info("RTP fan-out: native path (gbmedia.sfu._fanout, libsrtp2, sendmmsg)")
    return True


def flush(plans: dict[int, list[tuple[Any, ...]]], body: bytes, padded: bool, marker: bool) -> int:
    """Send one incoming packet's plans (by socket); returns the datagrams that went out."""
    sent = 0
    for fd, batch in plans.items():
        sent += native.send(fd, body, padded, marker, batch)[0]  # type: ignore[union-attr]
    return sent
