"""Simulcast in SDP: what a publisher offers (RFC 8853) and what the answer must say.

aiortc ignores ``a=rid`` and ``a=simulcast``. A browser only sends its layers when
the answer accepts them (``a=rid:<id> recv`` for each and ``a=simulcast:recv``), and
the RTP stream id header extension must be negotiated so each layer's packets can
be told apart. This module reads the offer and completes aiortc's answer; it works
on SDP text only.
"""

from __future__ import annotations

from dataclasses import dataclass

from gbmedia.sfu.aiortc_adapter import RID_URI

# The rids LiveKit and most clients use, lowest quality first.
KNOWN_ORDER = {"q": 0, "h": 1, "f": 2}
MAX_LAYERS = 3


@dataclass(frozen=True)
class SimulcastOffer:
    """One m-section's simulcast: rids lowest quality first, and the rid extension id."""

    rids: tuple[str, ...]
    extension_id: int


def _sections(sdp: str) -> list[list[str]]:
    sections: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def _order(rids: list[str]) -> tuple[str, ...]:
    """Lowest quality first: by the q/h/f convention when used, else as offered."""
    if all(r in KNOWN_ORDER for r in rids):
        rids = sorted(rids, key=KNOWN_ORDER.__getitem__)
    return tuple(rids[:MAX_LAYERS])


def offered_simulcast(sdp: str) -> dict[str, SimulcastOffer]:
    """Simulcast per mid in an offer; m-sections without it are absent."""
    found: dict[str, SimulcastOffer] = {}
    for section in _sections(sdp)[1:]:
        mid = None
        rids: list[str] = []
        ext_id = 0
        send_list: list[str] = []
        for line in section:
            if line.startswith("a=mid:"):
                mid = line[6:].strip()
            elif line.startswith("a=rid:"):
                parts = line[6:].split()
                if len(parts) >= 2 and parts[1] == "send":
                    rids.append(parts[0])
            elif line.startswith("a=simulcast:"):
                parts = line[12:].split()
                if len(parts) >= 2 and parts[0] == "send":
                    # ";" separates streams, "," alternatives, "~" marks one paused at first
                    send_list = [alt.split(",")[0].lstrip("~") for alt in parts[1].split(";")]
            elif line.startswith("a=extmap:") and line.split()[-1] == RID_URI:
                try:
                    ext_id = int(line[9:].split()[0].split("/")[0])
                except ValueError:
                    ext_id = 0
        layers = [r for r in send_list if r in rids] if send_list else []
        if mid is not None and len(layers) >= 2 and ext_id:
            found[mid] = SimulcastOffer(_order(layers), ext_id)
    return found


def complete_answer(answer: str, offers: dict[str, SimulcastOffer]) -> str:
    """Add ``a=rid:<id> recv`` and ``a=simulcast:recv`` to the answer's simulcast sections."""
    if not offers:
        return answer
    sections = _sections(answer)
    out: list[str] = list(sections[0])
    for section in sections[1:]:
        mid = next((line[6:].strip() for line in section if line.startswith("a=mid:")), None)
        offer = offers.get(mid) if mid is not None else None
        out += section
        if (
            offer is not None
            and not section[0].startswith("m=application")
            and not any(line.startswith("a=simulcast:") for line in section)
        ):
            out += [f"a=rid:{rid} recv" for rid in offer.rids]
            out.append("a=simulcast:recv " + ";".join(offer.rids))
    return "\r\n".join(out) + "\r\n"
