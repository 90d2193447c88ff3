"""The shell sessions of README.md and docs/*.md run against a live node, so they cannot drift.

Each document's sessions run in order in one bash (``set -euo pipefail``) against a real
``gbmedia serve`` process with a known operator token, in an empty directory holding
``offer.sdp`` (a real WebRTC offer, as an encoder would make). The convention is in
tests/docs/sessions.py and docs/testing.md; blocks marked not to run are listed as skipped
tests with their reasons.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from tests import processes
from tests.conftest import service_missing
from tests.docs.sessions import (
    Block,
    Command,
    DocFormatError,
    blocks,
    commands,
    output_difference,
    output_matches,
    script,
    unchecked_curls,
)
from tests.helpers import OPERATOR_TOKEN
from tests.processes import ServerProcess
from tests.rtc import NO_STUN

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
VARIABLES = ("GBMEDIA_URL", "OPERATOR_TOKEN")  # what every runnable session may assume
SESSION_TIMEOUT = 300.0  # one document's sessions on a loaded 2-core machine


def document_blocks(path: str) -> list[Block]:
    return blocks((REPO / path).read_text(encoding="utf-8"), path)


def safe_blocks(path: str) -> list[Block]:
    """For collection: a document breaking the convention fails in its own test, not at import."""
    try:
        return document_blocks(path)
    except DocFormatError:
        return []


RUNNABLE = [path for path in DOCUMENTS if any(block.runs for block in safe_blocks(path))]
NOT_RUN = [block for path in DOCUMENTS for block in safe_blocks(path) if block.is_session and not block.runs]


# --- the convention, checked on every document --------------------------------------------


@pytest.mark.parametrize("path", DOCUMENTS)
def test_every_document_follows_the_shell_session_convention(path: str):
    found = document_blocks(path)  # raises on untagged fences and stray markers
    problems = [problem for block in found if block.runs for problem in unchecked_curls(block)]
    assert not problems, "curl without --fail whose answer is not shown:\n" + "\n".join(problems)
    runnable = [block for block in found if block.runs]
    if runnable:
        before = "\n".join((REPO / path).read_text(encoding="utf-8").splitlines()[: runnable[0].line])
        missing = [name for name in VARIABLES if name not in before]
        assert not missing, f"{path}: say what {missing} are before its first shell session"


def test_the_docs_have_sessions_that_run_and_sessions_that_do_not():
    assert {"README.md", "docs/api.md"} <= set(RUNNABLE)
    assert all(block.not_run for block in NOT_RUN)


@pytest.mark.parametrize("block", NOT_RUN, ids=[block.where for block in NOT_RUN])
def test_a_session_marked_not_run_says_why(block: Block):
    """Each block left out names its reason in words (the test id names the block): nothing is left out unseen."""
    assert len(block.not_run.split()) >= 3, f"{block.where}: say why it does not run"


# --- the parser itself ---------------------------------------------------------------------


def test_console_commands_continue_over_backslashes_and_own_the_lines_after_them():
    doc = "text\n\n```console\n$ echo a \\\n    b\n a b\n$ true\n$ for x in 1; do\n>   echo $x\n> done\n1\n```\n"
    block = blocks(doc, "x.md")[0]
    assert commands(block) == [
        Command("x.md:4", "echo a \\\n    b\n", " a b\n"),
        Command("x.md:7", "true\n", ""),
        Command("x.md:8", "for x in 1; do\n  echo $x\ndone\n", "1\n"),
    ]


def test_a_marker_skips_the_next_session_and_reasons_are_required():
    doc = "<!-- not run: needs Docker -->\n\n   ```sh\n   docker run x\n   ```\n```text\nx\n```\n"
    first, second = blocks(doc, "x.md")
    assert (first.not_run, first.body, first.runs) == ("needs Docker", "docker run x\n", False)
    assert not second.is_session
    for broken, complaint in [
        ("```\nls\n```\n", "without a tag"),
        ("<!-- not run: -->\n```sh\nls\n```\n", "without a reason"),
        ("<!-- not run: why -->\nprose\n```sh\nls\n```\n", "no shell session after it"),
        ("<!-- not run: why -->\n```json\n{}\n```\n", "before a json block"),
        ("<!-- not-run why -->\n```sh\nls\n```\n", "on a line of its own"),
        ("```console\nls\n```\n", None),
    ]:
        with pytest.raises(DocFormatError) as caught:
            commands(blocks(broken, "x.md")[0])
        assert complaint is None or complaint in str(caught.value)


def test_a_curl_must_fail_on_http_errors_unless_its_answer_is_shown():
    doc = (
        "```sh\nA=$(curl -sf x | jq .)\ncurl --fail-with-body -X POST x \\\n  -d '{}'\ncurl -s x | jq .\n"
        "curl -H 'a' \\\n  -fsS x\n```\n```console\n$ curl -s x\n{}\n$ curl -s y\n```\n"
    )
    sh, console = blocks(doc, "x.md")
    assert unchecked_curls(sh) == ["x.md:1: curl -s x "]
    assert unchecked_curls(console) == ["x.md:12: curl -s y"]


def test_outputs_compare_like_doctest_with_ellipsis_and_any_whitespace():
    assert output_matches('{\n  "id": "...",\n  "name": "Acme"\n}\n', '{\n    "id": "9e8f",\n  "name": "Acme"\n}\n')
    assert output_matches("http://.../web/room/?token=eyJ...\n", "http://10.0.0.1:7880/web/room/?token=eyJhbG\n")
    assert not output_matches('{"name": "Acme"}\n', '{"name": "Acme Corp"}\n')
    assert not output_matches("", "something\n")
    assert "Expected" in output_difference(Command("x.md:1", "true\n", "a\n"), "b\n")


# --- running them --------------------------------------------------------------------------


async def encoder_offer() -> str:
    """A real sendonly WebRTC offer (video and audio), what OBS or GStreamer would POST to /whip."""
    pc = RTCPeerConnection(NO_STUN)
    try:
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def node_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """A node of its own: none of the caller's GBMEDIA_* settings (a Redis URL, a region) leak into the outputs."""
    return processes.node_env(tmp_path, database_url)


