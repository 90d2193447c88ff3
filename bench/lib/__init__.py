"""What the benchmarks share, one job a module.

The benchmarks start real processes (``gbmedia serve``, Janus, their own worker processes)
and read the kernel's accounting of them, so most of this package talks to /proc, to child
processes and to servers over HTTP, WebSocket and WebRTC.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository: where ``gbmedia serve`` and the worker processes run (``python -m`` finds both there)."""
