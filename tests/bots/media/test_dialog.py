"""Media bots driven by GB BASIC: examples/bots/media.bas in a real room, and the statements' bad inputs.

The dialog runs on a real node through the runner the dialog engine uses, suspended and
restored through JSON at every HEAR as the engine does; an aiortc participant in the
room decodes what the bot publishes: the slide, the chart, the spoken greeting, its own
camera through the filter it chose.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gbmedia.bots.compiler import load
from gbmedia.bots.errors import Fault
from gbmedia.bots.host import MemoryPort
from gbmedia.bots.machine import Outcome, Run
from gbmedia.bots.media.dialog import SETTING
from gbmedia.bots.media.speech import espeak, synthesize, wav_samples
from gbmedia.node import Node
from tests.bots.media.test_bot import MEDIA_WAIT, CheckerTrack, bgr, frames_after, open_room, token
from tests.helpers import Tenant
from tests.rtc import wait_for

EXAMPLE = Path(__file__).parents[3] / "examples" / "bots" / "media.bas"


class Dialog:
    """One dialog's run on the node, saved as JSON and restored at each HEAR like the dialog engine does."""

    def __init__(self, node: Node, tenant: Tenant, source: str) -> None:
        self.node, self.instance_id = node, uuid.UUID(tenant.instance_id)
        self.compiled = load(source, "media")
        self.port = MemoryPort()
        self.state: dict[str, Any] | None = None

    async def _context(self) -> Any:
        instance = await self.node.bots.engine.runner.instance(self.instance_id)
        return self.node.bots.engine.runner.context(instance, "media", self.port)

    async def start(self) -> Outcome:
        return self._keep(await Run(self.compiled, await self._context()).start())

    async def answer(self, text: str) -> Outcome:
        assert self.state is not None
        run = Run.restore(self.compiled, await self._context(), self.state)
        return self._keep(await run.resume(text))

    def _keep(self, outcome: Outcome) -> Outcome:
        self.state = outcome.state
        return outcome


def _bars(image: np.ndarray, count: int) -> list[int]:
    """How tall each of a chart's ``count`` orange bars is, in pixels, from left to right."""
    width = image.shape[1]
    margin = width // 16
    slot = (width - 2 * margin) / count
    orange = (image[:, :, 2] > 180) & (image[:, :, 1] > 110) & (image[:, :, 0] < 140)
    return [int(orange[:, int(margin + (i + 0.5) * slot)].sum()) for i in range(count)]


