"""Running ``gbmedia bot run`` as an author does: a real process, its stdin scripted."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "bots"


@dataclass
class Finished:
    code: int
    said: list[str]  # stdout's lines: what the bot said
    err: str


def bot_run(file: Path, answers: list[str], *options: str) -> Finished:
    """``python -m gbmedia bot run FILE OPTIONS`` with ``answers`` as stdin's lines."""
    done = subprocess.run(
        [sys.executable, "-m", "gbmedia", "bot", "run", str(file), *options],
        input="".join(f"{a}\n" for a in answers),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Finished(done.returncode, done.stdout.splitlines(), done.stderr)
