"""Pre-encoded clips a publisher replays instead of encoding live (``bench.forwarding --video 2160p``).

aiortc's VP8 encoder cannot make 3840x2160 at 30 fps in real time on these machines (it
runs in Python's thread pool on the publisher's cores), and a publisher that drops frames
would measure itself, not the server. So the 4K stream is encoded once with ffmpeg
(libvpx, realtime settings), cached under a directory keyed by its parameters, and
replayed packet by packet at its own frame rate (``bench.lib.media.ReplayVideoTrack``).

``testsrc2`` alone compresses far below the target bitrate; temporal noise over it makes
every frame cost bits, like a camera's sensor noise does, so libvpx reaches the target.
ffprobe then checks what was made: codec, size and the real bitrate, from the sizes of
the packets (the container's own figure includes its overhead).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench.lib.errors import BenchError

CLIP_FORMAT_VERSION = 1  # bump when the command changes in a way the key's parameters do not show
BITRATE_RANGE = (15_000_000, 20_000_000)  # issue 20: "a 2160p stream at 15-20 Mbps"


@dataclass(frozen=True)
class ClipSpec:
    """What to encode: size, rate, length, target bitrate, keyframe interval and the noise that makes it cost."""

    width: int = 3840
    height: int = 2160
    fps: int = 30
    seconds: float = 10.0
    bitrate: int = 18_000_000
    keyframe_seconds: float = 2.0
    noise: int = 12  # ffmpeg noise filter strength (alls), temporal

    @property
    def keyframe_interval(self) -> int:
        """Frames between keyframes (libvpx's -g)."""
        return max(1, round(self.keyframe_seconds * self.fps))

    def key(self) -> str:
        """The cache file's name stem: every parameter that changes the bytes, so a changed spec re-encodes."""
        return (
            f"vp8-{self.width}x{self.height}-{self.fps}fps-{self.seconds:g}s-{self.bitrate // 1000}k-"
            f"g{self.keyframe_interval}-noise{self.noise}-v{CLIP_FORMAT_VERSION}"
        )

    def ffmpeg_command(self, output: Path, ffmpeg: str = "ffmpeg") -> list[str]:
        """The one-off encode: libvpx VP8 in realtime mode (what a live encoder would do), its rate pinned
        near the target (min = max = target) so the replay is a steady stream, not a VBR average."""
        rate = str(self.bitrate)
        return [
            ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={self.width}x{self.height}:rate={self.fps}:duration={self.seconds:g}",
            "-vf",
            f"noise=alls={self.noise}:allf=t",
            "-c:v",
            "libvpx",
            "-b:v",
            rate,
            "-minrate",
            rate,
            "-maxrate",
            rate,
            "-bufsize",
            rate,
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-threads",
            "2",
            "-g",
            str(self.keyframe_interval),
            "-keyint_min",
            str(self.keyframe_interval),
            "-an",
            "-f",
            "webm",
            str(output),
        ]


UHD = ClipSpec()
VIDEOS: dict[str, ClipSpec | None] = {"vga": None, "2160p": UHD}  # vga: the live-encoded 640x480 publisher


@dataclass(frozen=True)
class ClipInfo:
    """What ffprobe found in a clip."""

    path: Path
    codec: str
    width: int
    height: int
    fps: float
    seconds: float
    frames: int
    keyframes: int
    bytes: int
    max_frame_bytes: int

    @property
    def bitrate(self) -> float:
        """The real video bitrate in bits/s: the packets' bytes over the clip's length (no container overhead)."""
        return self.bytes * 8 / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        """For the benchmark's JSON ``config``."""
        return {
            "path": str(self.path),
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "seconds": self.seconds,
            "frames": self.frames,
            "keyframes": self.keyframes,
            "bitrate": round(self.bitrate),
            "max_frame_bytes": self.max_frame_bytes,
        }


def ffprobe_command(path: Path, ffprobe: str = "ffprobe") -> list[str]:
    """ffprobe's JSON of the first video stream and its every packet (size, flags)."""
    return [
        ffprobe,
        "-v",
        "error",
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=codec_name,width,height,avg_frame_rate:packet=size,flags",
        "-of",
        "json",
        str(path),
    ]


def parse_probe(path: Path, probe: dict[str, Any]) -> ClipInfo:
    """ffprobe's JSON (``ffprobe_command``) as a ``ClipInfo``; the length is frames / frame rate, which is
    what a replay at that rate takes (the container's duration can be one frame off)."""
    streams = probe.get("streams") or []
    if not streams:
        raise BenchError(f"{path}: ffprobe found no video stream")
    stream = streams[0]
    packets = [p for p in probe.get("packets", []) if int(p.get("size", 0)) > 0]
    rate = str(stream.get("avg_frame_rate") or "0/1")
    fps = 0.0 if rate.endswith("/0") else float(Fraction(rate))
    sizes = [int(p["size"]) for p in packets]
    return ClipInfo(
        path=path,
        codec=str(stream.get("codec_name", "")),
        width=int(stream.get("width", 0)),
        height=int(stream.get("height", 0)),
        fps=fps,
        seconds=len(packets) / fps if fps else 0.0,
        frames=len(packets),
        keyframes=sum(1 for p in packets if "K" in p.get("flags", "")),
        bytes=sum(sizes),
        max_frame_bytes=max(sizes, default=0),
    )


def problems(info: ClipInfo, spec: ClipSpec, bitrate_range: tuple[float, float] = BITRATE_RANGE) -> list[str]:
    """Why a clip is not the stream the spec asks for (empty when it is): codec, size, rate, bitrate."""
    found = []
    if info.codec != "vp8":
        found.append(f"codec {info.codec!r}, not vp8")
    if (info.width, info.height) != (spec.width, spec.height):
        found.append(f"{info.width}x{info.height}, not {spec.width}x{spec.height}")
    if abs(info.fps - spec.fps) > 0.01:
        found.append(f"{info.fps:g} fps, not {spec.fps}")
    if not info.frames or not info.keyframes:
        found.append(f"{info.frames} frames, {info.keyframes} keyframes")
    low, high = bitrate_range
    if not low <= info.bitrate <= high:
        found.append(f"{info.bitrate / 1e6:.2f} Mbps, not within {low / 1e6:g}-{high / 1e6:g} Mbps")
    return found


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gbmedia-bench`` (``~/.cache/gbmedia-bench``): kept across runs, outside the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gbmedia-bench"


def tool(name: str) -> str:
    """The path of ffmpeg or ffprobe; a BenchError that says how to install it where it is missing."""
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} is missing: the 2160p clip is made with it (apt-get install -y ffmpeg)")
    return found


