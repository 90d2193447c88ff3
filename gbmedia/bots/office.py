"""Child processes a keyword needs: LibreOffice for CONVERT, the template renderer for FILL.

Both run with ``asyncio.create_subprocess_exec`` (the event loop only waits on them),
in a session of their own, and are killed with their whole process group at the run's
deadline: LibreOffice's ``soffice`` launcher starts ``soffice.bin`` as a child, which
a plain kill would leave behind. Each conversion gets a fresh LibreOffice profile
directory, so conversions in parallel never share (and lock) one.

LibreOffice fetches what a document links to (an HTML page's ``<img src="http://...">``),
which would let a dialog's file reach the node's private network. Where the system lets
a process drop its network (``unshare -rn``: a user and network namespace of its own, no
privileges needed), LibreOffice runs without one, so it fetches nothing; where it does
not, LibreOffice runs as it is (docs/security.md says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from gbmedia.bots.errors import Fault

MISSING = (
    "CONVERT needs LibreOffice: {binary!r} was not found (install Debian's libreoffice-writer-nogui, "
    "or point GBMEDIA_BOT_OFFICE_BINARY at soffice)"
)


async def _communicate(
    what: str, argv: list[str], stdin: bytes | None, seconds: float, cwd: str | None = None
) -> bytes:
    """Run ``argv`` to its end within ``seconds``: its standard output; a Fault when it ran out of time."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(stdin), seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise Fault(f"{what} did not finish within {seconds:.1f} seconds") from None
    finally:
        if process.returncode is None:  # cancelled: leave nothing running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return out


_isolation: list[str] | None = None


async def isolation() -> list[str]:
    """``["unshare", "-rn"]`` where that runs a process without a network here, else nothing (checked once)."""
    global _isolation
    if _isolation is None:
        found = shutil.which("unshare")
        works = False
        if found is not None:
            probe = await asyncio.create_subprocess_exec(
                found, "-rn", "true", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            works = await probe.wait() == 0
        _isolation = [found, "-rn"] if found is not None and works else []
    return _isolation


async def convert_to_pdf(binary: str, name: str, data: bytes, seconds: float) -> bytes:
    """A document (``name`` says its format: .docx, .odt, .rtf, .txt, .html...) converted to PDF by LibreOffice."""
    found = shutil.which(binary)
    if found is None:
        raise Fault(MISSING.format(binary=binary))
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="gbmedia-convert-"))
    try:
        source = work / (PurePosixPath(name).name or "document")
        await asyncio.to_thread(source.write_bytes, data)
        argv = [
            *await isolation(),
            found,
            f"-env:UserInstallation={(work / 'profile').as_uri()}",
            "--headless",
            "--norestore",
            "--convert-to",
            "pdf",
            "--outdir",
            str(work / "out"),
            str(source),
        ]
        await _communicate("LibreOffice", argv, None, seconds, cwd=str(work))
        result = work / "out" / (source.stem + ".pdf")
        if not result.is_file():
            raise Fault(f"LibreOffice could not convert {name} to PDF")
        return await asyncio.to_thread(result.read_bytes)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


async def render_template(request: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``gbmedia.bots.templating``'s answer to ``request``, rendered in a capped child process."""
    argv = [sys.executable, "-m", "gbmedia.bots.templating", f"{seconds:.1f}"]
    out = await _communicate("the template", argv, json.dumps(request).encode(), seconds)
    try:
        answer: dict[str, Any] = json.loads(out)
    except ValueError:
        raise Fault("the template could not be filled (its renderer stopped: too much memory or time)") from None
    return answer
