"""Active speaker detection (gbmedia/sfu/speakers.py) on real RTP packets.

Packets are aiortc's own: serialized with the ssrc-audio-level extension and parsed
back, as the server's DTLS transport parses what a publisher sends.
"""

from __future__ import annotations

import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from gbmedia.sfu.speakers import LevelMeter, SpeakerDetector, amplitude, to_dbov

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
EXTENSIONS = HeaderExtensionsMap()
EXTENSIONS.configure(
    RTCRtpParameters(
        headerExtensions=[RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level")]
    )
)


def packet(dbov: int | None, seq: int = 0) -> RtpPacket:
    """A packet as it arrives: serialized by a sender, parsed by the receiver."""
    sent = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960, ssrc=1234, payload=b"\xfc\xff")
    if dbov is not None:
        sent.extensions.audio_level = (False, dbov)
    return RtpPacket.parse(sent.serialize(EXTENSIONS), EXTENSIONS)


def feed(meter: LevelMeter, levels: list[int | None]) -> None:
    for seq, level in enumerate(levels):
        meter.on_rtp(packet(level, seq), OPUS)


def test_the_level_survives_serialising_and_parsing():
    assert packet(23).extensions.audio_level == (False, 23)
    assert packet(None).extensions.audio_level is None


def test_amplitude_and_dbov_are_inverse_and_127_is_silence():
    assert amplitude(0) == 1.0 and amplitude(127) == 0.0 and amplitude(200) == 0.0
    assert to_dbov(amplitude(20)) == pytest.approx(20)
    assert to_dbov(0.0) == 127


def test_a_loud_participant_speaks_and_a_quiet_one_does_not():
    detector = SpeakerDetector(window=1)
    loud, quiet = detector.add("PA_loud", "TR_a"), detector.add("PA_quiet", "TR_b")
    feed(loud, [15] * 25)
    feed(quiet, [60] * 25)  # background noise
    speakers = detector.tick()
    assert speakers is not None
    assert [s.participant_id for s in speakers] == ["PA_loud"]
    assert speakers[0].level == pytest.approx(amplitude(15))
    assert speakers[0].to_json() == {"participant_id": "PA_loud", "level": round(amplitude(15), 4), "dbov": 15.0}
    feed(loud, [15] * 25)
    assert detector.tick() is None  # unchanged: no event


def test_packets_without_the_extension_are_not_counted():
    detector = SpeakerDetector(window=1)
    meter = detector.add("PA_a", "TR_a")
    feed(meter, [None] * 10 + [20] * 10)
    assert meter.packets == 10
    assert [s.level for s in detector.tick() or []] == [pytest.approx(amplitude(20))]


def test_chromium_like_envelopes_count_by_mean_amplitude():
    """Chromium's fake microphone: a beep every 500 ms, its level decaying to silence."""
    beep = [10, 9, 25, 33, 37, 40, 44, 47, 50, 56, 59, 63, 68, 72, 77, 82, 86, 96] + [127] * 7
    detector = SpeakerDetector()
    feed(detector.add("PA_chrome", "TR_a"), beep)
    assert [s.participant_id for s in detector.tick() or []] == ["PA_chrome"]


def test_smoothing_and_hysteresis_keep_a_short_pause_from_dropping_a_speaker():
    detector = SpeakerDetector(window=3, start_dbov=40, stop_dbov=46)
    meter = detector.add("PA_a", "TR_a")
    feed(meter, [30] * 25)
    assert [s.participant_id for s in detector.tick() or []] == ["PA_a"]
    for _ in range(2):  # the moving average stays above the stop threshold through two silent ticks
        feed(meter, [127] * 25)
        assert detector.tick() is None
    feed(meter, [127] * 25)
    assert detector.tick() == []  # three silent ticks: gone, and that is a change

    # Between the thresholds: not enough to start speaking, enough to keep speaking.
    detector = SpeakerDetector(window=1, start_dbov=40, stop_dbov=46)
    meter = detector.add("PA_a", "TR_a")
    feed(meter, [43] * 25)
    assert detector.tick() is None and detector.speakers == []
    feed(meter, [35] * 25)
    assert [s.participant_id for s in detector.tick() or []] == ["PA_a"]
    feed(meter, [43] * 25)
    assert detector.tick() is None and [s.participant_id for s in detector.speakers] == ["PA_a"]


def test_the_order_changes_only_for_a_clear_difference():
    detector = SpeakerDetector(window=1, margin_db=2.0)
    a, b, c = (detector.add(p, f"TR_{p}") for p in ("PA_a", "PA_b", "PA_c"))
    for meter, level in ((a, 20), (b, 21), (c, 30)):
        feed(meter, [level] * 25)
    assert [s.participant_id for s in detector.tick() or []] == ["PA_a", "PA_b", "PA_c"]
    for meter, level in ((a, 21), (b, 20), (c, 30)):  # b is now 1 dB louder: within the margin
        feed(meter, [level] * 25)
    assert detector.tick() is None
    for meter, level in ((a, 24), (b, 20), (c, 14)):  # clear differences reorder everyone
        feed(meter, [level] * 25)
    assert [s.participant_id for s in detector.tick() or []] == ["PA_c", "PA_b", "PA_a"]


def test_a_participants_tracks_add_up_and_removing_them_drops_it():
    detector = SpeakerDetector(window=1)
    mic, screen_audio = detector.add("PA_a", "TR_mic"), detector.add("PA_a", "TR_screen")
    assert detector.add("PA_a", "TR_mic") is mic
    feed(mic, [20] * 25)
    feed(screen_audio, [127] * 25)  # the mean over both tracks: half the amplitude
    assert [s.level for s in detector.tick() or []] == [pytest.approx(amplitude(20) / 2)]
    assert detector.remove("PA_a", "TR_mic") is mic
    assert detector.remove("PA_b", "TR_x") is None
    assert not detector.empty
    detector.remove("PA_a", "TR_screen")
    assert detector.empty
    assert detector.tick() == []


def test_a_muted_track_sends_nothing_and_fades_out():
    detector = SpeakerDetector(window=1)
    meter = detector.add("PA_a", "TR_a")
    feed(meter, [20] * 25)
    detector.tick()
    meter.on_track_closed()
    assert meter.closed
    assert detector.tick() == []  # no packets in a tick count as silence


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"start_dbov": 50, "stop_dbov": 40}])
def test_nonsense_parameters_are_refused(kwargs: dict[str, float]):
    with pytest.raises(ValueError):
        SpeakerDetector(**kwargs)  # type: ignore[arg-type]