def probe(path: Path) -> ClipInfo:
    """Run ffprobe on ``path``."""
    done = subprocess.run(ffprobe_command(path, tool("ffprobe")), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"ffprobe {path} failed: {done.stderr.strip()[:500]}")
    return parse_probe(path, json.loads(done.stdout))


def ensure_clip(spec: ClipSpec, cache_dir: Path) -> tuple[ClipInfo, bool]:
    """The clip for ``spec`` from the cache, encoded first when it is not there; (its probe, whether it was
    encoded now). Encoded into a ``.part`` file and renamed, so an interrupted encode is never reused; a
    cached clip that fails the checks is encoded again (and then must pass)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{spec.key()}.webm"
    if path.exists():
        info = probe(path)
        if not problems(info, spec):
            return info, False
    part = path.with_suffix(".webm.part")
    done = subprocess.run(spec.ffmpeg_command(part, tool("ffmpeg")), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        part.unlink(missing_ok=True)
        raise BenchError(f"ffmpeg could not encode {path.name}: {done.stderr.strip()[:500]}")
    os.replace(part, path)
    info = probe(path)
    found = problems(info, spec)
    if found:
        raise BenchError(f"{path}: {'; '.join(found)}")
    return info, True


def describe(info: ClipInfo) -> str:
    """One line for the run's log."""
    return (
        f"{info.width}x{info.height} {info.codec.upper()} {info.fps:g} fps, {info.seconds:.1f} s, "
        f"{info.bitrate / 1e6:.2f} Mbps, {info.frames} frames, {info.keyframes} keyframes (largest frame "
        f"{info.max_frame_bytes / 1000:.0f} kB): {info.path}"
    )
