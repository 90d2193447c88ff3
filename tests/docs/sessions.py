"""The shell sessions of README.md and docs/*.md, read as a script to run against a live node.

Examples in the docs are promises, so tests/docs/test_shell_sessions.py runs them. The
convention (docs/testing.md, "Docs that run"):

- A fenced block tagged ``sh``, ``bash``, ``shell`` or ``console`` is a shell session and
  runs. Every fenced block carries a tag (``text``, ``json``, ``python``...), so a shell
  session cannot hide in an untagged block.
- ``<!-- not run: reason -->`` on the line before a session's fence (blank lines allowed
  between) keeps it from running; the reason is reported with the test's results.
- In a ``console`` block a line starting with ``$ `` is a command (with the lines after it
  while a line ends in ``\\``, and those starting with ``> ``, the shell's prompt for more),
  and the lines up to the next command are what it prints,
  compared the way doctest compares (``ELLIPSIS``: ``...`` stands for any text;
  ``NORMALIZE_WHITESPACE``). A command with no lines after it must print nothing.
  ``sh``/``bash``/``shell`` blocks run as they are, their output unchecked.
- A ``curl`` in a session that runs either fails on an HTTP error (``-f``, ``--fail``,
  ``--fail-with-body``) or is a console command whose answer is shown, and so checked.
"""

from __future__ import annotations

import doctest
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

SHELL_TAGS = frozenset({"sh", "bash", "shell", "console"})
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
NOT_RUN_ANY = re.compile(r"^\s*<!--\s*not[ -]?run\b", re.IGNORECASE)
CURL = re.compile(r"(?<![\w./-])curl(?=\s)(?P<args>(?:\\\n|[^|;&)\n])*)")
FAILS_ON_HTTP_ERROR = re.compile(r"(?<!\S)(?:-[a-zA-Z]*f[a-zA-Z]*|--fail|--fail-with-body)(?!\S)")
CHECK_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


class DocFormatError(ValueError):
    """A document breaks the convention (untagged fence, stray marker, console text before a command)."""


@dataclass(frozen=True)
class Block:
    """One fenced block of a document."""

    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    tag: str
    body: str  # dedented by the fence's own indentation
    not_run: str | None = None  # the reason, when the block is marked not to run

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def is_session(self) -> bool:
        return self.tag in SHELL_TAGS

    @property
    def runs(self) -> bool:
        return self.is_session and self.not_run is None


@dataclass(frozen=True)
class Command:
    """A step of a session: a shell snippet, and what it must print (None: not checked)."""

    where: str  # path:line of the command
    text: str
    expected: str | None


def blocks(markdown: str, path: str) -> list[Block]:
    """Every fenced block of ``markdown``; raises DocFormatError on an untagged fence or a stray marker."""
    lines = markdown.splitlines()
    found: list[Block] = []
    problems: list[str] = []
    pending: tuple[int, str] | None = None  # a not-run marker waiting for its block
    i = 0
    while i < len(lines):
        line = lines[i]
        opening = FENCE.match(line)
        if opening is None:
            marker = NOT_RUN.match(line)
            if marker is not None:
                if pending is not None:
                    problems.append(f"{path}:{pending[0]}: 'not run' marker with no shell session after it")
                reason = marker["reason"].strip()
                if not reason:
                    problems.append(f"{path}:{i + 1}: 'not run' marker without a reason")
                pending = (i + 1, reason)
            elif NOT_RUN_ANY.search(line):
                problems.append(f"{path}:{i + 1}: write the marker as <!-- not run: reason --> on a line of its own")
            elif line.strip() and pending is not None:
                problems.append(f"{path}:{pending[0]}: 'not run' marker with no shell session after it")
                pending = None
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        tag = opening["info"].strip().split(" ")[0] if opening["info"].strip() else ""
        end = i + 1
        while end < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]):
            end += 1
        inside = lines[i + 1 : end]
        body = "\n".join(text[len(indent) :] if text.startswith(indent) else text.lstrip() for text in inside)
        if not tag:
            problems.append(f"{path}:{i + 1}: a fenced block without a tag (sh, console, json, text...)")
        not_run = None
        if pending is not None:
            if tag in SHELL_TAGS:
                not_run = pending[1]
            else:
                problems.append(f"{path}:{pending[0]}: 'not run' marker before a {tag or 'untagged'} block")
            pending = None
        found.append(Block(path, i + 1, tag, body + "\n" if body else "", not_run))
        i = end + 1
    if pending is not None:
        problems.append(f"{path}:{pending[0]}: 'not run' marker with no shell session after it")
    if problems:
        raise DocFormatError("\n".join(problems))
    return found


def commands(block: Block) -> list[Command]:
    """The steps of a session block: the whole block for sh/bash/shell, one per ``$ `` command for console."""
    if block.tag != "console":
        return [Command(block.where, block.body, None)]
    steps: list[Command] = []
    lines = block.body.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            if lines[i].strip():
                raise DocFormatError(f"{block.path}:{block.line + 1 + i}: console text before any '$ ' command")
            i += 1
            continue
        start = i
        text = [lines[i][2:]]
        while i + 1 < len(lines) and (text[-1].endswith("\\") or lines[i + 1].startswith("> ")):
            i += 1
            text.append(lines[i][2:] if lines[i].startswith("> ") else lines[i])
        i += 1
        output: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        while output and not output[-1].strip():
            output.pop()
        expected = "\n".join(output) + "\n" if output else ""
        steps.append(Command(f"{block.path}:{block.line + 1 + start}", "\n".join(text) + "\n", expected))
    return steps


def unchecked_curls(block: Block) -> list[str]:
    """The curl calls of a running block whose HTTP errors would pass unseen (neither --fail nor shown output)."""
    found = []
    for command in commands(block):
        if command.expected:  # its answer is compared
            continue
        for call in CURL.finditer(command.text):
            if not FAILS_ON_HTTP_ERROR.search(call["args"].replace("\\\n", " ")):
                found.append(f"{command.where}: curl{call['args'].splitlines()[0]}")
    return found


def output_matches(expected: str, got: str) -> bool:
    return doctest.OutputChecker().check_output(expected, got, CHECK_FLAGS)


def output_difference(command: Command, got: str) -> str:
    example = doctest.Example(command.text, command.expected or "")
    return doctest.OutputChecker().output_difference(example, got, CHECK_FLAGS)


def script(steps: list[Command], out_dir: Path, step_file: Path) -> str:
    """One bash script running ``steps`` in order; a checked step's stdout goes to ``<out_dir>/<n>.out``.

    ``set -euo pipefail``: the first command that fails stops the session, and ``step_file``
    holds the number of the step that was running.
    """
    parts = [
        "set -euo pipefail",
        "trap 'echo \"docs session: exit $? from: $BASH_COMMAND\" >&2' ERR",
    ]
    for n, step in enumerate(steps):
        parts.append(f"printf '%s\\n' {n} >{shlex.quote(str(step_file))}")
        if step.expected is None:
            parts.append(step.text)
        else:
            # ':' first: a command that is only a comment still makes a valid group
            parts.append(f"{{ :\n{step.text}}} >{shlex.quote(str(out_dir / f'{n}.out'))}")
    return "\n".join(parts) + "\n"
