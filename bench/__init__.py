"""The benchmarks: each one runs as ``python -m bench.<name>`` from the repository root.

A benchmark module holds what it measures and prints; the machinery they share (the server
child, /proc readings, the WebRTC, WHIP/WHEP, chat and HLS clients, the worker processes, the
Janus driver, tables) is in :mod:`bench.lib`.
"""