@pytest.mark.skipif(espeak() is None, reason="espeak-ng is not installed (scripts/test installs it)")
async def test_the_example_media_bot_in_a_room(rtc, tenant: Tenant, node: Node) -> None:
    alice = await rtc()
    await alice.join(token(tenant, "alice"))
    alice_video = (await alice.publish(CheckerTrack()))["tracks"][0]["id"]
    await open_room(node, tenant)
    dialog = Dialog(node, tenant, EXAMPLE.read_text())

    outcome = await dialog.start()
    assert outcome.status == "waiting", outcome.error
    bot = node.media_bots.bots[outcome.state["settings"][SETTING]]  # the bot's id travels in the run's JSON
    joined = await alice.wait_event(lambda e: e["type"] == "participant_joined")
    assert joined["participant"]["name"] == "Standup Bot"
    assert joined["participant"]["identity"] == "bot:standup-bot"
    published = await _published(alice, bot.participant.id)
    video, audio = published["video"], published["audio"]

    (slide,) = await frames_after(alice, video, 1)
    image = bgr(slide)
    assert image[: image.shape[0] // 6].mean() < 110 and image[image.shape[0] // 3 :].mean() > 180, "a slide"
    # The greeting, spoken: alice hears speech where a dialog's bot is otherwise silent.
    await wait_for(lambda: bot.audio.spoken > 48_000, within=MEDIA_WAIT)
    await wait_for(lambda: _loudest(alice.frames.get(audio, [])) > 300, within=MEDIA_WAIT)

    outcome = await dialog.answer("3 5 8")
    assert outcome.status == "waiting", outcome.error
    chart = bgr((await frames_after(alice, video, 1))[0])
    low, middle, high = _bars(chart, 3)
    assert 0 < low < middle < high, (low, middle, high)
    assert 2.0 < high / low < 3.4, "bars in proportion to 3 and 8"

    assert (await dialog.answer("alice")).status == "waiting"
    outcome = await dialog.answer("3")  # the menu's third choice: edges
    assert outcome.status == "waiting", outcome.error
    assert bot.processing == alice_video
    outlines = [bgr(f) for f in await frames_after(alice, video, 4)]
    assert np.median([o.mean() for o in outlines]) < 80, "edges: mostly black"
    assert "Showing alice with edges." in dialog.port.said

    outcome = await dialog.answer("bye")
    assert outcome.status == "done", outcome.error
    assert dialog.port.said[-1] == "I left the room."
    await alice.wait_event(lambda e: e["type"] == "participant_left" and e.get("participant_id") == bot.participant.id)
    assert bot.left and bot.id not in node.media_bots.bots


async def _published(client: Any, participant_id: str) -> dict[str, str]:
    def tracks() -> dict[str, str]:
        return {
            e["track"]["kind"]: e["track"]["id"]
            for e in client.events
            if e["type"] == "track_published" and e["participant_id"] == participant_id
        }

    await wait_for(lambda: len(tracks()) == 2, within=MEDIA_WAIT)
    return tracks()


def _loudest(frames: list[Any]) -> float:
    if not frames:
        return 0.0
    return max(float(np.sqrt(np.mean(f.to_ndarray().astype(float) ** 2))) for f in frames[-150:])


async def test_media_statements_refuse_bad_input(tenant: Tenant, node: Node) -> None:
    await open_room(node, tenant)
    cases = [
        ('SHOW CLOCK "x"', "JOIN ROOM first"),
        ('JOIN ROOM "nowhere"', "no room 'nowhere'"),
        ('JOIN ROOM "standup" AS ""', "1 to 64 characters"),
        ('JOIN ROOM "standup"\nJOIN ROOM "standup"', "in a room already"),
        ('JOIN ROOM "standup"\nPROCESS VIDEO OF "alice" WITH "sepia"', "no filter 'sepia'"),
        ('JOIN ROOM "standup"\nPROCESS VIDEO OF "alice" WITH "blur"', "PROCESS VIDEO OF alice"),
        ('JOIN ROOM "standup"\nSHOW CHART ["a"]', "numbers, not text"),
        ('JOIN ROOM "standup"\nSHOW CHART []', "1 to 50 numbers"),
        ('JOIN ROOM "standup"\nSHOW SLIDE "t", [1,2,3,4,5,6,7,8,9,10,11,12,13]', "at most 12 lines"),
        ('JOIN ROOM "standup"\nPLAY TONE 99999', "from 0 to 20000 Hz"),
        ('JOIN ROOM "standup"\nSAY ""', "something to say"),
        ('JOIN ROOM "standup"\nSHOW SLIDE "' + "t" * 201 + '"', "at most 200 characters"),
    ]
    for source, message in cases:
        outcome = await Dialog(node, tenant, source).start()
        assert outcome.status == "failed", source
        assert message in str(outcome.error), (source, outcome.error)
        for bot in list(node.media_bots.bots.values()):  # each case's bot leaves: a room holds 4 at most
            await bot.leave()


async def test_a_dialog_without_media_bots_is_told_so() -> None:
    from tests.bots.helpers import talk_with

    outcome, _ = await talk_with('JOIN ROOM "standup"\n')
    assert outcome.status == "failed" and "media bots are not available" in str(outcome.error)


def test_espeak_wav_is_read_and_resampled() -> None:
    header = b"RIFF\xff\xff\xff\x7fWAVEfmt " + (16).to_bytes(4, "little") + bytes([1, 0, 1, 0])
    header += (24_000).to_bytes(4, "little") + (48_000).to_bytes(4, "little") + bytes([2, 0, 16, 0])
    body = np.array([0, 1000, 2000, 3000], dtype="<i2").tobytes()
    samples = wav_samples(header + b"data\xff\xff\xff\x7f" + body)
    assert samples.dtype == np.int16 and samples.size == 8
    assert list(samples[:4]) == [0, 500, 1000, 1500]
    with pytest.raises(ValueError):
        wav_samples(b"not a wav at all, not at all....")


def test_the_docs_media_block_compiles() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "bots.md").read_text()
    section = doc[doc.index("## Media bots") : doc.index("## The dialog engine")]
    block = re.search(r"^```bas\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block is not None
    compiled = load(block[1], "docs")
    assert compiled.dialog == "docs"


@pytest.mark.skipif(espeak() is None, reason="espeak-ng is not installed (scripts/test installs it)")
async def test_speech_in_a_language_espeak_lacks_falls_back_to_english_and_long_text_is_refused() -> None:
    english = await synthesize("hello there", "en")
    unknown = await synthesize("hello there", "zz")
    assert english.size > 24_000 and unknown.size == english.size  # the same English voice
    with pytest.raises(Fault, match="at most 1000 characters"):
        await synthesize("a" * 1001)
    with pytest.raises(ValueError, match="without samples"):
        wav_samples(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(16))