def session_env(env: dict[str, str], url: str) -> dict[str, str]:
    """The node's own settings (the CLI shares its database and key) and the variables the docs use."""
    return {
        **env,
        "GBMEDIA_PORT": str(urlsplit(url).port),
        "GBMEDIA_URL": url,
        "OPERATOR_TOKEN": OPERATOR_TOKEN,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # gbmedia, next to python
    }


@pytest.mark.parametrize("path", RUNNABLE)
async def test_the_shell_sessions_of_the_document_run_against_a_live_node(path: str, tmp_path: Path, database_url: str):
    for tool in ("bash", "curl", "jq"):
        if shutil.which(tool) is None:
            service_missing(f"{tool} (the docs' shell sessions use it)")
    steps = [step for block in document_blocks(path) if block.runs for step in commands(block)]
    work, outputs = tmp_path / "work", tmp_path / "outputs"
    work.mkdir()
    outputs.mkdir()
    (tmp_path / "home").mkdir()
    (work / "offer.sdp").write_text(await encoder_offer())
    step_file = tmp_path / "step"
    (tmp_path / "session.sh").write_text(script(steps, outputs, step_file))
    env = node_env(tmp_path, database_url)
    node = ServerProcess(env, tmp_path, "node")
    try:
        url = await node.start()
        with (tmp_path / "session.stdout").open("wb") as out, (tmp_path / "session.stderr").open("wb") as err:
            bash = await asyncio.create_subprocess_exec(
                "bash",
                str(tmp_path / "session.sh"),
                cwd=work,
                env=session_env(env, url),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
            try:
                async with asyncio.timeout(SESSION_TIMEOUT):
                    returncode = await bash.wait()
            except TimeoutError:  # reported below as the step that hung
                bash.kill()
                returncode = await bash.wait()
    finally:
        await node.stop()

    differences = []
    for n, step in enumerate(steps):
        printed = outputs / f"{n}.out"
        if step.expected is not None and printed.exists():  # a step after a failure never ran
            got = printed.read_text(errors="replace")
            if not output_matches(step.expected, got):
                differences.append(f"{step.where}: $ {step.text}{output_difference(step, got)}")
    if returncode != 0:
        step = steps[int(step_file.read_text())]
        stopped = f"was killed after {SESSION_TIMEOUT:.0f}s" if returncode < 0 else f"stopped with exit {returncode}"
        differences.append(
            f"{step.where}: the session {stopped} at\n{step.text}\n"
            f"stderr:\n{(tmp_path / 'session.stderr').read_text(errors='replace')[-3000:]}\n"
            f"node's stderr:\n{node.stderr_tail(2000)}"
        )
    assert not differences, "\n".join(differences)
