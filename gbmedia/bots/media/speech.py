"""A media bot's voice: text to speech with eSpeak NG (Debian's ``espeak-ng``), offline.

``espeak-ng --stdout`` writes a WAV (mono, 16-bit, 22,050 Hz) whose header claims an
unknown length, so the samples are taken from its ``data`` chunk to the end, and
resampled to the 48 kHz the bot's audio track sends. The synthesizer runs as a
subprocess (awaited, never blocking the loop) and the resampling in a thread.
"""

from __future__ import annotations

import asyncio
import shutil
import struct

import numpy as np

from gbmedia.bots.errors import Fault

RATE = 48_000
MAX_TEXT = 1000  # characters: about a minute of speech
SECONDS = 30.0


def espeak() -> str | None:
    """The espeak-ng binary, when the node has it."""
    return shutil.which("espeak-ng")


def wav_samples(data: bytes, rate: int = RATE) -> np.ndarray:
    """The int16 samples of espeak-ng's mono 16-bit WAV, resampled to ``rate``."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    source_rate = struct.unpack("<I", data[24:28])[0]
    start = data.find(b"data", 12)
    if start < 0 or not source_rate:
        raise ValueError("a WAV without samples")
    body = data[start + 8 :]
    samples = np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.float32)
    if samples.size == 0:
        return np.zeros(0, dtype=np.int16)
    count = int(samples.size * rate / source_rate)
    resampled = np.interp(np.arange(count) * source_rate / rate, np.arange(samples.size), samples)
    return resampled.astype(np.int16)


async def synthesize(text: str, language: str = "en") -> np.ndarray:
    """``text`` spoken in ``language`` (a voice of espeak-ng's), as 48 kHz int16 samples."""
    binary = espeak()
    if binary is None:
        raise Fault("SAY needs speech synthesis: install the espeak-ng package on the node")
    text = text.strip()
    if not text:
        raise Fault("SAY needs something to say")
    if len(text) > MAX_TEXT:
        raise Fault(f"SAY takes at most {MAX_TEXT} characters")
    voice = language if language.isalpha() and len(language) <= 3 else "en"
    process = await asyncio.create_subprocess_exec(
        binary,
        "-v",
        voice,
        "--stdout",
        "--",
        text,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise Fault("SAY: the synthesizer took too long") from None
    if process.returncode != 0 and voice != "en":  # a language espeak-ng has no voice for: English
        return await synthesize(text, "en")
    if process.returncode != 0:
        raise Fault(f"SAY: the synthesizer failed ({err.decode(errors='replace').strip()[:200]})")
    return await asyncio.to_thread(wav_samples, out)
