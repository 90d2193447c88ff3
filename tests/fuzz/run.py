"""Fuzz the targets of :mod:`tests.fuzz.targets` under atheris (libFuzzer, coverage-guided).

``python -m tests.fuzz.run <target> [libFuzzer args]``: one target, for a long session by hand::

    PYTHONPATH=. python -m tests.fuzz.run sdp -max_total_time=600 /tmp/sdp-corpus tests/fuzz/seeds/sdp

``python -m tests.fuzz.run all ...``: every target in one process, an input's first
byte choosing the target (:func:`tests.fuzz.targets.every_target`). The suite runs that, with a bounded
budget (``tests/fuzz/test_fuzz.py``): starting Python with the parsers costs seconds,
once instead of once per target. libFuzzer ends the process when it is done.

A crash leaves ``crash-<sha1>`` under ``-artifact_prefix``: fix the parser, then add
the input to ``tests/fuzz/corpus/<target>/`` (for ``all``, without its first byte)
so every run replays it.
"""

from __future__ import annotations

import importlib
import sys
import types

import atheris

from tests.fuzz.targets import TARGETS, every_target

# Coverage is gathered from the parsers only: instrumenting every module imported (all of aiortc,
# the rooms and tenancy behind gbmedia.signaling.whip) took seconds before the first input.
PARSERS = (
    "aiortc.sdp",
    "aiortc.rtp",
    "gbmedia.sfu.sdp_check",
    "gbmedia.sfu.peers",
    "gbmedia.sfu.simulcast",
    "gbmedia.sfu.rtp",
    "gbmedia.sfu.codecs",
    "gbmedia.sfu.speakers",
    "gbmedia.sfu.aiortc_adapter",
    "gbmedia.jsondepth",
    "gbmedia.wire",
    "gbmedia.http.responses",
    "gbmedia.messaging.models",
    "gbmedia.signaling.whip",
    "tests.fuzz.targets",
)


def instrument(module: types.ModuleType) -> None:
    """Coverage and comparison tracing for the functions and methods ``module`` defines."""
    for value in vars(module).values():
        members = vars(value).values() if isinstance(value, type) else (value,)
        for member in members:
            function = member.__func__ if isinstance(member, classmethod | staticmethod) else member
            if isinstance(function, types.FunctionType) and function.__module__ == module.__name__:
                atheris.instrument_func(function)


def main() -> None:
    name, *args = sys.argv[1:]
    for parser in PARSERS:
        instrument(importlib.import_module(parser))
    atheris.enabled_hooks.add("RegEx")
    atheris.enabled_hooks.add("str")
    atheris.Setup([sys.argv[0], *args], every_target if name == "all" else TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
