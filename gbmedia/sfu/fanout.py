"""Which fan-out path a node runs: the native extension (``_fanout.c``) or Python.

The native path does the per-packet, per-subscriber work of forwarding (renumbering,
header rewrite, SRTP protect, NACK history, one ``sendmmsg`` for the whole batch) in C;
the decisions stay in :mod:`gbmedia.sfu.forwarder`. It needs single-port mode: the
batch goes out of the one shared socket (:mod:`gbmedia.sfu.udp_mux`). The Python path
stays as the fallback where the extension is not built, and as the reference the
native one is tested against (tests/sfu/test_fanout.py).

SRTP: the extension links Debian's libsrtp2 (NSS crypto, ~4.8 µs to protect a
1,200-byte packet here) and, at import, switches to the libsrtp 2 that the pylibsrtp
wheel carries (aiortc's own dependency, OpenSSL crypto with AES-NI, ~2 µs) when that
library is found: :data:`LIBRARY` says which protects.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Literal

log = logging.getLogger(__name__)

native: ModuleType | None
try:
    from gbmedia.sfu import _fanout as native
except ImportError as exc:  # not built: no compiler, headers or libsrtp2-dev where it was installed
    native = None
    IMPORT_ERROR = str(exc)
else:
    IMPORT_ERROR = ""


def _use_pylibsrtp_library(module: ModuleType) -> str:
    """Protect with pylibsrtp's libsrtp when it loads; the name of the library that protects."""
    try:
        from pylibsrtp import _binding  # type: ignore[attr-defined]

        module.use_library(_binding.__file__)
    except (ImportError, AttributeError, module.Error) as exc:
        log.warning("native fan-out: pylibsrtp's libsrtp not usable (%s); protecting with the system libsrtp2", exc)
    return str(module.library())


LIBRARY = _use_pylibsrtp_library(native) if native is not None else ""

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
    log.info("RTP fan-out: native path (gbmedia.sfu._fanout, %s, sendmmsg)", LIBRARY)
    return True
