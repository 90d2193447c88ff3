"""Child processes that die with the process that started them, without Python code in the child.

A process killed outright (SIGKILL, the OOM killer, a crashed worker) runs no shutdown, so a
child it started (coturn, a benchmark's server) would keep its ports forever. Linux's
``PR_SET_PDEATHSIG`` makes the kernel send the child a signal instead; it must be set in the
child, between fork and exec.

It used to be set by a ``preexec_fn``, and that hung test runs: Python code in the forked child
can start a garbage collection, and a collected PyAV reformatter then joined its FFmpeg slice
threads, which only exist in the parent (``pthread_cond_destroy`` waited forever). The parent
waited for the exec with it, and the hung child held a copy of every descriptor of its parent,
pytest-xdist's pipes included. So the child runs no Python at all: ``setpriv`` (util-linux,
part of every Debian) sets the signal and execs a shell, which ends at once if the parent is
already gone (the race the signal cannot cover: the child was reparented before it asked) and
else execs the command. The pid stays the same through both execs.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)

# $1: the parent's pid; the rest: the command. A shell's $PPID is read when it starts, after
# setpriv asked for the signal, so a parent that died before that is seen here.
GUARD = 'if [ "$PPID" != "$1" ]; then exit 0; fi; shift; exec "$@"'


def dying_with_parent(command: Sequence[str], parent: int | None = None) -> list[str]:
    """``command`` wrapped so that it gets SIGTERM when ``parent`` (default: this process) dies.

    Where ``setpriv`` is missing (not Linux, a system without util-linux) the command runs as it
    is, and a warning says the child could outlive its parent."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        log.warning("setpriv not found: %s will not be stopped if this process is killed", command[0])
        return list(command)
    pid = os.getpid() if parent is None else parent
    return [setpriv, "--pdeathsig", "TERM", "--", "/bin/sh", "-c", GUARD, "sh", str(pid), *command]
